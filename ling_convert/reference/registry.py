"""Dispatch from config.json's architectures[0] to a reference forward; one file per architecture registers here."""

from __future__ import annotations

from typing import Callable

import torch

from . import bailing_moe, bailing_moe_v2
from .common import ReferenceOutput, WeightFn

ForwardFn = Callable[..., ReferenceOutput]

# Dispatch on config["architectures"][0]: v2 configs also say model_type "bailing_moe".
# Other modules (e.g. a hybrid-linear forward) register here with register_architecture().
ARCHITECTURES: dict[str, ForwardFn] = {
    "BailingMoeForCausalLM": bailing_moe.forward,  # v1: Ling-lite, Ling-plus, Ling-Coder-lite
    "BailingMoeV2ForCausalLM": bailing_moe_v2.forward,  # v2: Ling-mini/flash-2.0, Ling-1T, Ring-2.0
}

# Same family name, different attention (MLA / KDA); refuse instead of running v2 math on them.
_REFUSED = {
    "BailingMoeV2_5ForCausalLM": "MLA + linear attention (Ling-2.5)",
    "BailingMoeV3ForCausalLM": "a different architecture",
}


def register_architecture(name: str, fn: ForwardFn) -> None:
    """Add a forward for one ``architectures[0]`` string; refuses to replace an existing one."""
    if name in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} already has a reference forward")
    ARCHITECTURES[name] = fn


def run_reference(config: dict, weight: WeightFn, tokens: torch.Tensor, *, layers: int | None = None,
                  mtp: bool = False) -> ReferenceOutput:
    """Float32 forward of a Ling checkpoint; ``weight(name)`` is called per layer, in layer order.

    ``layers=N`` runs only the first N layers (``logits`` is None); ``mtp=True`` adds MTP logits.

    >>> out = run_reference(config, weight, torch.tensor([[5, 6, 7]]), layers=1)  # doctest: +SKIP
    """
    fn = forward_for(config)
    with torch.no_grad():
        return fn(config, weight, tokens, layers=layers, mtp=mtp)


def forward_for(config: dict) -> ForwardFn:
    """The registered forward for ``architectures[0]``; a ValueError names an unknown or refused one."""
    archs = config.get("architectures") or []
    if not archs:
        raise ValueError("config.json has no 'architectures' entry; cannot pick a reference forward")
    name = archs[0]
    if name in _REFUSED:
        raise ValueError(f"architecture {name!r} is {_REFUSED[name]}; no reference forward for it")
    fn = ARCHITECTURES.get(name)
    if fn is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {name!r} in config.json (known: {known})")
    return fn
