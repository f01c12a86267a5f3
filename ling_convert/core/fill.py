"""Fill one output file from several processes, each writing its pieces at their own offsets.

A writer knows where every byte of its file goes before any byte is made (a safetensors
header, a GGUF tensor-info table). It cuts the file into pieces (a tensor, the tensors one
job makes, a range of an unchanged tensor to copy); forked workers make each piece and
`pwrite` it at its offset. The parent takes the pieces back in file order to hash and flush
them behind the workers, so the file's bytes and its hash do not depend on the number of
workers. At most `ahead` pieces are in flight and each worker makes one at a time, so
memory stays flat: a few tensors per worker.

    >>> with FillPool(make, workers=2) as pool:                          # doctest: +SKIP
    ...     pool.fill("out.tmp", pieces, lambda region: hash_it(region))
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

from . import fastio

COPY_PIECE = 1 << 26        # an unchanged tensor is copied in ranges of this size, spread over workers
MEMORY_FACTOR = 4           # a worker may hold about this many copies of the largest tensor
SMALL_RUN = 64 << 20        # below this many bytes, forking workers costs more than it saves


@dataclass(frozen=True)
class Region:
    """Bytes [offset, offset + nbytes) of the output file."""

    offset: int
    nbytes: int


@dataclass(frozen=True)
class Piece:
    """What one worker makes in one go: its regions of the file, and `how` (small, picklable:
    the maker reads it; the source itself reaches the worker through the fork)."""

    regions: tuple[Region, ...]
    how: tuple


def copy_pieces(file, src_offset: int, region: Region, step: int = COPY_PIECE) -> list[Piece]:
    """Pieces copying `region.nbytes` bytes of `file` from `src_offset` into `region`, `step` at a time."""
    return [Piece((Region(region.offset + k, min(step, region.nbytes - k)),), ("copy", os.fspath(file), src_offset + k))
            for k in range(0, region.nbytes, step)] or [Piece((region,), ("copy", os.fspath(file), src_offset))]


# -- worker side -------------------------------------------------------------------------

_MAKE: Callable | None = None       # per worker: the maker given to FillPool
_OUT: dict = {}                      # per worker: the output file it has open (path -> fd)


def _init_worker(make: Callable) -> None:
    global _MAKE
    _MAKE = make
    import torch
    torch.set_num_threads(1)    # parallelism is across processes; one intra-op thread each
    from .heap import reuse_heap
    reuse_heap()
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle


def _out_fd(path: str) -> int:
    if path not in _OUT:
        for fd in _OUT.values():        # the previous shard is done: one output open at a time
            os.close(fd)
        _OUT.clear()
        _OUT[path] = os.open(path, os.O_WRONLY)      # never creates: a file the writer gave up is gone
    return _OUT[path]


def _make(path: str, piece: Piece) -> None:
    try:
        fd = _out_fd(path)
        if piece.how[0] == "copy":
            (region,) = piece.regions
            os.lseek(fd, region.offset, os.SEEK_SET)     # the worker's own descriptor: its own position
            fastio.copy_range(piece.how[1], piece.how[2], region.nbytes, fd)
        else:
            _MAKE(piece, fd)
    except OSError as e:        # name the file being written (a pwrite's error names none)
        raise OSError(e.errno, e.strerror, e.filename or path) from None


# -- parent side -------------------------------------------------------------------------

class FillPool:
    """Worker processes forked once (the maker and the lazy source it reads are inherited, not
    pickled), then used for every file of a run. `make(piece, fd)` writes a non-copy piece."""

    def __init__(self, make: Callable[[Piece, int], None], workers: int, ahead: int | None = None):
        self.workers = max(2, int(workers))
        self.ahead = max(self.workers, ahead or 2 * self.workers)
        self.max_in_flight = 0          # the most pieces ever in flight (tests check it stays bounded)
        # fork: instant start and nothing to pickle. Safe: the pool is made before the writer starts
        # threads, and children set one intra-op thread before any torch op (no OpenMP team).
        ctx = mp.get_context("fork")
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(make,))
        self._pool.submit(int).result()     # fork every worker now, while this thread is the only one

    def __enter__(self) -> "FillPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def fill(self, path, pieces: list[Piece], done: Callable[[Region], None]) -> None:
        """Make every piece into `path` (an existing file); call `done(region)` for every region in
        file order, each once its bytes are in the file. The regions must tile the data part."""
        path = os.fspath(path)
        order = sorted((r.offset, i, r) for i, p in enumerate(pieces) for r in p.regions)
        queue = iter(sorted(range(len(pieces)), key=lambda i: min(r.offset for r in pieces[i].regions)))
        running: dict[int, Future] = {}
        finished: set[int] = set()
        try:
            for _, i, region in order:
                while i not in finished:
                    self._top_up(path, pieces, queue, running, finished)
                    # pieces start in file order, so the one needed is the oldest running
                    nxt = i if i in running else next(iter(running))
                    running.pop(nxt).result()              # re-raises the worker's error
                    finished.add(nxt)
                done(region)
        finally:
            for fut in running.values():
                fut.cancel()
            for fut in running.values():
                if not fut.cancelled():
                    fut.exception()      # a piece still being written must not land after an error

    def _top_up(self, path: str, pieces, queue, running: dict, finished: set) -> None:
        while len(running) < self.ahead:
            i = next(queue, None)
            if i is None:
                return
            running[i] = self._pool.submit(_make, path, pieces[i])
            self.max_in_flight = max(self.max_in_flight, len(running))


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        return os.cpu_count() or 1


def auto_workers(sizes: Iterable[int]) -> tuple[int, str]:
    """Workers for a run writing tensors of `sizes` bytes: the cores this process may use, capped so
    that each worker can hold MEMORY_FACTOR x the largest tensor in the memory available now.
    -> (workers, why) where `why` says what set the number."""
    sizes = list(sizes)
    n, why = cores(), f"{cores()} cores available"
    if sum(sizes) < SMALL_RUN:
        return 1, f"model under {SMALL_RUN >> 20} MB: one process"
    avail, largest = available_memory(), max(sizes, default=0)
    if avail is not None and largest and avail // (MEMORY_FACTOR * largest) < n:
        n = max(1, avail // (MEMORY_FACTOR * largest))
        why = f"memory: {avail >> 20} MB available / ({MEMORY_FACTOR} x largest tensor {largest >> 20} MB)"
    return n, why
