"""Edges safetensors <-> mindie. Tensors pass through untouched (lossless) except for the
opt-in `fold_norm_head` op; the configs change by the declared rewrites (formats/mindie/transform.py).

    >>> api.convert("Ling-lite/", "Ling-lite-mindie/", to="mindie", options={"variant": "lite"})  # doctest: +SKIP
"""

from __future__ import annotations

from ..core.source import Source
from ..formats.mindie import transform
from ..formats.mindie.deploy import MindieOptions
from ..formats.mindie.transform import fold_norm_head, unfold_norm_head  # noqa: F401  (re-exported)
from . import converter


@converter("safetensors", "mindie", lossless=True, name="to-mindie", demo_options={"variant": "lite"},
           options=MindieOptions)
def to_mindie(src: Source, opts: MindieOptions) -> Source:
    """HF safetensors -> MindIE dir (config variant, backup, service config, rank table)."""
    return transform.to_mindie(src, opts)


@converter("mindie", "safetensors", lossless=True, name="from-mindie", demo_options={"variant": "lite"},
           options=MindieOptions)
def from_mindie(src: Source, opts: MindieOptions) -> Source:
    """MindIE dir -> plain HF safetensors (HF config from config.json.bak, else rewrites inverted)."""
    return transform.from_mindie(src, opts)
