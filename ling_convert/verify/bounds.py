"""Per-element error bounds that follow from each storage format (derivations: README "Verify").

Each function takes the original values `x` (float32, [rows, cols]) and returns the largest error
|x - stored| that a correct encoder of that format can produce, element by element. `verify`
fails a tensor when any element's error exceeds its bound.

    >>> x = torch.tensor([[1.0, -0.5] * 16])
    >>> bool((q8_0_bound(x) > 0).all())
    True
"""

from __future__ import annotations

import torch

E4M3_MANTISSA = 3            # float8_e4m3fn: 3 stored mantissa bits, bias 7.
E4M3_MIN_NORMAL = 2.0 ** -6
# float32 work of the encoders (x / s, x * (1 / d), q * s) adds a few roundings of 2^-24 each.
F32_SLACK = 2.0 ** -20
GGUF_BLOCK = 32              # q8_0 and q4_0 both group 32 consecutive elements of a row. ref: gguf-py quants.py
Q8_MAX, Q4_NEG = 127.0, -8.0


def half_ulp(x: torch.Tensor, mantissa: int, min_normal: float) -> torch.Tensor:
    """Half a unit in the last place of |x| for a binary float with `mantissa` stored bits.

    Below the smallest normal the spacing is constant (subnormals): that of the lowest binade.

    >>> half_ulp(torch.tensor([1.0, 3.0]), 7, 2.0 ** -126).tolist()
    [0.00390625, 0.0078125]
    """
    _, exp = torch.frexp(x.abs().clamp_min(min_normal))    # |x| = m * 2^exp, m in [0.5, 1)
    return torch.ldexp(torch.ones_like(x), exp - 2 - mantissa)


def cast_bound(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round-to-nearest into `dtype`: half an ulp of that dtype (zero for float32 and wider)."""
    if torch.finfo(dtype).bits >= 32:
        return torch.zeros_like(x)
    fi = torch.finfo(dtype)
    return half_ulp(x, round(-torch.log2(torch.tensor(fi.eps)).item()), fi.tiny)


def e4m3_bound(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Block FP8: x / s rounded to e4m3, times s. `scale` is the per-element multiplier (scale_inv).

    |x - q s| <= s * half_ulp_e4m3(|x| / s); half an e4m3 ulp is 2^(e-4) in binade [2^e, 2^(e+1)),
    and 2^-10 (half the subnormal step 2^-9) below the smallest normal 2^-6.
    """
    y = x / scale
    return scale * half_ulp(y, E4M3_MANTISSA, E4M3_MIN_NORMAL) + F32_SLACK * x.abs() + scale * 2.0 ** -14


def fp8_derived_bound(x: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Block FP8 when neither side keeps the scales (a dequantised copy): the scale the quantiser picks
    from x's block amax (quant/fp8_block.py block_scale). Twice the e4m3 bound: a UE8M0 scale may be up
    to 2x that scale, and s h(x/s) at most doubles over s..2s. The bf16 rounding of the copy is far inside."""
    from ..quant.fp8_block import block_scale
    bm, bn = block
    r, c = x.shape
    padded = torch.nn.functional.pad(x.abs(), (0, -c % bn, 0, -r % bm))
    amax = padded.reshape(padded.shape[0] // bm, bm, -1, bn).amax(dim=(1, 3))     # [R/bm, C/bn]
    s = block_scale(amax).repeat_interleave(bm, 0)[:r].repeat_interleave(bn, 1)[:, :c]
    return 2.0 * e4m3_bound(x, s)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, GGUF_BLOCK)          # [R, C] -> [R, C/32, 32]


def _fp16_error(d: torch.Tensor) -> torch.Tensor:
    """|d - fp16(d)|: the block scale is stored as float16 after the codes were chosen with d itself."""
    return (d - d.half().float()).abs()


def q8_0_bound(x: torch.Tensor) -> torch.Tensor:
    """q8_0: d = amax / 127, q = round(x / d), stored d16 = fp16(d); |x - d16 q| <= d/2 + 127 |d - d16|."""
    b = _blocks(x)
    amax = b.abs().amax(dim=-1, keepdim=True)              # [R, C/32, 1]
    d = amax / Q8_MAX
    per_block = 0.5 * d + Q8_MAX * _fp16_error(d) + F32_SLACK * amax
    return per_block.expand_as(b).reshape(x.shape)


def q4_0_bound(x: torch.Tensor) -> torch.Tensor:
    """q4_0: d = (signed max-|x| element) / -8, code = clip(trunc(x/d + 8.5), 0, 15), value (code - 8) d16.

    Inside the code range the error is d/2; x/d in (7.5, 8] clips to code 15 (value 7d): error x/d - 7 <= d.
    Plus 8 |d - d16| for the float16 scale.
    """
    b = _blocks(x)
    idx = b.abs().argmax(dim=-1, keepdim=True)             # first maximum, as numpy's argmax
    d = b.gather(-1, idx) / Q4_NEG                          # [R, C/32, 1], signed
    y = torch.where(d == 0, torch.zeros_like(b), b / d)
    steps = torch.maximum(torch.full_like(y, 0.5), y - 7.0)
    amax = b.abs().amax(dim=-1, keepdim=True)
    bound = d.abs() * steps + 8.0 * _fp16_error(d) + F32_SLACK * amax
    return bound.reshape(x.shape)


GGUF_BOUNDS = {"Q8_0": q8_0_bound, "Q4_0": q4_0_bound}
