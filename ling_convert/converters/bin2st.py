"""Edge bin -> safetensors: same names, dtypes and bytes; only the container changes."""

from __future__ import annotations

from . import converter


@converter("bin", "safetensors", lossless=True, name="bin2st")
def bin2st(src, opts):
    """HF .bin -> HF safetensors, bit-exact."""
    return src.derive()
