"""Per-tensor jobs run ahead of the writer in worker processes, results taken in any order.

The writer reads tensors one at a time in its own order. `Prefetch` keeps up to
`ahead` jobs in flight in that order, so workers quantise the next tensors while
the main process writes the current one. Each job is a pure function of its
inputs, so the bytes do not depend on the number of workers; memory holds at most
`ahead` results plus what each worker is computing. Workers read their inputs
themselves when the thunk pickles (safetensors file slices). Large results come back
through /dev/shm slot files. Slots are reused: overwriting a tmpfs file's pages is a
memcpy, while a fresh file pays page allocation on write and freeing on unlink (about
5x the time at 2 MiB).

    >>> p = Prefetch({"a": Job(_demo, ())}, workers=1)
    >>> p.take("a", 0)
    1
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import shutil
import signal
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import BadInputError, LingConvertError
from .fastio import pwrite_all
from .handover import SPILL_PREFIX, _Packed, _portable, _spill_dir, _Spilled, _unlink  # noqa: F401
from .heap import reuse_heap
from .source import RawRange, TensorInfo


def _demo():
    return (1,)


@dataclass(frozen=True)
class Job:
    """fn(*[load() for load in inputs], **kw) -> tuple of results. `fn` must be a module-level function."""

    fn: Callable[..., tuple]
    inputs: tuple[Callable[[], torch.Tensor], ...]
    kw: tuple[tuple[str, object], ...] = ()

    def run(self) -> tuple:
        return self.fn(*[load() for load in self.inputs], **dict(self.kw))


_GIVEN_AWAY = object()     # cache slot of a spilled part whose file a writer took
SPILL_MIN = 1 << 20        # smaller results go through the pipe
SLOT_KEEP = 1 << 25        # a recycled slot file larger than this is deleted (tmpfs is RAM)
_counter = itertools.count()


def _hand_over(t: torch.Tensor, slot: str | None):
    nbytes = t.numel() * t.element_size()
    if slot and nbytes >= SPILL_MIN:
        try:
            fd = os.open(slot, os.O_WRONLY | os.O_CREAT, 0o600)     # no O_TRUNC: reuse its pages
            try:
                pwrite_all(fd, t.detach().contiguous().reshape(-1).view(torch.uint8).numpy(), 0)
            finally:
                os.close(fd)
            return _Spilled(slot, t)
        except OSError:                    # tmpfs full: fall back to the pipe
            _unlink(slot)
    return _Packed(t)


class _Slots:
    """Names of free slot files in the spill dir; a job gets one per result part at submit time."""

    def __init__(self, root: str):
        self.root, self.free = root, []

    def get(self) -> str:
        return self.free.pop() if self.free else os.path.join(self.root, f"slot-{next(_counter)}")

    def put(self, path: str, nbytes: int = 0) -> None:
        if nbytes > SLOT_KEEP:             # keep idle RAM small; the name is reused, the file recreated
            _unlink(path)
        self.free.append(path)


def _run_in_worker(job: Job, slots: list[str | None]) -> tuple:
    try:
        out = job.run()
    except LingConvertError as e:       # pickles with its fields (LingConvertError.__reduce__)
        return ("error", e)
    return ("ok", tuple(_hand_over(t, slots[i] if i < len(slots) else None) if isinstance(t, torch.Tensor) else t
                        for i, t in enumerate(out)))


def _init_worker() -> None:
    # Parallelism is across processes; one intra-op thread each avoids oversubscription.
    torch.set_num_threads(1)
    reuse_heap()
    # Ctrl-C is the parent's to handle (it keeps finished shards for --resume and stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_workers(n: int | None) -> int | None:
    """`--workers` as every command takes it: None for the default, else at least 1 (0 is refused
    everywhere, never read as "default")."""
    if n is not None and int(n) < 1:
        raise BadInputError(f"--workers {n} must be at least 1",
                            fix="omit --workers for the default, or pass 1 or more")
    return None if n is None else int(n)


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


class Prefetch:
    """Results of `jobs` (name -> Job, in the order they will be read) with `parts` parts each."""

    def __init__(self, jobs: dict[str, Job], workers: int = 1, ahead: int | None = None, parts: int = 1):
        self.jobs, self.parts = jobs, parts
        self.order = list(jobs)
        self.pos = {k: i for i, k in enumerate(self.order)}
        self.workers = max(1, int(workers))
        self.ahead = max(1, ahead or 2 * self.workers)
        self.cache: OrderedDict[str, tuple] = OrderedDict()
        self.taken: dict[str, set[int]] = {}
        self.futures: dict[str, Future] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._spill: str | None = None
        self._slots: _Slots | None = None
        self._leases: dict[str, list[str]] = {}     # job in flight -> its slot files
        self._finalizer = None
        self._lock = threading.Lock()   # the writer may call thunks from its read-ahead thread
        self._closing = False

    # -- public -------------------------------------------------------------
    def take(self, name: str, part: int):
        """Part `part` of job `name`'s result; the result is dropped once every part was taken."""
        with self._lock:
            return self._take(name, part)

    def _take(self, name: str, part: int, raw: bool = False):
        res = self._result(name)
        if res[part] is _GIVEN_AWAY:                 # its file was handed to a writer: compute it again
            self.cache.pop(name)
            res = self._result(name)
        out = res[part]
        if isinstance(out, _Spilled):
            # raw: the caller owns (and deletes) the file; else map it once, a second take gets the tensor
            keep = _GIVEN_AWAY if raw else out()
            out = out if raw else keep
            self.cache[name] = res = res[:part] + (keep,) + res[part + 1:]
        seen = self.taken.setdefault(name, set())
        seen.add(part)
        if len(seen) >= self.parts:
            self.cache.pop(name, None)
            self.taken.pop(name, None)
            if not self.cache and not self.futures and self.pos[name] == len(self.order) - 1:
                self._closing = True
                if not raw:
                    self.close()
        return out

    def thunk(self, name: str, part: int) -> "PrefetchThunk":
        return PrefetchThunk(self, name, part)

    def take_raw(self, name: str, part: int) -> RawRange | None:
        """Part `part` as a file range: its spill file (the writer copies that in the kernel); None
        when it came through the pipe. The caller calls
        `.done()` once it has used it, which frees the slot file for a later result."""
        with self._lock:
            res = self._result(name)
            if not isinstance(res[part], _Spilled):
                return None
            got = self._take(name, part, raw=True)
            return RawRange(got.path, 0, TensorInfo(got.shape, got.dtype), lambda: self._release(got))

    def _release(self, part: _Spilled) -> None:
        with self._lock:
            self._recycle(part)
        if self._closing:       # the last result was taken as a file: stop the pool once it is copied
            self.close()

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._pool, self._spill, self._slots, self._finalizer = None, None, None, None

    # -- internals ----------------------------------------------------------
    def _result(self, name: str) -> tuple:
        """The job's result; spilled parts stay files (taken as tensors or as raw ranges)."""
        if name in self.cache:
            self.cache.move_to_end(name)
            return self.cache[name]
        if self.workers == 1:
            res = self.jobs[name].run()
        else:
            self._fill(name)
            msg, slots = self.futures.pop(name).result(), self._leases.pop(name)
            if self._slots is not None:     # slots of parts that came through the pipe are free again
                used = {x.path for x in (msg[1] if msg[0] == "ok" else ()) if isinstance(x, _Spilled)}
                for path in slots:
                    if path not in used:
                        self._slots.put(path)
            res = self._unwrap(msg)
        self.cache[name] = res
        # Bound memory even when a reader never takes every part (it is recomputed if asked again).
        while len(self.cache) > self.ahead + 2:
            old, dropped = self.cache.popitem(last=False)
            self.taken.pop(old, None)
            for x in dropped:
                if isinstance(x, _Spilled):
                    self._recycle(x)
        return res

    def _recycle(self, spilled: "_Spilled") -> None:
        if self._slots is not None:
            self._slots.put(spilled.path, spilled.nbytes)

    def _fill(self, name: str) -> None:
        if name not in self.futures:
            self._submit(name)
        start = self.pos[name] + 1
        for nxt in self.order[start:start + self.ahead - 1]:
            if len(self.futures) >= self.ahead:
                break
            if nxt not in self.futures and nxt not in self.cache:
                self._submit(nxt)

    def _submit(self, name: str) -> None:
        job = self.jobs[name]
        job = Job(job.fn, tuple(_portable(x) for x in job.inputs), job.kw)
        pool = self._executor()
        slots = [self._slots.get() if self._slots is not None else None for _ in range(self.parts)]
        self._leases[name] = [x for x in slots if x is not None]
        self.futures[name] = pool.submit(_run_in_worker, job, slots)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # fork: instant start and no re-import of the caller's __main__ (spawn would run an unguarded
            # script again). Safe here: children set one intra-op thread before any torch op (no OpenMP
            # team), and the fork happens while the writer's other threads wait on this load.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)
            self._spill = _spill_dir()
            self._slots = _Slots(self._spill) if self._spill else None
            self._finalizer = weakref.finalize(self, _shutdown, self._pool, self.futures, self._spill)
        return self._pool

    @staticmethod
    def _unwrap(msg: tuple) -> tuple:
        if msg[0] == "error":
            raise msg[1]
        return tuple(x() if isinstance(x, _Packed) else x for x in msg[1])


@dataclass(frozen=True)
class PrefetchThunk:
    """Thunk for one part of a job's result; a spilled part can also be taken as a file range."""

    pre: Prefetch
    name: str
    part: int

    def __call__(self) -> torch.Tensor:
        return self.pre.take(self.name, self.part)

    def raw_range(self) -> RawRange | None:
        return self.pre.take_raw(self.name, self.part)

    @property
    def group(self) -> tuple[int, str]:
        return id(self.pre), self.name


def _shutdown(pool: ProcessPoolExecutor, futures: dict, spill: str | None) -> None:
    futures.clear()
    pool.shutdown(wait=True, cancel_futures=True)
    if spill:
        shutil.rmtree(spill, ignore_errors=True)      # results computed but never taken
