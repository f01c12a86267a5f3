"""Registers HF safetensors (bf16/fp16/fp32, unquantized) as a format node."""

from __future__ import annotations

from pathlib import Path

from . import Format, register
from . import safetensors as st


def _detect(path: Path) -> bool:
    # FP8 and MindIE dirs are safetensors too; they register with lower priority numbers.
    return st.detect(path)


def _open(path: Path):
    return st.open_source(path, "safetensors")


def _write(src, out, opts):
    from ..writer import write_hf_dir
    return write_hf_dir(src, out, opts)


FORMAT = register(Format("safetensors", "HF safetensors (bf16/fp16/fp32), single or sharded",
                         _detect, _open, _write, priority=60))
