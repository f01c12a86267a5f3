"""Locate and load the data files in `schemas/` (key maps, config schemas, policies)."""

from __future__ import annotations

import errno
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType


def schemas_dir() -> Path:
    """The schema tables: `ling_convert/_schemas` inside an installed package (setup.py maps the
    repo's top-level `schemas/` there), else `schemas/` beside the package in a source checkout."""
    env = os.environ.get("LING_CONVERT_SCHEMAS")
    if env:
        return Path(env)
    pkg = Path(str(resources.files("ling_convert")))
    for cand in (pkg / "_schemas", pkg.parent / "schemas"):
        if (cand / "arch").is_dir():
            return cand
    raise FileNotFoundError(errno.ENOENT, "schema tables missing; reinstall ling-convert", str(pkg / "_schemas"))


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
