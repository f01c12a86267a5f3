"""Streaming safetensors writer: shard plan, header, tensor by tensor into staged shards, index."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import torch

from ...core import fastio
from ...core.fill import FillPool, Piece, Region, copy_pieces
from ...core.errors import UnsupportedError
from ...core.source import ST_CODES, RawRange, Source, TensorInfo, ordered, pack_by_budget

from .header import INDEX

# -- writer ------------------------------------------------------------------

def plan_shards(infos: dict[str, TensorInfo], max_bytes: int) -> list[list[str]]:
    """Greedy byte-budget sharding in layer order (a tensor larger than the budget gets its own shard)."""
    return pack_by_budget(ordered(infos), lambda name: infos[name].nbytes, max_bytes)


def shard_names(n: int, stem: str = "model", ext: str = "safetensors") -> list[str]:
    if n == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)]


def header_bytes(infos: dict[str, TensorInfo], names: list[str], metadata: dict | None = None) -> bytes:
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    off = 0
    for name in names:
        i = infos[name]
        if i.code not in ST_CODES:
            raise UnsupportedError(f"{i.dtype_name} tensor has no safetensors form", tensor=name,
                                   fix="cast it to a float, int8/16/32/64, uint8 or bool dtype first")
        header[name] = {"dtype": i.code, "shape": list(i.shape), "data_offsets": [off, off + i.nbytes]}
        off += i.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a tensor without a copy when it is already contiguous."""
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def write_shard(path: Path, names: list[str], src: Source, on_bytes: Callable[[int], None] | None = None,
                fill: FillPool | None = None) -> str:
    """Write one shard, fsync it and put it in place; returns its sha256."""
    return write_shard_unsynced(path, names, src, on_bytes, fill)()


def write_shard_unsynced(path: Path, names: list[str], src: Source, on_bytes: Callable[[int], None] | None = None,
                         fill: FillPool | None = None) -> Callable[[], str]:
    """Write one shard tensor by tensor (hashed while writing); -> `seal()`, which fsyncs
    it, renames it into place and returns its sha256. Sealing in the background while
    the next shard is written keeps the disk busy the whole run instead of idling the
    reader at every shard end.

    A tensor whose bytes already lie in a file (`src.raw_range`: an untouched input
    tensor, a worker's spilled result) is copied by the kernel; any other is read
    (the next one while this one is written) and written. Either way a background
    thread hashes it from the page cache (_ShardOut). At most two tensors are held
    at once. Writeback starts every 64 MiB, so the final fsync has little left to
    wait for. With `fill`, worker processes make and write the tensors at their
    offsets (core/fill.py); this process only hashes and flushes behind them."""
    names = disk_order(src, names)
    out = _ShardOut(path.with_name(path.name + ".tmp"))
    with ThreadPoolExecutor(1) as pool, out.writing():
        header = header_bytes(src.infos, names)
        out.put(header)
        if fill is not None:
            fill.fill(out.tmp, shard_pieces(src, names, len(header)), lambda r: out.filled(r.nbytes, on_bytes))
            return lambda: out.seal(path)
        nxt = _prefetch(pool, src, names, 0)
        for i, name in enumerate(names):
            rr = src.raw_range(name) if src.has_raw(name) else None
            if rr is not None:
                out.copy(rr)
                rr.done()
            else:
                if nxt is not None and nxt.name == name:
                    data = tensor_bytes(nxt.result())
                    nxt = _prefetch(pool, src, names, i + 1)
                else:   # offered a raw range, then declined it (e.g. a transposed view): read it now
                    data = tensor_bytes(src.load(name))
                out.put(data)
                del data
            if on_bytes:
                on_bytes(src.infos[name].nbytes)
    return lambda: out.seal(path)


def shard_pieces(src: Source, names: list[str], start: int) -> list[Piece]:
    """The shard's data cut into pieces for worker processes: unchanged file-backed tensors as
    copy ranges, the others one piece per tensor, or per group a single computation makes."""
    pieces, groups, off = [], {}, start
    for name in names:
        region, off = Region(off, src.infos[name].nbytes), off + src.infos[name].nbytes
        rr = src.raw_range(name) if src.location(name) is not None else None
        if rr is not None:
            rr.done()
            pieces += copy_pieces(rr.file, rr.offset, region)
            continue
        key = src.group(name)
        if key is None or key not in groups:
            pieces.append(([], ["load"]))
            if key is not None:
                groups[key] = pieces[-1]
        regions, how = groups[key] if key is not None else pieces[-1]
        regions.append(region)
        how.append(name)
    return [p if isinstance(p, Piece) else Piece(tuple(p[0]), tuple(p[1])) for p in pieces]


def tensor_maker(src: Source) -> Callable[[Piece, int], None]:
    """The worker side of `shard_pieces`: read/compute each named tensor, write it at its offset."""
    def make(piece: Piece, fd: int) -> None:
        for name, region in zip(piece.how[1:], piece.regions):
            fastio.pwrite_all(fd, tensor_bytes(src.load(name)), region.offset)
    return make


def disk_order(src: Source, names: list[str]) -> list[str]:
    """One shard's tensors with those read from files put in the order their bytes lie there
    (file, then offset); the others keep their places. Layer order need not be file order (names
    sort `attention.dense` before `attention.query_key_value`; a checkpoint sharded by tensor kind
    puts layer 0's experts in three files): read in that order, copies seek back and forth and
    the kernel's sequential readahead keeps restarting."""
    locs = [src.location(n) for n in names]
    located = iter(sorted((loc, i) for i, loc in enumerate(locs) if loc is not None))
    return [names[next(located)[1]] if loc is not None else n for n, loc in zip(names, locs)]


