"""A bounded walk over a GGUF header before gguf-py parses it.

gguf-py trusts the counts it reads: an array count of 2**60 or arrays nested 100,000 deep
make it loop, allocate or recurse without end, and it accepts tensors with more than four
dimensions or sharing one data offset. This walk checks every count against the bytes that
remain, nesting, dimensions, tensor types, and that tensor data ranges lie in the file without
overlapping. Linear in the header; token arrays are skipped by their lengths.
The file layout is ggml's GGUF specification (v3), as gguf-py reads it.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import gguf

from ...core import bounded
from ...core.errors import CorruptFileError, UnsupportedError

_FIX = "the file is damaged or hostile; re-download or re-export it"
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
STRING, ARRAY = 8, 9
MAX_NEST = 2          # an array of arrays at most: no Ling key nests deeper
MAX_DIMS = 4          # ref: GGML_MAX_DIMS
MAX_NAME = 1 << 16


class _Walk:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path, self.end = buf, 0, path, len(buf)

    def bad(self, msg: str) -> CorruptFileError:
        return CorruptFileError(f"{msg} (at byte {self.pos})", path=self.path, fix=_FIX)

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.pos + n > self.end:
            raise self.bad("header runs past the end of the file")
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out if len(out) > 1 else out[0]

    def skip(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise self.bad(f"{what} of {n} bytes runs past the end of the file")
        self.pos += n

    def string(self, what: str, limit: int | None = None) -> bytes:
        n = self.take("<Q")
        if limit is not None and n > limit:
            raise self.bad(f"{what} is {n} bytes long (at most {limit})")
        start = self.pos
        self.skip(n, what)
        return bytes(self.buf[start:self.pos])

    def value(self, vtype: int, depth: int = 0):
        if vtype in _SCALAR:
            start = self.pos
            self.skip(_SCALAR[vtype], "value")
            return bytes(self.buf[start:self.pos])
        if vtype == STRING:
            return self.string("string value")
        if vtype != ARRAY:
            raise self.bad(f"unknown value type {vtype}")
        if depth >= MAX_NEST:
            raise self.bad(f"arrays nested more than {MAX_NEST} deep")
        item, count = self.take("<IQ")
        least = _SCALAR.get(item, 8 if item == STRING else 12)
        if count > (self.end - self.pos) // least:
            raise self.bad(f"array of {count} items cannot fit in the {self.end - self.pos} bytes left")
        if item in _SCALAR:
            self.skip(count * _SCALAR[item], "array")
        else:
            for _ in range(count):
                self.value(item, depth + 1)
        return None


def check_header(path: Path) -> None:
    """Walk the header of GGUF `path`; raise a one-line error on the first thing gguf-py would trust wrongly."""
    size = bounded.regular_file(path, "GGUF file").st_size
    if size < 24:
        raise CorruptFileError(f"file is {size} bytes, too short for a GGUF header", path=path, fix=_FIX)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        w = _Walk(memoryview(m), path)
        try:
            _walk(w, size)
        finally:
            w.buf.release()


def _walk(w: _Walk, size: int) -> None:
    magic, version, n_tensors, n_kv = w.take("<4sIQQ")
    if magic != b"GGUF" or version not in (2, 3):
        raise w.bad(f"not a GGUF v2/v3 file (magic {magic!r}, version {version})")
    if n_kv > size // 13 or n_tensors > size // 24:
        raise w.bad(f"{n_kv} keys and {n_tensors} tensors cannot fit in a {size}-byte file")
    align = 32
    for _ in range(n_kv):
        key = w.string("key", MAX_NAME)
        vtype = w.take("<I")
        raw = w.value(vtype)
        if key == b"general.alignment" and vtype == 4:
            align = struct.unpack("<I", raw)[0] or 32
    spans = [_tensor(w) for _ in range(n_tensors)]
    start = -(-w.pos // align) * align
    _check_spans(w.path, spans, start, size)


def _tensor(w: _Walk) -> tuple[int, int, str]:
    name = w.string("tensor name", MAX_NAME).decode("utf-8", "replace")
    n_dims = w.take("<I")
    if n_dims > MAX_DIMS:
        raise UnsupportedError(f"tensor has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}", path=w.path,
                               tensor=name, fix=_FIX)
    shape = [w.take("<Q") for _ in range(n_dims)]
    qtype, offset = w.take("<IQ")
    try:
        block, nbytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        raise CorruptFileError(f"unknown tensor type {qtype}", path=w.path, tensor=name, fix=_FIX) from None
    numel = 1
    for d in shape:
        numel *= d
    if numel >= 1 << 63 or (shape and shape[0] % block):
        raise CorruptFileError(f"dimensions {shape} do not fit type {qtype}", path=w.path, tensor=name, fix=_FIX)
    return offset, numel // block * nbytes, name


def _check_spans(path: Path, spans: list[tuple[int, int, str]], start: int, size: int) -> None:
    """Tensor data must lie inside the file, and no two tensors may share bytes (aliased offsets)."""
    end_prev, prev = 0, None
    for off, n, name in sorted(spans):
        if start + off + n > size:
            raise CorruptFileError(f"data ends at byte {start + off + n}, past the end of the {size}-byte file",
                                   path=path, tensor=name, fix=_FIX)
        if n and off < end_prev:
            raise CorruptFileError(f"data overlaps that of {prev!r} (shared or aliased offset)", path=path,
                                   tensor=name, fix=_FIX)
        if n:
            end_prev, prev = max(end_prev, off + n), name

