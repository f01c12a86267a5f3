"""Import the modules that register themselves (formats, edges, schemes, CLI commands) by name."""

from __future__ import annotations

import importlib


def load_modules(package: str, names: tuple[str, ...]) -> None:
    """Import `package.name` for each name; a missing optional dependency inside one names itself."""
    for mod in names:
        try:
            importlib.import_module(f"{package}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{mod}":
                raise
