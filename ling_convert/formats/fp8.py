"""Block-FP8 safetensors (DeepSeek/Ling `weight_scale_inv` convention) as a format node.

A safetensors dir is FP8 when config.json has an fp8 `quantization_config` or any
tensor is named `*_scale_inv`. The reader exposes the raw e4m3 weights and float32
scales under their stored names; the `dequantize` edge (converters/fp8.py) turns
them into bf16 for every other route, `verify` included.

    >>> formats.detect_format("Ling-mini-2.0-FP8/").name        # doctest: +SKIP
    'fp8'
"""

from __future__ import annotations

from pathlib import Path

from ..core import bounded
from . import Format, read_config, register
from . import safetensors as st
from ..core.errors import LingConvertError
from ..quant.fp8_block import FP8Block

SCALE_SUFFIX = FP8Block.scale_suffix


def _tensor_names(path: Path) -> list[str]:
    """Names from the index when there is one, else from each file's header (cheap, no data)."""
    idx = path / st.INDEX
    if bounded.exists(idx):
        try:
            return list(st.read_index(idx))
        except LingConvertError:
            return []     # the safetensors reader reports a broken index, with its message
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    names: list[str] = []
    for f in files:
        try:
            names.extend(st.read_names(f))
        except LingConvertError:
            return names   # a broken file is the safetensors reader's to report, with its message
    return names


def detect(path: Path) -> bool:
    path = Path(path)
    if not st.detect(path):
        return False
    if path.is_dir():
        try:
            cfg = read_config(path) or {}
        except LingConvertError:
            cfg = {}
        if FP8Block.owns(cfg.get("quantization_config")):
            return True
    return any(n.endswith(SCALE_SUFFIX) for n in _tensor_names(path))


def _open(path: Path):
    return st.open_source(path, "fp8")


def _write(src, out, opts):
    from .writer import write_hf_dir
    return write_hf_dir(src, out, opts, target="fp8")


# Tried before plain safetensors (60): every FP8 dir is also a safetensors dir.
FORMAT = register(Format("fp8", "block-FP8 safetensors (e4m3 + weight_scale_inv, vLLM/SGLang `fp8`)",
                         detect, _open, _write, priority=55))
