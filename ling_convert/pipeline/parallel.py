"""Write an HF-style output with torchrun ranks, each filling its shards with a local pool.

The shard plan depends only on the lazy source and --max-shard-size, so shard i
has the same bytes whoever writes it. Rank r (of torchrun's WORLD_SIZE) writes
shards i % world == r into the shared staging dir, each filled by its `workers`
processes (core/fill.py); rank 0 took the output lock first and, after every rank reported
(a gather: the barrier), writes config, aux files, index and manifest and commits.
Each rank re-opens the source lazily (metadata only), so nothing large is pickled.

    >>> convert_parallel("iter_0001000/", "out/", to="safetensors", options={}, workers=4)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from . import ConvertResult, prepare, write_options
from ..core.errors import LingConvertError
from ..core.fill import FillPool
from ..core.options import as_mapping
from ..formats import safetensors as st
from ..core.output import StagedOutput, os_error, output_path, sha256_file
from ..formats.writer import finish_hf_dir, plan_id

HF_TARGETS = ("safetensors", "fp8")   # targets whose writer is writer.write_hf_dir
_STATE: dict = {}                     # per rank: the lazy source


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _as_data(e: LingConvertError) -> tuple:
    # The error itself crosses processes and ranks (LingConvertError.__reduce__ keeps its fields).
    return ("error", e)


def _raise(msg: tuple) -> None:
    raise msg[1]


# -- worker side -----------------------------------------------------------------------

def _init(src: str, to: str, from_format: str | None, options: dict, want: str, max_shard_size) -> None:
    torch.set_num_threads(1)
    try:
        lazy, route = prepare(src, to, from_format=from_format, options=options)
        got = plan_id(lazy, write_options(route, to, options, max_shard_size=max_shard_size), to)
        _STATE.update(lazy=lazy, error=None if got == want else "worker planned a different output")
    except LingConvertError as e:
        _STATE.update(lazy=None, error=_as_data(e))


def _write_one(path: str, names: list[str], reuse_sha: str | None, fill: FillPool | None = None) -> tuple:
    """Write one shard (or keep a resumed one whose hash matches); -> ('ok', sha) or error data."""
    if _STATE["error"]:
        return _STATE["error"] if isinstance(_STATE["error"], tuple) else ("internal", _STATE["error"])
    p = Path(path)
    if reuse_sha and p.is_file() and sha256_file(p) == reuse_sha:
        return ("ok", reuse_sha)
    lazy = _STATE["lazy"]
    try:
        return ("ok", st.write_shard(p, names, lazy, fill=fill))
    except LingConvertError as e:
        return _as_data(e)
    except OSError as e:      # disk full or file-size limit in a worker: the one-line error of a 1-process run
        return _as_data(os_error(e, output_path(p)))


def _write_mine(tasks: list[tuple], init_args: tuple, workers: int, progress, on_done) -> dict[str, tuple]:
    """Write this rank's shard tasks [(fname, path, names, reuse_sha, nbytes)] one after another, each
    filled by `workers` processes (core/fill.py)."""
    results = {}
    _init(*init_args)
    lazy = _STATE["lazy"]
    pool = FillPool(st.tensor_maker(lazy), workers) if workers > 1 and lazy is not None else contextlib.nullcontext()
    with pool as fill:
        for fname, path, names, reuse, nbytes in tasks:
            results[fname] = _write_one(path, names, reuse, fill)
            on_done(fname, results[fname])
            if progress:
                progress(nbytes)
    return results


# -- coordination ----------------------------------------------------------------------

class _Group:
    """torch.distributed (gloo) when run under torchrun; a no-op for one rank."""

    def __init__(self, rank: int, size: int):
        self.rank, self.size = rank, size
        self.owned = size > 1 and not torch.distributed.is_initialized()
        if self.owned:
            torch.distributed.init_process_group("gloo")

    def close(self) -> None:
        # A gloo group left for interpreter exit can abort the rank ("terminate called without an
        # active exception": its threads die joinable), which torchrun reports as a failed run
        # after a complete output. Tear it down ourselves, once every rank has the outcome.
        if self.owned and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owned = False

    def share(self, obj):
        """Rank 0's `obj`, on every rank."""
        if self.size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        if self.size == 1:
            return [obj]
        box = [None] * self.size if self.rank == 0 else None
        torch.distributed.gather_object(obj, box, dst=0)
        return box


