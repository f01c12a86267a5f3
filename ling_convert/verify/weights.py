"""`verify` weights pass: every tensor of A against B under canonical HF names, one tensor at a time.

Each tensor gets a rule from the edge class and what each side stores: `exact` (value-exact, so
bf16 -> f32 passes), `cast:<dtype>` (round-to-nearest into the narrower float), `fp8` (e4m3 bound
of the stored block scale) or `gguf:<type>` (the block bound of the type llama.cpp's rules give the
tensor). Bounds: verify/bounds.py. Rows are compared in strips, so memory stays near one tensor.

    >>> rep = weights_pass(side_a, side_b, "gguf-q8_0")        # doctest: +SKIP
    >>> rep["passed"], rep["compared"]                          # doctest: +SKIP
    (True, 72)
"""

from __future__ import annotations

import ctypes
import math
import mmap
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..core import bounded
from ..core.errors import LingConvertError
from ..core.output import MANIFEST
from ..core.source import Source, ordered
from .bounds import GGUF_BOUNDS, cast_bound, e4m3_bound, fp8_derived_bound

STRIP_BYTES = 64 << 20       # float32 bytes of one compared row strip
WORST = 5                    # tensors listed by their closeness to the bound
# ref: Ling modeling_bailing_moe.py compute_logit (norm_head), as model/gguf_ops.py bakes it.
NORM_HEAD_EPS = 1e-7
V1_ARCHS = ("BailingMoeForCausalLM", "BailingMoeLinearForCausalLM")


@dataclass
class Side:
    """One checkpoint as the weights pass sees it: canonical tensors, plus raw FP8 codes and scales."""

    src: Source                                   # canonical HF names (readers and edges applied)
    raw: Source | None = None                     # the block-FP8 reader's own view (codes + scale_inv)
    block: tuple[int, int] = (128, 128)
    lossy: str | None = None                      # "fp8" or "gguf-<type>" when this side was quantised
    manifest: dict = field(default_factory=dict)

    def scale_of(self, name: str) -> str | None:
        s = name + "_scale_inv"
        return s if self.raw is not None and s in self.raw.infos else None


def read_manifest(path: Path) -> dict:
    """The ling-convert.json beside an output (empty when there is none or it does not parse)."""
    p = Path(path) / MANIFEST
    try:
        return bounded.load_json(p, MANIFEST, limit=bounded.MAX_INDEX) if p.is_file() else {}
    except (OSError, ValueError, LingConvertError):
        return {}


def lossy_origin(src: Source, manifest: dict) -> str | None:
    """'fp8' / 'gguf-<type>' when the checkpoint is quantised, or was converted from a quantised one."""
    fmt, notes = src.source_format, src.notes
    source = manifest.get("source")
    if fmt not in ("fp8", "gguf") and isinstance(source, dict):     # other tools' manifests: "source" a path
        fmt, notes = source.get("format"), manifest.get("notes")
        notes = notes if isinstance(notes, dict) else {}
    if fmt == "fp8":
        return "fp8"
    if fmt == "gguf":
        return f"gguf-{src.storage_type or notes.get('gguf_type') or 'f32'}"
    return None


def _gguf_names(side: Side) -> dict[str, str]:
    """Canonical name -> the GGUF tensor it is stored in (first one of a split q/k/v)."""
    from ..formats.gguf.meta import table_for_config
    from ..formats.gguf.table import group_names, rules
    table = table_for_config(side.src.config, side.src.path)
    groups = group_names(side.src.keys(), rules(table), "hf", table["gguf_arch"], side.src.path)
    return {n: g.fmt(g.rule.gguf[0]) for g in groups for n in g.slots.values()}


def _gguf_rule(name: str, shape: tuple, outtype: str, gguf_name: str | None) -> str:
    from ..formats.gguf.writer import plan_type
    try:
        qt = plan_type(gguf_name or name, shape, outtype)[0].name
    except KeyError:        # a llama.cpp type we do not write: judge with the loosest block bound
        qt = "Q4_0" if len(shape) == 2 and shape[-1] % 32 == 0 else "F16"
    return {"F32": "exact", "F16": "cast:float16", "BF16": "cast:bfloat16"}.get(qt, f"gguf:{qt}")


