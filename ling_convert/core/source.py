"""Lazy checkpoints: tensor name -> thunk, plus config and auxiliary files.

Every reader returns a `Source`; every converter edge maps a `Source` to a new
`Source` by wrapping thunks, so a multi-hop route reads each tensor once and
holds it only until the writer has put it on disk.

    >>> src = formats.open_source("Ling-lite/")              # doctest: +SKIP
    >>> w = src.load("model.norm.weight")                     # reads one tensor
"""

from __future__ import annotations

import math
import re
import dataclasses
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from .errors import BadInputError

Thunk = Callable[[], "torch.Tensor"]

# safetensors dtype codes -> (torch dtype name, bytes per element). ref: safetensors docs,
# "Format". Kept as strings so a header is read without touching torch (core/deferred.py).
ST_CODES: Mapping[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
    "U8": ("uint8", 1), "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}
_CODE_OF_NAME = {name: code for code, (name, _) in ST_CODES.items()}


def dtype_code(dtype) -> str:
    """The safetensors code of a torch dtype or of a code ("BF16"); a torch dtype safetensors has
    no code for keeps its torch name ("complex64"), which no writer accepts."""
    if isinstance(dtype, str):
        if dtype in ST_CODES:
            return dtype
        raise ValueError(f"not a safetensors dtype code: {dtype!r}")
    name = str(dtype).removeprefix("torch.")
    return _CODE_OF_NAME.get(name, name)


def torch_dtype(dtype) -> "torch.dtype":
    """The torch dtype of a safetensors code ("BF16"), or `dtype` itself if it is one already."""
    return getattr(torch, ST_CODES[dtype][0]) if isinstance(dtype, str) else dtype


def dtype_size(dtype) -> int:
    """Bytes per element of a torch dtype or a safetensors code."""
    if isinstance(dtype, str):
        return ST_CODES[dtype][1]
    return dtype.itemsize


class TensorInfo:
    """Shape and dtype of a tensor, known before its data is read.

    Built from a torch dtype or a safetensors code; kept as the code, so that header-only
    paths never import torch. `.dtype` gives the torch dtype (and imports torch)."""

    __slots__ = ("shape", "code", "numel", "nbytes", "_dtype")

    def __init__(self, shape: tuple[int, ...], dtype) -> None:
        # Computed once: planning sums them for every tensor several times (Ling-1T: 62,336 tensors).
        set_ = object.__setattr__
        set_(self, "shape", tuple(shape))
        set_(self, "code", dtype_code(dtype))
        set_(self, "_dtype", None if isinstance(dtype, str) else dtype)
        set_(self, "numel", math.prod(self.shape))
        set_(self, "nbytes", self.numel * dtype_size(dtype))

    def __setattr__(self, k, v):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {k!r}")

    @property
    def dtype(self) -> "torch.dtype":
        if self._dtype is None:
            object.__setattr__(self, "_dtype", torch_dtype(self.code))
        return self._dtype

    @property
    def dtype_name(self) -> str:
        """The torch name of the dtype ("bfloat16"), without importing torch."""
        return ST_CODES[self.code][0] if self.code in ST_CODES else self.code

    def __eq__(self, other) -> bool:
        if not isinstance(other, TensorInfo):
            return NotImplemented
        return self.shape == other.shape and self.code == other.code

    def __hash__(self) -> int:
        return hash((self.shape, self.code))

    def __repr__(self) -> str:
        return f"TensorInfo(shape={self.shape}, dtype={self.code})"

    def __reduce__(self):
        return (TensorInfo, (self.shape, self.code if self._dtype is None else self._dtype))

    @classmethod
    def of(cls, t: "torch.Tensor") -> "TensorInfo":
        return cls(tuple(t.shape), t.dtype)


def is_contiguous(shape, stride) -> bool:
    """Row-major with no gaps (size-1 dims may carry any stride, as torch allows)."""
    want = 1
    for d, s in zip(reversed(shape), reversed(stride)):
        if d != 1 and s != want:
            return False
        want *= d
    return True


@dataclass(frozen=True)
class RawRange:
    """Where a tensor's bytes lie in a file exactly as a safetensors writer would put them
    (contiguous, little-endian), so they can be copied without being read into Python."""

    file: Path
    offset: int
    info: TensorInfo
    release: Callable[[], None] | None = field(default=None, compare=False)  # called once copied

    def done(self) -> None:
        if self.release is not None:
            self.release()


@dataclass
class Source:
    """A lazy checkpoint. Nothing is read until `load()` or a thunk is called."""

    path: Path
    format: str
    config: dict | None
    infos: dict[str, TensorInfo]
    thunks: dict[str, Thunk]
    aux: dict[str, Path] = field(default_factory=dict)   # output name -> file to copy
    route: list[str] = field(default_factory=list)       # edges applied so far
    notes: dict = field(default_factory=dict)             # manifest extras (vocab trim, init seeds, ...)
    original_config: dict | None = None                   # config as read, for the manifest diff
    source_format: str = ""                               # format as read, before any edge
    # Typed facts later modules branch on (the manifest's `notes` are for people, not for code):
    storage_type: str | None = None                       # quantised storage as read, e.g. GGUF "q8_0"
    hf_config: dict | None = None                         # the HF config behind a MindIE view (to-mindie)
    config_origin: str | None = None                      # what gave `config` ("config.json", "common.pt args")
    config_error: str | None = None                       # why no config could be had (DCP args), if none
    config_from: str | None = None                        # --config-from: the HF dir `config` was taken from

    def __post_init__(self):
        if self.original_config is None and self.config is not None:
            self.original_config = dict(self.config)
        if not self.source_format:
            self.source_format = self.format

    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def get(self, name: str) -> Thunk:
        return self.thunks[name]

    def load(self, name: str) -> torch.Tensor:
        """Read one tensor and check it against its declared shape and dtype."""
        t = self.thunks[name]()
        want = self.infos[name]
        if tuple(t.shape) != want.shape or t.dtype != want.dtype:
            raise BadInputError(
                f"read {tuple(t.shape)} {t.dtype}, but the header declares {want.shape} {want.dtype}",
                path=self.path, tensor=name, fix="the file is inconsistent; re-export it")
        return t

    def has_raw(self, name: str) -> bool:
        """Cheap: may `raw_range(name)` give a range? (It may block, e.g. on a worker's result.)"""
        return hasattr(self.thunks[name], "raw_range")

    def location(self, name: str) -> tuple[str, int] | None:
        """(file, offset) of the tensor's stored bytes when its thunk reads them from a file; no I/O.
        Writers use it to read a shard's tensors in the order they lie on disk."""
        fn = getattr(self.thunks[name], "location", None)
        return fn() if fn is not None else None

    def group(self, name: str):
        """A key shared by the tensors one computation makes together (an FP8 weight and its scale), or
        None. A parallel writer gives such tensors to one worker, which computes them once."""
        return getattr(self.thunks[name], "group", None)

    def raw_range(self, name: str) -> RawRange | None:
        """The tensor's stored bytes, when its thunk reads them unchanged; else None.

        Readers' thunks opt in with a `raw_range()` method; an edge that transforms a
        tensor wraps the thunk, which drops the method, so only untouched bytes qualify."""
        fn = getattr(self.thunks[name], "raw_range", None)
        raw = fn() if fn is not None else None
        if raw is not None and raw.info != self.infos[name]:
            raw.done()
            return None
        return raw

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def inputs(self) -> list[Path]:
        """Every path this checkpoint is read from (its dir or file, aux files, --config-from): what a
        writer must never overwrite."""
        extra = [Path(self.config_from)] if self.config_from else []
        return [Path(self.path), *map(Path, self.aux.values()), *extra]

    def derive(self, **changes) -> "Source":
        """A new Source sharing everything not named (used by converter edges)."""
        changes.setdefault("route", list(self.route))
        changes.setdefault("notes", dict(self.notes))
        return replace(self, **changes)


_DIGITS = re.compile(r"(\d+)")


def pack_by_budget(items: Iterable, size_of: Callable, max_bytes: int) -> list[list]:
    """Greedy, order-keeping packing into groups of at most `max_bytes` (an item larger than the
    budget gets a group of its own): shards of a safetensors output, files of a DCP."""
    groups: list[list] = [[]]
    size = 0
    for it in items:
        n = size_of(it)
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(it)
        size += n
    return groups if groups[0] else []


@lru_cache(maxsize=1 << 18)     # a route sorts the same names several times
def natural_key(name: str) -> tuple:
    """Sort 'layers.10' after 'layers.9' so shards follow the model's layer order."""
    return tuple(int(p) if p.isdigit() else p for p in _DIGITS.split(name))


def ordered(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


def contained(base: Path, rel: str, *, what: str, origin: Path) -> Path:
    """Resolve `rel` under `base`, refusing absolute paths and escapes (`..`, symlinks)."""
    if "\0" in rel:
        raise BadInputError(f"{what} name {rel!r} holds a NUL byte", path=origin,
                            fix="only plain file names inside the checkpoint directory are allowed")
    p = Path(rel)
    if not rel or p.is_absolute() or rel.startswith(("/", "\\")) or ".." in p.parts or "\\" in rel:
        raise_unsafe(rel, what, origin)
    try:
        base_r, full = base.resolve(), (base / p).resolve()
    except (RuntimeError, OSError):      # Python 3.11 raises RuntimeError on a symlink loop
        raise BadInputError(f"{what} {rel!r} is a symlink loop", path=origin,
                            fix="point the link at a real file") from None
    if full != base_r and base_r not in full.parents:
        raise_unsafe(rel, what, origin)
    return base / p


def raise_unsafe(rel: str, what: str, origin: Path):
    from .errors import UnsafePathError
    raise UnsafePathError(f"{what} {rel!r} points outside its directory; refused",
                          path=origin, fix="only plain file names inside the checkpoint directory are allowed")


@dataclass
class PartedSource(Source):
    """A Source whose stacked tensors can also be read one axis-0 slice at a time.

    `parts[name][i]` returns `load(name)[i]`; the GGUF writer and `from-gguf` use it so that
    a layer's stacked experts never need to be in memory at once.
    """

    parts: dict[str, list[Thunk]] = field(default_factory=dict)


def as_parted(src: Source, parts: dict[str, list[Thunk]], **changes) -> PartedSource:
    """A PartedSource with `src`'s fields (and `changes`), so edges can hand slices on."""
    kw = {f.name: getattr(src, f.name) for f in dataclasses.fields(Source) if hasattr(src, f.name)}
    out = PartedSource(**{**kw, **changes}, parts=parts)
    for k, v in vars(src).items():  # attributes set outside the dataclass fields travel too
        if k not in kw and k != "parts":
            setattr(out, k, v)
    return out
