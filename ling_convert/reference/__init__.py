"""Pure-PyTorch float32 reference forward for the Ling family, streamed one layer at a time.

    >>> from ling_convert.reference import run_reference
    >>> out = run_reference(config, lambda name: tensors[name], torch.tensor([1, 2, 3]))  # doctest: +SKIP
"""

from __future__ import annotations

from . import bailing_moe_linear  # noqa: F401  (registers the hybrid-linear architectures)
from .common import ReferenceOutput, WeightFn, normalize_rope_scaling
from .registry import ARCHITECTURES, forward_for, register_architecture, run_reference

__all__ = ["ARCHITECTURES", "ReferenceOutput", "WeightFn", "forward_for", "normalize_rope_scaling",
           "register_architecture", "run_reference"]
