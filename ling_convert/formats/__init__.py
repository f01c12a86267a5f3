"""Format registry: one module per format, each a node of the conversion graph.

A format module calls `register(Format(...))` at import time with:
  detect(path) -> bool        cheap, reads at most headers/config
  open(path) -> Source        lazy reader (name -> thunk); nothing read until asked
  write(src, out, opts)       optional writer; absent for read-only formats

    >>> from ling_convert import formats
    >>> formats.detect_format("Ling-lite/").name              # doctest: +SKIP
    'bin'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core import bounded
from ..core.errors import BadInputError, ConfigSchemaError
from ..core.source import Source
from ..core.plugins import load_modules


@dataclass(frozen=True)
class Format:
    name: str
    summary: str
    detect: Callable[[Path], bool]
    open: Callable[[Path], Source]
    write: Callable | None = None     # (src, out, options) -> Path
    priority: int = 50                # lower = tried first by detection (more specific formats)
    lossless_from: tuple[str, ...] = ()
    options: type | None = None       # frozen dataclass of the option keys the writer reads


_FORMATS: dict[str, Format] = {}
# Modules that register formats; imported lazily so a broken optional dependency names itself.
_MODULES = ("hf_bin", "safetensors", "fp8", "dcp", "mindie", "gguf", "hybrid_linear")


def register(fmt: Format) -> Format:
    _FORMATS[fmt.name] = fmt
    return fmt


def _load_all() -> None:
    load_modules(__name__, _MODULES)


def all_formats() -> dict[str, Format]:
    _load_all()
    return dict(sorted(_FORMATS.items(), key=lambda kv: (kv[1].priority, _module_rank(kv[1]))))


def _module_rank(fmt: Format) -> int:
    # Equal priorities keep _MODULES order whichever module was imported first.
    mod = fmt.open.__module__.removeprefix(__name__ + ".").partition(".")[0]
    return _MODULES.index(mod) if mod in _MODULES else len(_MODULES)


def get_format(name: str) -> Format:
    fmts = all_formats()
    if name not in fmts:
        raise BadInputError(f"unknown format {name!r}", fix=f"use one of: {', '.join(fmts)}")
    return fmts[name]


def detect_format(path: str | Path) -> Format:
    path = Path(path)
    if not path.exists():
        raise BadInputError("path does not exist", path=path, fix="check the spelling")
    for fmt in all_formats().values():
        if fmt.detect(path):
            return fmt
    raise BadInputError("no known checkpoint format found here", path=path,
                        fix=f"expected one of: {', '.join(all_formats())}; or pass --from FORMAT")


def open_source(path: str | Path, fmt: str | None = None) -> Source:
    """Open any supported checkpoint lazily: `open_source("dir/")`."""
    f = get_format(fmt) if fmt else detect_format(path)
    return f.open(Path(path))


# -- shared helpers for readers -------------------------------------------------

CONFIG = "config.json"


def read_config(root: Path, name: str = CONFIG) -> dict | None:
    p = root / name
    if not bounded.exists(p):
        return None
    try:
        cfg = bounded.load_json(p, name)
    except BadInputError as e:
        raise ConfigSchemaError(e.message, path=p, fix="repair or replace config.json") from None
    if not isinstance(cfg, dict):
        raise ConfigSchemaError("must hold a JSON object", path=p, fix="repair or replace config.json")
    return cfg


# Files a checkpoint dir holds that writers regenerate rather than copy.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".distcp", ".partial", ".tmp")
_REGENERATED = {CONFIG, "model.safetensors.index.json", "pytorch_model.bin.index.json",
                "ling-convert.json", ".metadata"}


def aux_files(root: Path) -> dict[str, Path]:
    """Every non-weight top-level file (tokenizer, generation config, remote code, README...)."""
    if not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.iterdir()):
        if (p.is_file() and not p.is_symlink() and p.name not in _REGENERATED
                and not p.name.startswith(".") and not p.name.endswith(_WEIGHT_SUFFIXES)):
            out[p.name] = p
    return out