def convert_parallel(src, out, *, to: str, options=None, from_format: str | None = "dcp", workers: int = 1,
                     max_shard_size="5GB", force: bool = False, resume: bool = False, progress=None):
    """Like `pipeline.convert` for HF-style targets, with shards split over ranks and pool workers."""
    rank, size = world()
    group = _Group(rank, size)
    try:
        return _convert_ranked(group, src, out, to=to, options=options, from_format=from_format,
                               workers=workers, max_shard_size=max_shard_size, force=force, resume=resume,
                               progress=progress)
    finally:
        group.close()


def _convert_ranked(group: _Group, src, out, *, to, options, from_format, workers, max_shard_size, force,
                    resume, progress) -> ConvertResult:
    rank, size = group.rank, group.size
    options = as_mapping(options)           # the set options cross to worker processes as plain data
    if to == "fp8":
        options["workers"] = 1             # the quantize edge must not start a pool inside ours
    lazy, route = prepare(src, to, from_format=from_format, options=options)
    pid = plan_id(lazy, write_options(route, to, options, max_shard_size=max_shard_size), to)
    plan = st.plan_shards(lazy.infos, st.parse_size(max_shard_size))
    names = st.shard_names(len(plan))
    mine = [i for i in range(len(plan)) if i % size == rank]
    if progress is not None and hasattr(progress, "start"):
        progress.start(sum(lazy.infos[n].nbytes for i in mine for n in plan[i]))
    staged = StagedOutput(out, sources=lazy.inputs(), force=force, resume=resume, plan_id=pid)
    staging, resumed = _open_staging(group, staged)
    try:
        tasks = [(names[i], str(staging / names[i]), plan[i], resumed.get(names[i]),
                  sum(lazy.infos[n].nbytes for n in plan[i])) for i in mine]
        results = _write_all(tasks, (str(src), to, from_format, options, pid, max_shard_size), workers,
                             progress, staged if rank == 0 else None)
        gathered = group.gather(results)
        outcome = _finish(staged, lazy, to, names, plan, gathered) if rank == 0 else None
    except BaseException as e:       # Ctrl-C: rank 0 keeps the finished shards for --resume, unlocks
        if rank == 0 and staged.is_open:
            staged.close(e)
        raise
    outcome = group.share(outcome)
    if outcome[0] != "ok":
        _raise(outcome) if outcome[0] == "error" else _internal(outcome)
    fmt = getattr(lazy, "source_format", from_format)
    return ConvertResult(Path(out), [e.name for e in route], fmt, to, len(lazy.infos), lazy.total_bytes)


def _open_staging(group: _Group, staged: StagedOutput) -> tuple[Path, dict]:
    """Rank 0 checks the output and takes the lock; every rank learns the staging dir (or the error)."""
    opened = None
    if group.rank == 0:
        try:
            staged.open()
            opened = ("ok", str(staged.staging), staged.resumed)
        except LingConvertError as e:
            opened = _as_data(e)
    opened = group.share(opened)
    if opened[0] != "ok":
        _raise(opened)
    return Path(opened[1]), opened[2]


def _write_all(tasks, init_args, workers: int, progress, staged: StagedOutput | None) -> dict[str, tuple]:
    """This rank's shards; failures become data, or the other ranks would wait in gather forever."""
    def record(fname, res):      # rank 0 records its shards at once, so an interrupted run can --resume
        if staged is not None and res[0] == "ok":
            staged.done(fname, res[1])
    try:
        return _write_mine(tasks, init_args, workers, progress, record)
    except LingConvertError as e:
        return {"": _as_data(e)}
    except OSError as e:
        return {"": _as_data(os_error(e, Path(e.filename) if e.filename else staged and staged.out))}
    except Exception as e:
        return {"": ("internal", f"{type(e).__name__}: {e}")}


def _internal(outcome):
    raise RuntimeError(f"parallel write failed: {outcome[1]}")


def _finish(staged: StagedOutput, lazy, to: str, names, plan, gathered) -> tuple:
    """Rank 0, after every rank reported: record shards, write the rest, commit (or clean up)."""
    shas = {f: r for part in gathered for f, r in part.items()}
    bad = next((r for r in shas.values() if r[0] != "ok"), None)
    try:
        if bad is not None:
            _raise(bad) if bad[0] == "error" else _internal(bad)
        for f in names:
            if f not in staged.files:
                staged.done(f, shas[f][1])
        # NOTE: the same finish as writer.write_hf_dir, so the bytes match a one-process run.
        finish_hf_dir(staged, lazy, dict(zip(names, plan)), to)
        staged.close()
        return ("ok",)
    except LingConvertError as e:
        staged.close(e)
        return _as_data(e)
    except BaseException as e:
        staged.close(e)
        raise
