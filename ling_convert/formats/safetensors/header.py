"""safetensors header: parsed and checked here (not by the safetensors library) so a malformed
file gets an error naming the file, the tensor and what is wrong.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core import bounded
from ...core.fastio import pread_flat
from ...core.errors import CorruptFileError
from ...core.source import ST_CODES, TensorInfo



INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_HEADER = 100 * 1024 * 1024  # ref: safetensors rejects headers over 100 MB as well
# Ling-1T holds 62,336 tensors in all of its 421 files; a file claiming more than this is hostile
# and is refused before its entries are built (1.6 M entries fit in a 100 MB header).
MAX_ENTRIES = 1 << 18


# -- header ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    info: TensorInfo
    begin: int      # absolute file offset of the first byte
    end: int


def _no_dup_pairs(path: Path):
    def hook(pairs):
        d = dict(pairs)
        if len(d) == len(pairs):     # the common case stays in C: one dict build per object
            return d
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise CorruptFileError("header lists the tensor twice", path=path, tensor=k,
                                       fix="re-export the file; names must be unique")
            seen.add(k)
        return d
    return hook


def read_header(path: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """Parse and validate a safetensors header: -> (entries, __metadata__)."""
    header, n, size = _parse(path)
    meta = header.pop("__metadata__", None) or {}
    if not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CorruptFileError("__metadata__ is not an object of strings", path=path, fix="re-export the file")
    entries = {name: _entry(path, name, spec, 8 + n, size) for name, spec in header.items()}
    _check_overlaps(path, entries)
    return entries, meta


def read_names(path: Path) -> list[str]:
    """The tensor names of a header, bounded like read_header but without checking each entry
    (format detection needs names only; the reader checks the entries when it opens the file)."""
    return [k for k in _parse(path)[0] if k != "__metadata__"]


def _parse(path: Path) -> tuple[dict, int, int]:
    """-> (header object, header length, file size), every bound checked before the JSON parse."""
    size = bounded.regular_file(path, "safetensors file").st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"file is {size} bytes, too short for a safetensors header",
                                   path=path, fix="the file is truncated; download or convert it again")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CorruptFileError(f"header length {n} runs past the end of the {size}-byte file",
                                   path=path, fix="the file is truncated or not safetensors; re-download it")
        raw = f.read(n)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError("header is not valid UTF-8", path=path, fix="re-export the file") from None
    # Counted in C before any Python object is built; an overcount only refuses a hostile file.
    claimed = raw.count(b'"data_offsets"')
    if claimed > MAX_ENTRIES:
        raise CorruptFileError(f"header declares {claimed} tensors, more than {MAX_ENTRIES} in one file "
                               "(Ling-1T has 62,336 in all its files)", path=path,
                               fix="the file is not a real checkpoint shard; re-export it")
    # Depth is bounded by the entry checks below (flat objects of strings and integer lists).
    header = bounded.parse_json(raw, path, pairs_hook=_no_dup_pairs(path), max_depth=None, digits=False)
    if not isinstance(header, dict):
        raise CorruptFileError("header is not a JSON object", path=path, fix="re-export the file")
    return header, n, size


def _ints(v, n: int | None = None) -> bool:
    """A list of non-negative int64 integers (JSON true is no integer), of length `n` if given."""
    return (isinstance(v, list) and (n is None or len(v) == n)
            and all(type(d) is int and 0 <= d < 1 << 63 for d in v))


def _entry(path: Path, name: str, spec, data_start: int, size: int) -> Entry:
    bad = lambda msg: CorruptFileError(msg, path=path, tensor=name, fix="re-export the file")  # noqa: E731
    if not isinstance(spec, dict):
        raise bad("header entry is not an object")
    dt = spec.get("dtype")
    if not (isinstance(dt, str) and dt in ST_CODES):
        raise bad(f"unknown dtype {bounded.short(dt)}; expected one of {sorted(ST_CODES)}")
    shape, offs = spec.get("shape"), spec.get("data_offsets")
    if not _ints(shape) or math.prod(shape) >= 1 << 63:
        raise bad(f"shape {bounded.short(shape)} is not a list of non-negative integers with an int64 size")
    if not (type(offs) is list and len(offs) == 2 and type(offs[0]) is int and type(offs[1]) is int
            and 0 <= offs[0] <= offs[1] < 1 << 63):
        raise bad(f"data_offsets {bounded.short(offs)} are not [begin, end] with begin <= end")
    info = TensorInfo(tuple(shape), dt)
    if offs[1] - offs[0] != info.nbytes:
        raise bad(f"{dt} {shape} needs {info.nbytes} bytes but data_offsets span {offs[1] - offs[0]}")
    if data_start + offs[1] > size:
        raise bad(f"data ends at byte {data_start + offs[1]}, past the end of the {size}-byte file "
                  "(file truncated?)")
    return Entry(info, data_start + offs[0], data_start + offs[1])


def _check_overlaps(path: Path, entries: dict[str, Entry]) -> None:
    spans = sorted((e.begin, e.end, k) for k, e in entries.items() if e.end > e.begin)
    for (b0, e0, k0), (b1, _, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CorruptFileError(f"data of {k0!r} and {k1!r} overlap", path=path, tensor=k1,
                                   fix="re-export the file")


def read_tensor(path: Path, entry: Entry) -> torch.Tensor:
    flat = pread_flat(path, entry.begin, entry.end - entry.begin, entry.info.dtype)
    return flat.reshape(entry.info.shape)