def _prefetch(pool, src: Source, names: list[str], start: int):
    """Start reading the next tensor that has to go through Python (raw ones are copied)."""
    for name in names[start:]:
        if not src.has_raw(name):
            fut = pool.submit(src.load, name)
            fut.name = name
            return fut
    return None


class _ShardOut:
    """The file being written, its sha256 and writeback.

    The hash is fed in file order by one background thread that reads back what was
    just written (page cache), so the writer never waits for it: copies and hashing
    overlap across tensors, not just one tensor deep. Nothing is held for the hash
    but the file itself; the hasher may lag at most HASH_LAG bytes behind."""

    HASH_LAG = 1 << 30
    SMALL = 1 << 20     # below this, hash a copy of the bytes rather than reading them back

    def __init__(self, tmp: Path):
        self.tmp, self.h, self.pos, self.flushed = tmp, hashlib.sha256(), 0, 0
        self._queued: deque = deque()     # (future, end offset) of hash jobs not yet checked
        self._buf = bytearray(fastio.BUF)

    @contextlib.contextmanager
    def writing(self):
        """Open for writing; on success the file stays open for `seal` (an fsync on a later
        descriptor could miss a writeback error recorded before it was opened)."""
        self.f = open(self.tmp, "w+b", buffering=0)  # read back to hash what was written
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="ling-hash")   # one thread: file order
        try:
            yield self
            self._wait(self.pos)
        except BaseException:
            self._hasher.shutdown(wait=True, cancel_futures=True)   # before the descriptor goes
            self.f.close()
            raise
        finally:
            fastio.release_sources()
        self._hasher.shutdown(wait=True)

    def _wait(self, upto: int) -> None:
        """Block until the bytes before `upto` are hashed; re-raises a failed hash job."""
        while self._queued and (self._queued[0][1] <= upto or self._queued[0][0].done()):
            self._queued.popleft()[0].result()

    def _hash_next(self, start: int, n: int, small: bytes | None = None) -> None:
        if small is not None:
            fut = self._hasher.submit(self.h.update, small)
        else:
            fut = self._hasher.submit(fastio.hash_range, self.h, self.f.fileno(), start, n, self._buf)
        self._queued.append((fut, start + n))
        self._wait(start + n - self.HASH_LAG)

    def put(self, data) -> None:
        start, n = self.pos, len(memoryview(data).cast("B"))
        # Small buffers (headers, scales) are hashed from a copy; large ones read back later,
        # so the caller may free `data` as soon as this returns.
        small = bytes(memoryview(data).cast("B")) if n < self.SMALL else None
        fastio.write_all(self.f.fileno(), data)
        self._advance(n)
        self._hash_next(start, n, small)

    def copy(self, rr: RawRange) -> None:
        start, n = self.pos, rr.info.nbytes
        fastio.copy_range(rr.file, rr.offset, n, self.f.fileno())
        self._advance(n)
        self._hash_next(start, n)

    def filled(self, n: int, on_bytes: Callable[[int], None] | None = None) -> None:
        """The next `n` bytes are in the file already (another process wrote them): hash and flush them."""
        start = self.pos
        os.lseek(self.f.fileno(), n, os.SEEK_CUR)
        self._advance(n)
        self._hash_next(start, n)
        if on_bytes:
            on_bytes(n)

    def _advance(self, n: int) -> None:
        self.pos += n
        if self.pos - self.flushed >= fastio.WRITEBACK_EVERY:
            fastio.start_writeback(self.f.fileno(), self.flushed, self.pos - self.flushed)
            self.flushed = self.pos

    def seal(self, path: Path) -> str:
        try:
            os.fsync(self.f.fileno())
        finally:
            self.f.close()
        os.replace(self.tmp, path)
        return self.h.hexdigest()


def write_index(staged, files: dict[str, list[str]], infos: dict[str, TensorInfo], name: str = INDEX) -> None:
    weight_map = {t: f for f, ts in files.items() for t in ts}
    staged.write_json(name, {"metadata": {"total_size": sum(infos[t].nbytes for t in weight_map)},
                             "weight_map": dict(sorted(weight_map.items()))})


def write_tensors(staged, src: Source, max_shard_size: int, progress=None, workers: int = 1) -> dict:
    """Write `src`'s tensors as safetensors shards into a StagedOutput. -> {file: [tensor names]}.

    With `workers` > 1 every shard is filled by that many processes (bytes do not change).
    The caller writes the index (`write_index`) after everything else."""
    plan = plan_shards(src.infos, max_shard_size)
    names = shard_names(len(plan))
    todo = [t for f, t in zip(names, plan) if not staged.reusable(f)]
    # forked before the sealer's thread exists
    pool = FillPool(tensor_maker(src), workers) if workers > 1 and todo else contextlib.nullcontext()
    with pool as fill, ThreadPoolExecutor(1) as sealer:
        sealing = None      # (name, future sha) of the shard being fsynced while the next is written
        for fname, tensors in zip(names, plan):
            if staged.reusable(fname):
                if progress:
                    progress(sum(src.infos[t].nbytes for t in tensors))
                continue
            seal = write_shard_unsynced(staged.path(fname), tensors, src, progress, fill)
            if sealing:
                staged.done(sealing[0], sealing[1].result())   # recorded only once on disk, in order
            sealing = (fname, sealer.submit(seal))
        if sealing:
            staged.done(sealing[0], sealing[1].result())
    return dict(zip(names, plan))


def iter_shard_plan(src: Source, max_shard_size: int) -> Iterable[tuple[str, list[str], int]]:
    plan = plan_shards(src.infos, max_shard_size)
    for fname, tensors in zip(shard_names(len(plan)), plan):
        yield fname, tensors, sum(src.infos[t].nbytes for t in tensors)
