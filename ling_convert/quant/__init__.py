"""Quantisation schemes: small registered classes around pure array functions (no I/O).

A scheme registers itself by subclassing with a name:

    class FP8Block(Scheme, scheme="fp8-block"): ...

    >>> from ling_convert.quant import get_scheme
    >>> get_scheme("fp8-block").scale_suffix
    '_scale_inv'
"""

from __future__ import annotations

import importlib
from typing import ClassVar

from ..core.errors import BadInputError

_SCHEMES: dict[str, type["Scheme"]] = {}
# Modules that define schemes; imported on first lookup (they import this module).
_MODULES = ("fp8_block",)


class Scheme:
    """Base of every scheme. Subclasses give `scheme=` and implement the class methods."""

    name: ClassVar[str] = ""
    scale_suffix: ClassVar[str] = ""   # appended to a weight's name to name its scale tensor

    def __init_subclass__(cls, scheme: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if scheme is None:
            return
        if scheme in _SCHEMES:
            raise ValueError(f"quant scheme {scheme!r} is registered twice")
        cls.name = scheme
        _SCHEMES[scheme] = cls

    @classmethod
    def scale_name(cls, weight: str) -> str:
        return weight + cls.scale_suffix

    @classmethod
    def weight_name(cls, scale: str) -> str | None:
        """The weight a scale belongs to, or None if `scale` is not a scale name."""
        return scale[: -len(cls.scale_suffix)] if cls.scale_suffix and scale.endswith(cls.scale_suffix) else None


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def all_schemes() -> dict[str, type[Scheme]]:
    _load_all()
    return dict(_SCHEMES)


def get_scheme(name: str) -> type[Scheme]:
    schemes = all_schemes()
    if name not in schemes:
        raise BadInputError(f"unknown quantisation scheme {name!r}", fix=f"use one of: {', '.join(sorted(schemes))}")
    return schemes[name]
