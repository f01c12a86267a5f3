"""`ling-convert demo` (`api.run_demo`): every registered edge on every embedded tiny model, with parity.

The tiny models are built in a work dir (temp by default), each edge's input is
produced by the route planner from the tiny safetensors model, and each output
is checked against that input with `verify` (the reference forward pass).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from ..converters import all_edges, plan_route
from ..converters.config_ops import yarn
from ..converters.hybrid import HybridOptions
from ..core.errors import BadInputError, LingConvertError, RouteNotFoundError
from ..testing import TINY_MODELS, write_tiny
from ..verify.logits import verify
from ..verify.report import short
from . import convert


# How each tolerance metric is shown: (label, format of a value, comparison that passes).
_METRICS = {"max_abs": ("max", "{:.2g}", "≤"), "kl_last": ("kl", "{:.2g}", "≤"), "kl": ("kl", "{:.2g}", "≤"),
            "kl_mean": ("kl_mean", "{:.2g}", "≤"), "top1": ("top1", "{:.0%}", "≥"),
            "cosine": ("cos", "{:.3g}", "≥")}


def _parity(ref: Path, out: Path, lossless: bool) -> dict:
    """{"result": "PASS cos 0.971 top1 69%", "tolerance": "cos≥0.94 top1≥60%", "checks": "weights 72/72 | ...",
    "parity": status and checks in one string}: the result beside its tolerance."""
    rep = verify(ref, out)
    # A lossless edge must reproduce every weight and the logits bit for bit, whatever the class allows.
    status = "PASS" if rep.passed and (rep.exact or not lossless) else "FAIL"
    tol = {} if lossless else {k: v for k, v in rep.tolerance.items() if k in _METRICS and v}
    got = {"kl": rep.kl_last, **{k: getattr(rep, k) for k in tol if k != "kl"}}
    result = "bit-exact" if rep.exact else " ".join(
        f"{_METRICS[k][0]} {_METRICS[k][1].format(got[k])}" for k in tol or ("max_abs",))
    bound = " ".join(f"{_METRICS[k][0]}{_METRICS[k][2]}{_METRICS[k][1].format(v)}" for k, v in tol.items())
    return {"parity": f"{status}{' bit-exact' if rep.exact else ''} | {short(rep)}", "result": f"{status} {result}",
            "tolerance": bound or "bit-exact", "checks": short(rep)}


def _not_available(e: LingConvertError) -> dict:
    """Why an edge cannot run on this model, without the temporary path."""
    why = " ".join(f"n/a ({e.message}{f'; {e.fix}' if e.fix else ''})".split())
    return {"parity": why, "result": why, "tolerance": "", "checks": ""}


def _input_for(edge, base: dict[str, Path], model_dir: Path) -> Path:
    """A checkpoint in the edge's source format, made from the tiny safetensors model."""
    if edge.src in base:
        return base[edge.src]
    plan_route("safetensors", edge.src)  # raises RouteNotFoundError when unreachable
    dst = model_dir / f"input-{edge.src}"
    if not dst.exists():
        convert(base["safetensors"], dst, to=edge.src, options=edge.demo_options or {})
    base[edge.src] = dst
    return dst


def run_demo(workdir: str | Path | None = None, models: list[str] | None = None,
             on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Every edge and transform on every tiny model; `on_row(row)` as each finishes. Without a
    workdir the outputs go to a temporary directory that is removed before returning."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="ling-convert-demo-") as tmp:
            return run_demo(tmp, models, on_row)
    # The tiny models' widths are far below the FP8 block size, so the serving-engine TP
    # warnings would fire on every row; they are still recorded in each manifest.
    import warnings
    warnings.filterwarnings("ignore", message=".*per partition is not a multiple of the FP8 block")
    unknown = [m for m in models or () if m not in TINY_MODELS]
    if unknown:
        raise BadInputError(f"no tiny model {unknown[0]!r}", fix=f"use one of: {', '.join(TINY_MODELS)}")
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models or list(TINY_MODELS):
        mdir = root / model
        base = {"bin": write_tiny(mdir / "bin", model, fmt="bin", shards=2),
                "safetensors": write_tiny(mdir / "safetensors", model, fmt="safetensors", shards=2)}
        runs = [lambda e=e: _run_edge(model, e, base, mdir) for e in all_edges() if e.demo_options is not None]
        for run in runs + _transforms(model, base["safetensors"], mdir):
            rows.append(run())
            if on_row is not None:
                on_row(rows[-1])
    return rows


def _transforms(model: str, src: Path, mdir: Path) -> list[Callable[[], dict]]:
    """Checkpoint transforms that are not format edges, each with the parity it promises."""
    yarned = mdir / "yarn4"
    return [
        # Hybrid-linear with no linear layer must reproduce the source logits exactly.
        lambda: _timed(model, "to-hybrid-linear --layer-group-size 1", mdir / "hybrid-k1", src, True,
                       lambda out: convert(src, out, to="hybrid-linear", options=HybridOptions(layer_group_size=1), force=True)),
        # YaRN x4 and back: the round trip must restore the source logits exactly.
        lambda: _timed(model, "yarn --factor 4 --remove (round trip)", mdir / "yarn-back", src, True,
                       lambda out: (yarn(src, factor=4, out=yarned, force=True),
                                    yarn(yarned, remove=True, out=out, force=True))),
    ]


def _timed(model: str, name: str, out: Path, ref: Path, lossless: bool, run) -> dict:
    row = {"model": model, "edge": name, "seconds": 0.0, "bytes": 0}
    try:
        t0 = time.perf_counter()
        run(out)
        row["seconds"] = time.perf_counter() - t0
        row["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        row.update(_parity(ref, out, lossless))
    except LingConvertError as e:
        row.update(_not_available(e))
    return row


def _run_edge(model: str, edge, base: dict, mdir: Path) -> dict:
    row = {"model": model, "edge": f"{edge.name}: {edge.src}->{edge.dst}", "seconds": 0.0, "bytes": 0}
    try:
        src = _input_for(edge, base, mdir)
        out = mdir / f"out-{edge.name}"
        t0 = time.perf_counter()
        r = convert(src, out, to=edge.dst, from_format=edge.src, force=True, options=edge.demo_options)
        row["seconds"] = time.perf_counter() - t0
        row["bytes"] = sum(p.stat().st_size for p in Path(r.output).rglob("*") if p.is_file()) \
            if Path(r.output).is_dir() else Path(r.output).stat().st_size
        # Parity of the edge itself: its output against its input, through the reference.
        row.update(_parity(src, Path(r.output), edge.lossless))
    except (LingConvertError, RouteNotFoundError) as e:
        row.update(_not_available(e))
    return row
