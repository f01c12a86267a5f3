"""Block FP8 (e4m3) in the DeepSeek-V3 convention: pure array functions, no I/O.

An [M, N] weight is stored as float8_e4m3fn at its own shape, beside a float32
`weight_scale_inv` of shape [ceil(M/bm), ceil(N/bn)]. Despite the name the scale
is the multiplier: w ~= fp8 * scale_inv, with scale_inv = block amax / 448.
Edge blocks are smaller, never padded.

    >>> q, s = quantize(torch.randn(192, 200), 128)
    >>> q.dtype, tuple(s.shape)
    (torch.float8_e4m3fn, (2, 2))
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from ..core.errors import BadInputError
from . import Scheme

FP8 = "F8_E4M3"         # storage dtype, as a safetensors code: planning needs no torch
FP8_MAX = 448.0          # largest finite float8_e4m3fn.
AMAX_FLOOR = 1e-4        # all-zero blocks get a usable scale. ref: Ling-V2 per_block_cast_to_fp8
DEFAULT_BLOCK = (128, 128)
# float32 bytes of one row strip: the working copy stays near cache size, so the
# divide/clamp/cast passes re-read it from cache instead of from memory.
STRIP_BYTES = 2 << 20

Block = tuple[int, int]


def as_block(block: int | tuple[int, int] | list[int]) -> Block:
    """128 -> (128, 128); (128, 64) stays. Refuses non-positive sizes."""
    bm, bn = (block, block) if isinstance(block, int) else tuple(block)
    if int(bm) <= 0 or int(bn) <= 0:
        raise BadInputError(f"block size {block!r} must be positive", fix="use e.g. --block-size 128")
    return int(bm), int(bn)


def scale_shape(shape: tuple[int, ...], block: int | Block = DEFAULT_BLOCK) -> tuple[int, int]:
    """[M, N] -> [ceil(M/bm), ceil(N/bn)]."""
    bm, bn = as_block(block)
    return math.ceil(shape[0] / bm), math.ceil(shape[1] / bn)


def _grid(x: torch.Tensor, r0: int, bm: int, bn: int) -> Iterator[tuple[torch.Tensor, slice, slice]]:
    """Views of a row strip `x` (rows r0.. of the weight, r0 a multiple of bm) as [nr, hm, nc, hn] blocks.

    At most four rectangles (full blocks, ragged last block-row, ragged last block-column, corner);
    each is one view, so every op below is one vectorised call per rectangle, not per block."""
    rows, cols = x.shape
    row_cuts = [(0, rows - rows % bm, bm), (rows - rows % bm, rows, rows % bm)]
    col_cuts = [(0, cols - cols % bn, bn), (cols - cols % bn, cols, cols % bn)]
    for a, b, hm in row_cuts:
        for c, d, hn in col_cuts:
            if b <= a or d <= c:
                continue
            view = x[a:b, c:d].unflatten(0, ((b - a) // hm, hm)).unflatten(2, ((d - c) // hn, hn))
            bi = slice((r0 + a) // bm, (r0 + a) // bm + view.shape[0])
            bj = slice(c // bn, c // bn + view.shape[2])
            yield view, bi, bj


def _strip_rows(cols: int, bm: int) -> int:
    return bm * max(1, STRIP_BYTES // max(1, 4 * cols * bm))


def pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """Round positive scales up to powers of two (UE8M0), exactly (frexp, not float32 log2)."""
    mant, exp = torch.frexp(s)                       # s = mant * 2**exp, mant in [0.5, 1)
    return torch.where(mant == 0.5, s, torch.ldexp(torch.ones_like(s), exp))


def block_scale(amax: torch.Tensor, pow2: bool = False) -> torch.Tensor:
    """scale_inv from block amax: amax / 448 (floored), optionally rounded up to 2^k."""
    s = amax.clamp(min=AMAX_FLOOR) / FP8_MAX
    return pow2_ceil(s) if pow2 else s


def _check_finite(amax: torch.Tensor, bi: slice, bj: slice, name: str | None) -> None:
    if bool(torch.isfinite(amax).all()):
        return
    i, j = (int(v) for v in (~torch.isfinite(amax)).nonzero()[0])
    raise BadInputError(f"holds NaN or Inf values (block row {bi.start + i}, column {bj.start + j}); "
                        "FP8 cannot represent them", tensor=name,
                        fix="fix or retrain the source weights; refusing to write a broken checkpoint")


def quantize(w: torch.Tensor, block: int | Block = DEFAULT_BLOCK, *, pow2: bool = False,
             name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w [M, N] (any float dtype) -> (float8_e4m3fn [M, N], float32 scale_inv [ceil(M/bm), ceil(N/bn)]).

    Per block: scale = max(amax, 1e-4) / 448 (UE8M0: rounded up to 2^k); q = cast(clamp(w / scale, +-448)).

    >>> q, s = quantize(torch.full((2, 3), 4.48), 128); float(s[0, 0]), float(q[0, 0].float())
    (0.009999999776482582, 448.0)
    """
    if w.ndim != 2 or not w.is_floating_point():
        raise BadInputError(f"block FP8 needs a 2-D float weight, got {tuple(w.shape)} {w.dtype}", tensor=name,
                            fix="keep this tensor in high precision (precision policy in schemas/precision/)")
    bm, bn = as_block(block)
    rows, cols = w.shape
    q = torch.empty((rows, cols), dtype=torch.float8_e4m3fn)
    s = torch.empty(scale_shape((rows, cols), (bm, bn)), dtype=torch.float32)
    step = _strip_rows(cols, bm)
    buf = torch.empty((min(step, rows), cols), dtype=torch.float32)
    for r0 in range(0, rows, step):          # row strips for cache locality; each strip is vectorised
        f = buf[: min(step, rows - r0)]
        f.copy_(w[r0:r0 + f.shape[0]])
        for view, bi, bj in _grid(f, r0, bm, bn):
            # max(amax, -amin): two read-only reductions instead of writing an |x| temporary; each
            # reduces along the contiguous row first (vectorised), then across the block's rows.
            amax = torch.maximum(view.amax(dim=3).amax(dim=1), view.amin(dim=3).amin(dim=1).neg_())
            _check_finite(amax, bi, bj, name)
            s[bi, bj] = block_scale(amax, pow2)
            view.div_(s[bi, bj][:, None, :, None])
        # NOTE: clamp before the cast; older torch and ml_dtypes turn overflow into NaN.
        f.clamp_(-FP8_MAX, FP8_MAX)
        q[r0:r0 + f.shape[0]].copy_(f)
    return q, s


