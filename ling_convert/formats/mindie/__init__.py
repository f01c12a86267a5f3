"""MindIE (Huawei Ascend) model dir: checkpoint.py (detect, read, write, validate), config.py (config
variant rewrites, file schemas), deploy.py (service config, rank table), transform.py (HF <-> MindIE views)."""

from __future__ import annotations

from .. import Format, register
from .deploy import MindieOptions
from .checkpoint import compat_notes, detect, layout, open_mindie, validate_mindie_dir, write

__all__ = ["compat_notes", "layout", "validate_mindie_dir"]

FORMAT = register(Format("mindie", "MindIE (Ascend) dir: HF safetensors + MindIE config variant, service "
                         "config, rank table", detect, open_mindie, write, priority=40,
                         options=MindieOptions))
