"""Locate and load the data files in `schemas/` (key maps, config schemas, policies)."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType


def schemas_dir() -> Path:
    env = os.environ.get("LING_CONVERT_SCHEMAS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "schemas"


@lru_cache(maxsize=None)
def _load(rel: str):
    return json.loads((schemas_dir() / rel).read_text())


def load(rel: str):
    """Load `schemas/<rel>` once; returned mappings are read-only (tables are shared)."""
    return _freeze(_load(rel))


def _freeze(obj):
    if isinstance(obj, dict):
        return MappingProxyType({k: _freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return tuple(_freeze(v) for v in obj)
    return obj


def listing(sub: str) -> list[str]:
    return sorted(p.name for p in (schemas_dir() / sub).glob("*.json"))