def check_scale(q_shape: tuple[int, ...], s_shape: tuple[int, ...], block: int | Block,
                name: str | None = None) -> None:
    """Refuse a scale whose shape does not tile the weight with `block` (`name`: the scale tensor)."""
    want = scale_shape(q_shape, block)
    if len(q_shape) != 2 or tuple(s_shape) != want:
        raise BadInputError(f"scale has shape {list(s_shape)}, expected {list(want)} for weight "
                                f"{list(q_shape)} with block {list(as_block(block))}", tensor=name,
                                fix="check weight_block_size in config.json, or re-quantise the weight")


def dequantize(q: torch.Tensor, scale_inv: torch.Tensor, block: int | Block = DEFAULT_BLOCK, *,
               dtype: torch.dtype | None = None, name: str | None = None) -> torch.Tensor:
    """Exact inverse layout of `quantize`: w = cast_dtype(float32(q) * scale_inv), block by block.

    >>> w = dequantize(*quantize(torch.ones(3, 5), 128), 128, dtype=torch.float32); float(w.max())
    1.0
    """
    bm, bn = as_block(block)
    check_scale(tuple(q.shape), tuple(scale_inv.shape), (bm, bn), name)
    rows, cols = q.shape
    s = scale_inv.float()
    if not bool(torch.isfinite(s).all()):   # a damaged scale would silently give Inf/NaN weights
        raise BadInputError("scale holds NaN or Inf values", tensor=name,
                            fix="the scale tensor is damaged; re-download or re-quantise the checkpoint")
    out = torch.empty((rows, cols), dtype=torch.bfloat16 if dtype is None else dtype)   # None: bf16
    step = _strip_rows(cols, bm)
    buf = torch.empty((min(step, rows), cols), dtype=torch.float32)
    for r0 in range(0, rows, step):
        f = buf[: min(step, rows - r0)]
        f.copy_(q[r0:r0 + f.shape[0]])
        for view, bi, bj in _grid(f, r0, bm, bn):
            view.mul_(s[bi, bj][:, None, :, None])
        out[r0:r0 + f.shape[0]].copy_(f)
    return out


class FP8Block(Scheme, scheme="fp8-block"):
    """DeepSeek/Ling block FP8: `<weight>_scale_inv` per weight, `quant_method: fp8` in config.json."""

    scale_suffix = "_scale_inv"
    storage_dtype = FP8
    default_block = DEFAULT_BLOCK
    quantize = staticmethod(quantize)
    dequantize = staticmethod(dequantize)
    scale_shape = staticmethod(scale_shape)
    check_scale = staticmethod(check_scale)

    @staticmethod
    def config(block: Block, ignored: list[str], scale_fmt: str | None = None) -> dict:
        """`quantization_config` for config.json; bf16 modules go under both keys vLLM/SGLang read."""
        qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
              "weight_block_size": list(block)}
        if scale_fmt == "ue8m0":
            qc["scale_fmt"] = "ue8m0"          # SGLang reads it; only written when every scale is 2^k
        return {**qc, "ignored_layers": list(ignored), "modules_to_not_convert": list(ignored)}

    @staticmethod
    def owns(qc: dict | None) -> bool:
        """True for a quantization_config this scheme wrote or can read."""
        return isinstance(qc, dict) and "fp8" in str(qc.get("quant_method", "")).lower() \
            and qc.get("quant_method") != "compressed-tensors"

    @staticmethod
    def block_of(qc: dict | None) -> Block:
        wbs = (qc or {}).get("weight_block_size") or DEFAULT_BLOCK
        if not (isinstance(wbs, (list, tuple)) and len(wbs) == 2 and all(isinstance(v, int) for v in wbs)):
            raise BadInputError(f"weight_block_size {wbs!r} is not [rows, cols]",
                                fix='set "weight_block_size": [128, 128] in config.json')
        return as_block(tuple(wbs))