def rule_for(name: str, a: Side, b: Side, edge: str, gguf_map: dict) -> tuple[str, str | None]:
    """(rule, which side is quantised: 'a' / 'b' / None) for one tensor."""
    sa, sb = a.scale_of(name), b.scale_of(name)
    if sa and sb:
        return "exact", None
    if sa or sb:
        return "fp8", "a" if sa else "b"
    q = "a" if a.lossy == edge else "b" if b.lossy == edge else None
    if edge == "fp8" and q is not None and (a, b)[q == "b"].raw is None and len(a.src.info(name).shape) == 2:
        return "fp8-derived", q          # a dequantised copy: scales gone, derive them from the other side
    if edge.startswith("gguf-") and q is not None:
        side = a if q == "a" else b
        return _gguf_rule(name, side.src.info(name).shape, edge[5:], gguf_map.get(name)), q
    if edge == "exact":
        return "exact", None
    da, db = a.src.info(name).dtype, b.src.info(name).dtype
    narrow = min((da, db), key=lambda d: torch.finfo(d).bits if d.is_floating_point else 64)
    return f"cast:{str(narrow).replace('torch.', '')}", "a" if narrow == da else "b"


def _effective(side: Side, name: str) -> torch.Tensor:
    """The tensor as the model uses it: a v1 norm_head is applied to lm_head (GGUF bakes it in)."""
    t = side.src.load(name)
    cfg = side.src.config or {}
    if name == "lm_head.weight" and cfg.get("norm_head") and (cfg.get("architectures") or [""])[0] in V1_ARCHS:
        w = t.float()
        return w / (w.norm(dim=0, keepdim=True) + NORM_HEAD_EPS)
    return t


