"""The hybrid-linear layout as a target node: HF safetensors written by the to-hybrid-linear edge.

Never detected (such a directory reads back as plain `safetensors`); it exists so that the planner
routes to it and the normal writer (dry run, --resume, manifest) writes it.
"""

from __future__ import annotations

from pathlib import Path

from . import Format, register
from .safetensors import open_source
from .writer import write_hf_dir


def _never(path: Path) -> bool:
    return False


def _open(path: Path):
    return open_source(path, "safetensors")


FORMAT = register(Format("hybrid-linear", "HF safetensors in the hybrid-linear layout (written by to-hybrid-linear)",
                         _never, _open, write_hf_dir, priority=90))
