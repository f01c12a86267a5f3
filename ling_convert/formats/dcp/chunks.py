"""Checks on DCP chunk geometry from `.metadata`, before any chunk is read.

A tensor's chunks must tile it exactly: a gap or an overlap whose element count still adds up
would leave rows of the output as whatever memory held (issue 17). Shapes are int64 sizes.
Every check is linear in the number of chunks (sorting aside) for the grids real saves make.
"""

from __future__ import annotations

import math
from pathlib import Path

from ...core import bounded
from ...core.errors import CorruptFileError

_RECREATE = "re-copy the checkpoint directory from where it was saved"
MAX_DIMS = 16
MAX_PAIRS = 1_000_000     # overlap tests allowed for a chunk layout that is not a grid


def seq(value, where: Path, fqn: str) -> list:
    """A list/tuple from the metadata (anything else is a damaged record)."""
    if not isinstance(value, (list, tuple)):
        raise CorruptFileError(f"chunk list is {bounded.short(value)}, not a list", path=where, tensor=fqn,
                               fix=_RECREATE)
    return list(value)


def dims(value, where: Path, fqn: str, what: str) -> tuple[int, ...]:
    """Non-negative int64 integers (torch.Size, tuple or list) whose product is an int64 too."""
    ok = isinstance(value, (list, tuple)) and len(value) <= MAX_DIMS and \
        all(type(d) is int and 0 <= d < 1 << 63 for d in value)
    if not ok or math.prod(value) >= 1 << 63:
        raise CorruptFileError(f"{what} {bounded.short(value)} are not non-negative int64 sizes", path=where,
                               tensor=fqn, fix=_RECREATE)
    return tuple(value)


def _partitions(intervals: list[tuple[int, int]], n: int) -> bool:
    pos = 0
    for o, s in intervals:
        if o != pos:
            return False
        pos += s
    return pos == n


def check_cover(shape: tuple[int, ...], chunks, where: Path, fqn: str) -> None:
    """Refuse chunks that miss or overlap part of the tensor."""
    held, need = sum(math.prod(c.sizes) for c in chunks), math.prod(shape)
    if held != need:
        raise CorruptFileError(f"chunks hold {held} elements, the tensor {shape} needs {need}", path=where, tensor=fqn,
                               fix=_RECREATE)
    # A grid (each axis cut into intervals, every chunk one cell): distinct cells and the right
    # element count mean an exact tiling. Real saves (TP, EP, FSDP) are grids.
    axes = [sorted({(c.offsets[d], c.sizes[d]) for c in chunks}) for d in range(len(shape))]
    if all(_partitions(a, n) for a, n in zip(axes, shape)):
        cells = {tuple(zip(c.offsets, c.sizes)) for c in chunks}
        if len(cells) != len(chunks):
            _overlap(where, fqn, *_same_cell(chunks))
        return
    _sweep(chunks, where, fqn)


def _same_cell(chunks):
    seen = {}
    for c in chunks:
        key = tuple(zip(c.offsets, c.sizes))
        if key in seen:
            return seen[key], c
        seen[key] = c
    raise AssertionError("no repeated cell")


def _sweep(chunks, where: Path, fqn: str) -> None:
    """Pairwise overlap test along the first axis, for layouts that are not grids (bounded work)."""
    order = sorted(chunks, key=lambda c: c.offsets[:1])
    active, pairs = [], 0
    for c in order:
        active = [a for a in active if a.offsets[0] + a.sizes[0] > c.offsets[0]]
        for a in active:
            pairs += 1
            if pairs > MAX_PAIRS:
                raise CorruptFileError(f"{len(chunks)} chunks in an irregular layout; too many to check for overlaps",
                                       path=where, tensor=fqn, fix=_RECREATE)
            if all(ao < co + cs and co < ao + as_ for ao, as_, co, cs in zip(a.offsets, a.sizes, c.offsets, c.sizes)):
                _overlap(where, fqn, a, c)
        if math.prod(c.sizes):
            active.append(c)


def _overlap(where: Path, fqn: str, a, b) -> None:
    raise CorruptFileError(f"chunks at {a.offsets} (size {a.sizes}) and {b.offsets} (size {b.sizes}) overlap, so "
                           "part of the tensor is stored twice and part not at all", path=where, tensor=fqn,
                           fix=_RECREATE)
