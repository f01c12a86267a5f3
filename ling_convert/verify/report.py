"""Text for a `verify` report: one row per pass (CLI table) and one short cell (demo table).

    >>> pass_rows(rep)[0]                                   # doctest: +SKIP
    ('weights', 'PASS', '72 tensors (exact 72); worst ...')
"""

from __future__ import annotations


def _ok(sec: dict) -> str:
    return "PASS" if sec["passed"] else "FAIL"


def weights_detail(w: dict) -> str:
    rules = ", ".join(f"{k} {v}" for k, v in sorted(w["rules"].items()))
    worst = w["worst"][0] if w["worst"] else None
    text = f"{w['compared']} tensors ({rules})"
    if worst and worst["max_err"] > 0:
        text += f"; closest to its bound: {worst['tensor']} at {worst['bound_ratio']:.2f}x"
    if w["missing"] or w["extra"]:
        text += f"; {len(w['missing'])} missing, {len(w['extra'])} extra"
    return text


def experts_detail(e: dict) -> str:
    n = sum(row["compared"] for row in e["layers"])
    routed = sum(row["routed"] for row in e["layers"])
    total = sum(row["experts"] for row in e["layers"])
    worst = max((row["worst_rel"] for row in e["layers"]), default=0.0)
    return (f"{n} experts in {len(e['layers'])} MoE layers, all compared directly (prompt routes "
            f"{routed}/{total}); worst rel err {worst:.1e} (limit {e['tolerance_rel']:g})")


def logits_detail(lg: dict) -> str:
    if lg["exact"]:
        text = f"{lg['compared']} bit-exact"
    else:
        text = (f"{lg['compared']} max {lg['max_abs']:.1e} kl {lg['kl_last']:.1e} top1 {lg['top1']:.0%} "
                f"cos {lg['cosine']:.4f}")
    if lg.get("first_diverging_layer") is not None:
        text += f"; first diverging layer {lg['first_diverging_layer']}"
    return text


def pass_rows(rep) -> list[tuple[str, str, str]]:
    rows = []
    if rep.weights:
        rows.append(("weights", _ok(rep.weights), weights_detail(rep.weights)))
    if rep.experts:
        rows.append(("experts", _ok(rep.experts), experts_detail(rep.experts)))
        rows += [("", "", line) for line in rep.experts["coverage"]]
    if rep.logits:
        rows.append(("logits", _ok(rep.logits), logits_detail(rep.logits)))
        rows += [(f"{name}", "", f"max_abs {m['max_abs']:.3e}") for name, m in rep.mtp.items()]
    return rows


def short(rep) -> str:
    """'weights 72/72 | experts 8/8 | logits bit-exact' for one demo cell."""
    parts = []
    if rep.weights:
        w = rep.weights
        parts.append(f"weights {w['compared'] - len(w['failed'])}/{w['compared']}")
    if rep.experts:
        n = sum(row["compared"] for row in rep.experts["layers"])
        parts.append(f"experts {n - len(rep.experts['failed'])}/{n}")
    if rep.logits:
        lg = rep.logits
        parts.append("logits bit-exact" if lg["exact"] else f"logits kl {lg['kl_last']:.1e} top1 {lg['top1']:.0%}")
    return " | ".join(parts)