def _stored(side: Side, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(tensor, None), or for a block-FP8 weight (e4m3 codes, float32 scale_inv)."""
    scale = side.scale_of(name)
    if scale is None:
        return _effective(side, name), None
    return side.raw.load(name), side.raw.load(scale).float()


@lru_cache(maxsize=1)
def _memcmp():
    fn = ctypes.CDLL(None).memcmp       # NOTE: not ctypes.util.find_library (slow, see fastio.py)
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int
    return fn


def same_bytes(ta: torch.Tensor, tb: torch.Tensor) -> bool:
    """Bit-identical (same dtype, shape and bytes): libc memcmp runs near memory speed, about 10x
    torch.equal on bf16, so a lossless verify reads at close to `cat` speed."""
    if ta.dtype != tb.dtype or ta.shape != tb.shape:
        return False
    ta, tb = ta.contiguous(), tb.contiguous()
    n = ta.numel() * ta.element_size()
    return n == 0 or _memcmp()(ta.data_ptr(), tb.data_ptr(), n) == 0


def _mapped(raw) -> tuple[mmap.mmap, int]:
    """The tensor's stored bytes mapped from the page cache (no copy), and where they start in the map."""
    start = raw.offset - raw.offset % mmap.ALLOCATIONGRANULARITY
    with open(raw.file, "rb") as f:
        return mmap.mmap(f.fileno(), raw.offset - start + raw.info.nbytes, offset=start,
                         access=mmap.ACCESS_READ), raw.offset - start


def raw_equal(a: Source, b: Source, name: str) -> bool:
    """Both sides keep the tensor's bytes unchanged in a file, and they are identical: compared in place
    (mmap + memcmp), so a lossless pair is read once from the page cache and never copied."""
    ra = a.raw_range(name) if a.has_raw(name) else None
    rb = b.raw_range(name) if ra is not None and b.has_raw(name) else None
    try:
        if ra is None or rb is None or ra.info != rb.info or ra.info.nbytes == 0:
            return False
        (ma, oa), (mb, ob) = _mapped(ra), _mapped(rb)
        with ma, mb:
            n = ra.info.nbytes
            va = np.frombuffer(ma, dtype=np.uint8, count=n, offset=oa)
            vb = np.frombuffer(mb, dtype=np.uint8, count=n, offset=ob)
            same = _memcmp()(va.ctypes.data, vb.ctypes.data, n) == 0
            del va, vb                                   # the maps close only once no view is left
        return same
    finally:
        for r in (ra, rb):
            if r is not None:
                r.done()


def _strips(t: torch.Tensor, s: torch.Tensor | None, block: tuple[int, int], step: int):
    """Float32 row strips [rows, cols] of the stored values (FP8: codes times their block scale)."""
    t = t.reshape(1, -1) if t.dim() < 2 else t.reshape(-1, t.shape[-1])
    bm, bn = block
    for r in range(0, t.shape[0], step):
        rows = t[r:r + step]
        if s is None:
            yield rows.float(), None
            continue
        se = s[r // bm:(r + rows.shape[0] + bm - 1) // bm].repeat_interleave(bm, 0)[:rows.shape[0]]
        se = se.repeat_interleave(bn, 1)[:, :rows.shape[1]]
        yield rows.float() * se, se


def _bound(rule: str, x: torch.Tensor, scale: torch.Tensor | None, block: tuple[int, int]) -> torch.Tensor:
    if rule == "exact":
        return torch.zeros_like(x)
    if rule == "fp8":
        return e4m3_bound(x, scale)
    if rule == "fp8-derived":
        return fp8_derived_bound(x, block)
    if rule.startswith("cast:"):
        return cast_bound(x, getattr(torch, rule[5:]))
    return GGUF_BOUNDS[rule[5:]](x)


def judge_tensor(name: str, a: Side, b: Side, rule: str, q: str | None) -> dict:
    """Max error, its ratio to the bound, and how many elements exceed it, strip by strip."""
    cols = max(1, a.src.info(name).shape[-1] if a.src.info(name).shape else 1)
    bm = math.lcm(a.block[0], b.block[0])
    step = max(bm, (STRIP_BYTES // (4 * cols)) // bm * bm)
    block = (a if q == "a" else b).block
    worst, ratio, bad = 0.0, 0.0, 0
    same = {"tensor": name, "rule": rule, "max_err": 0.0, "bound_ratio": 0.0, "over_bound": 0}
    if name != "lm_head.weight" and not (a.scale_of(name) or b.scale_of(name)) and raw_equal(a.src, b.src, name):
        return same
    (ta, ka), (tb, kb) = _stored(a, name), _stored(b, name)
    if ka is None and kb is None and same_bytes(ta, tb):
        return same
    for (va, sa), (vb, sb) in zip(_strips(ta, ka, a.block, step), _strips(tb, kb, b.block, step)):
        if torch.equal(va, vb):                               # the common case, and all of lossless
            continue
        x, scale = (vb, sa) if q == "a" else (va, sb)       # x: the side that was not quantised
        err = (va - vb).abs()
        err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
        bnd = _bound(rule, x, scale, block)
        over = err > bnd
        bad += int(over.sum())
        worst = max(worst, float(err.max()) if err.numel() else 0.0)
        r = err / bnd.clamp_min(torch.finfo(torch.float32).tiny)
        ratio = max(ratio, float(r.max()) if r.numel() else 0.0)
    return {"tensor": name, "rule": rule, "max_err": worst, "bound_ratio": min(ratio, 1e30), "over_bound": bad}


def weights_pass(a: Side, b: Side, edge: str) -> dict:
    """Compare every tensor; report counts, missing and extra names, failures and the worst tensors."""
    na, nb = set(a.src.keys()), set(b.src.keys())
    missing, extra = ordered(na - nb), ordered(nb - na)
    gsides = [s for s in (a, b) if s.lossy and s.lossy.startswith("gguf-")]
    gguf_map = _gguf_names(gsides[0]) if gsides and edge.startswith("gguf-") else {}
    rows, mismatched = [], []
    for name in ordered(na & nb):
        if a.src.info(name).shape != b.src.info(name).shape:
            mismatched.append(name)
            continue
        rows.append(judge_tensor(name, a, b, *rule_for(name, a, b, edge, gguf_map)))
    failed = [r for r in rows if r["over_bound"]]
    rules: dict[str, int] = {}
    for r in rows:
        rules[r["rule"]] = rules.get(r["rule"], 0) + 1
    return {"passed": not (failed or missing or extra or mismatched), "compared": len(rows),
            "missing": missing, "extra": extra, "shape_mismatch": mismatched, "rules": rules,
            "failed": failed, "worst": sorted(rows, key=lambda r: -r["bound_ratio"])[:WORST]}
