"""A GGUF file's tensor data made by worker processes (fill.py), each writing at its offset.

The tensor-info table fixes every tensor's offset before any data is written: tensor k
starts at the aligned end of tensor k-1, and expert e of a stacked tensor at e x the
size of one expert's GGUF bytes. A piece is one tensor, or one expert of a stacked
tensor: a worker reads it, encodes it a chunk of rows at a time (the same rows and the
same rounding as one process) and writes each chunk after the last. Padding between
tensors is left as a hole of the pre-sized file, which reads as the zeros one process
writes. This process hashes the file in order behind the workers and records --resume
checkpoints at tensor ends, as the one-process loop does.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ...core import fastio
from ...core.errors import VerificationError
from ...core.fill import FillPool, Piece, Region, copy_pieces
from ...core.source import Source
from .encode import encoded_rows, part_thunks


def pool(src: Source, plan: dict, workers: int):
    """Worker processes encoding the tensors (workers > 1), else a stand-in for one process."""
    return FillPool(maker(src, plan), workers) if workers > 1 else contextlib.nullcontext()


def maker(src: Source, plan: dict):
    """The worker side: encode one tensor (or one expert of it) and write it at its offset."""
    def make(piece: Piece, fd: int) -> None:
        _, name, part, nbytes = piece.how
        offset = start = piece.regions[0].offset
        for data, _ in encoded_rows(part_thunks(src, name)[part](), plan[name][0]):
            fastio.pwrite_all(fd, data, offset)
            offset += len(data)
        if offset - start != nbytes:
            raise VerificationError(f"wrote {offset - start} bytes, declared {nbytes}", tensor=name,
                                    fix="this is a bug in ling-convert; please report it")
    return make


def _tensor_pieces(src: Source, name: str, region: Region, nbytes: int) -> list[Piece]:
    """One piece per expert of a stacked tensor (the last carries the padding), else one."""
    n = len(part_thunks(src, name))
    each = nbytes // n
    return [Piece((Region(region.offset + e * each, region.nbytes - e * each if e == n - 1 else each),),
                  ("gguf", name, e, each)) for e in range(n)]


def pieces(src: Source, tensors: dict, data_start: int, align: int, old) -> tuple[list[Piece], dict[int, int]]:
    """The file's data as pieces, and {end offset of a tensor: source bytes it consumed}. Tensors
    the killed run wrote durably (`old`, --resume) are copied from its file at the same offset."""
    out, ends, off = [], {}, data_start
    for name, ti in tensors.items():
        region = Region(off, ti.nbytes + (-ti.nbytes) % align)
        start = old.reuse(ti.nbytes, align)
        out += copy_pieces(old.path, start, region) if start is not None else _tensor_pieces(src, name, region,
                                                                                               ti.nbytes)
        off += region.nbytes
        ends[off] = src.infos[name].nbytes
    return out, ends


def fill_file(fill: FillPool, f, path: Path, tensors: dict, src: Source, plan: dict, h, old, align: int,
              progress, checkpoint) -> None:
    """Fill the data part of one GGUF file (its header is in `f`, padded) with the workers.
    `checkpoint()` is called at every tensor end, the file position there, to record --resume state."""
    f.flush()
    data_start = f.tell()
    work, ends = pieces(src, tensors, data_start, align, old)
    total = max(ends, default=data_start)
    os.ftruncate(f.fileno(), total)       # the padding holes read as zeros
    rfd = os.open(path, os.O_RDONLY)      # GGUFWriter opened `f` write-only: hash through another descriptor
    buf = bytearray(min(fastio.BUF, max(1, total - data_start)))

    def done(r: Region) -> None:
        fastio.hash_range(h, rfd, r.offset, r.nbytes, buf)
        end = r.offset + r.nbytes
        f.seek(end)
        if end in ends:
            if progress:
                progress(ends[end])
            checkpoint()
    try:
        fill.fill(path, work, done)
    finally:
        os.close(rfd)
