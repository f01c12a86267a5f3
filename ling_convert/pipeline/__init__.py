"""Open the source once, plan the route once, apply it lazily, write the target.

    >>> lazy, route = prepare("Ling-lite/", "safetensors")       # doctest: +SKIP
    >>> convert("Ling-lite/", "Ling-lite-st/", to="safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..converters import apply_route, plan_route, route_options
from ..core.errors import ConfigSchemaError, UnknownTensorError, UnsupportedError
from ..core.fill import auto_workers
from ..core.options import as_mapping, field_defaults
from ..core.pool import check_workers
from ..core.output import parse_size
from ..core.source import Source
from ..formats import aux_files, detect_format, get_format, open_source, read_config
from ..formats.safetensors import iter_shard_plan
from ..formats.writer import DEFAULT_SHARD, WriteOptions
from ..hub.sync import resolve_source
from ..model import arch as arch_mod
from ..model.counts import check_counts

# Formats whose tensor names are the canonical HF names (others map to them by an edge).
HF_NAMED = ("bin", "safetensors")


@dataclass
class ConvertResult:
    output: Path | None
    route: list[str]
    source_format: str
    target_format: str
    tensors: int
    bytes: int
    shards: list[dict] = field(default_factory=list)
    dry_run: bool = False
    workers: int = 1
    workers_why: str = "one process"       # what set the number of worker processes (cores, memory, --workers)
    config: dict | None = None      # a dry run's config.json as it would be written


def open_checkpoint(path: str | Path, fmt: str | None = None) -> Source:
    """Open any supported checkpoint lazily and check its config names a known architecture."""
    return open_source(path, fmt)


def check_complete(src: Source) -> None:
    """Fail early, naming the tensor, when an HF-named source lacks a tensor its config requires."""
    a = arch_mod.detect_architecture(src.config, src.path)
    missing = [n for n in a.expected_names(src.config) if n not in src.infos]
    if missing:
        raise UnknownTensorError(f"checkpoint lacks {len(missing)} tensor(s) its config requires",
                                 path=src.path, tensor=missing[0],
                                 fix="the checkpoint is incomplete (missing shard?) or config.json does not match it")


def with_config_from(src: Source, cfg_dir: str | Path) -> Source:
    """Use config.json and the tokenizer/aux files of HF dir `cfg_dir` (sources without a usable config)."""
    cfg = read_config(Path(cfg_dir))
    if cfg is None:
        raise ConfigSchemaError("no config.json here", path=cfg_dir, fix="point --config-from at an HF model directory")
    return src.derive(config=cfg, aux={**src.aux, **aux_files(Path(cfg_dir))}, config_from=str(cfg_dir),
                      config_error=None, notes={**src.notes, "config_from": str(cfg_dir)})   # notes: the manifest


def prepare(src_path: str | Path, to: str, *, from_format: str | None = None,
            options=None) -> tuple[Source, list]:
    """Open the source and apply the route to `to` lazily (no tensor data is read).

    `options`: a mapping or an options object; a key no edge of the route reads is an OptionError."""
    if from_format:
        from .input_kind import check_input_kind
        check_input_kind(src_path, from_format, to)
    src = open_checkpoint(src_path, from_format)
    given = as_mapping(options)
    if given.get("config_from"):       # before the checks below: it gives the config they read
        src = with_config_from(src, given["config_from"])
    if src.config is None and src.config_error:     # e.g. DCP args that cannot give a config
        raise ConfigSchemaError(src.config_error)
    check_counts(arch_mod.detect_architecture(src.config, src.path), src)
    if src.format in HF_NAMED:
        check_complete(src)
    route = plan_route(src.format, to)
    return apply_route(src, route, route_options(route, get_format(to).options, options)), route


def convert(src: str | Path, out: str | Path, *, to: str = "safetensors", from_format: str | None = None,
            max_shard_size: str | int = DEFAULT_SHARD, force: bool = False, resume: bool = False,
            dry_run: bool = False, options=None,
            progress: Callable[[int], None] | None = None, workers: int | None = None) -> ConvertResult:
    """Convert any supported checkpoint to format `to` (route found by the planner).

    `options`: an options object or a mapping (`prepare`). `workers`: processes filling each output file
    (None: the options' `workers`, else `core.fill.auto_workers`); bytes do not depend on it."""
    src, hub_source = resolve_source(src)   # hf://org/name[@rev], ms://...: pulled and verified first
    options = as_mapping(options)           # the options set, as plain data
    given = options.pop("workers", None)
    lazy, route = prepare(src, to, from_format=from_format, options=_one_process_edges(src, to, from_format, options))
    if hub_source:
        lazy.notes["hub_source"] = hub_source   # repo, revision and commit go into the manifest
    return execute(lazy, route, out, to=to, max_shard_size=max_shard_size, force=force, resume=resume,
                   dry_run=dry_run, options=options, progress=progress,
                   workers=resolve_workers(workers if workers is not None else given, lazy))


def _one_process_edges(src, to: str, from_format: str | None, options: dict) -> dict:
    """The options with `workers: 1` for every edge that reads it: the writer's processes run the edges'
    work, and an edge starting a pool of its own would oversubscribe the cores."""
    fmt = from_format or detect_format(src).name
    if any("workers" in field_defaults(e.options) for e in plan_route(fmt, to)):
        return {**options, "workers": 1}
    return options


def resolve_workers(workers: int | None, lazy: Source) -> tuple[int, str]:
    """--workers N as given, else `core.fill.auto_workers` from the output's tensor sizes. -> (n, why)."""
    if workers is None:
        if lazy.infos and all(lazy.location(n) is not None for n in lazy.infos):   # untouched stored bytes
            # Nothing to compute: this process copies file ranges itself, and a worker would only
            # add its start-up (a torch import each; measured to-mindie 1 GB: 3.3 s alone, 5.2 s with 2).
            return 1, "every tensor is copied as stored: one process"
        return auto_workers(i.nbytes for i in lazy.infos.values())
    return check_workers(workers), "--workers"


def execute(lazy: Source, route: list, out: str | Path, *, to: str, max_shard_size: str | int = DEFAULT_SHARD,
            force: bool = False, resume: bool = False, dry_run: bool = False, options=None,
            progress: Callable[[int], None] | None = None, workers: tuple[int, str] = (1, "one process")
            ) -> ConvertResult:
    """Write a prepared (lazy, routed) source with the target's writer, or plan its shards (`dry_run`).
    `workers`: (processes filling each output file, what set the number)."""
    result = ConvertResult(None, [e.name for e in route], lazy.source_format, to, len(lazy.infos), lazy.total_bytes,
                           dry_run=dry_run, workers=workers[0], workers_why=workers[1])
    if dry_run:
        result.config = lazy.config
        result.shards = [{"file": f, "tensors": len(t), "bytes": b}
                         for f, t, b in iter_shard_plan(lazy, parse_size(max_shard_size))]
        return result
    target = get_format(to)
    if target.write is None:
            raise UnsupportedError(f"format {to!r} can be read but not written", fix="pick another --to")
    if progress is not None and hasattr(progress, "start"):
        progress.start(lazy.total_bytes)
    opts = write_options(route, to, options, max_shard_size=max_shard_size, force=force, resume=resume,
                         progress=progress, workers=workers[0])
    result.output = Path(target.write(lazy, Path(out), opts))
    return result


def write_options(route: list, to: str, options=None, **kw) -> WriteOptions:
    """The writer's options: run settings (`kw`) and the route's typed options object."""
    return WriteOptions(options=route_options(route, get_format(to).options, options), **kw)
