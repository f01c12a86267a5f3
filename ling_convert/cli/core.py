"""Core commands: convert, bin2st, inspect, formats, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import api
from . import app
from .common import (ConfigFromOpt, DryRunOpt, ForceOpt, FromOpt, JsonOpt, MaxShardOpt, OutArg, ResumeOpt, SrcArg,
                     WorkersOpt, byte_progress, emit_json, human_bytes, human_count, out, print_shard_plan,
                     workers_line)


def _run_convert(src: Path, dst: Path, to: str, *, from_format, max_shard_size, force, resume, dry_run,
                 as_json, options=None, workers=None):
    if dry_run:
        r = api.convert(src, dst, to=to, from_format=from_format, max_shard_size=max_shard_size, dry_run=True,
                        options=options, workers=workers)
        _print_result(r, as_json)
        return r
    with byte_progress(f"writing {to}", quiet=as_json) as prog:
        r = api.convert(src, dst, to=to, from_format=from_format, max_shard_size=max_shard_size, force=force,
                        resume=resume, options=options, progress=prog, workers=workers)
    _print_result(r, as_json)
    return r


def _print_result(r: api.ConvertResult, as_json: bool) -> None:
    if as_json:
        emit_json(r.__dict__)
        return
    route = " -> ".join([r.source_format, *r.route]) if r.route else r.source_format
    out.print(f"route: {route} => {r.target_format}")
    out.print(f"{r.tensors} tensors, {human_bytes(r.bytes)}")
    out.print(workers_line(r))
    if r.dry_run:
        print_shard_plan(r.shards)
    else:
        out.print(f"wrote {r.output}")


@app.command()
def convert(src: SrcArg, dst: OutArg,
            to: Annotated[str, typer.Option("--to", help="Target format (see `ling-convert formats`).")] = "safetensors",
            from_format: FromOpt = None, config_from: ConfigFromOpt = None, max_shard_size: MaxShardOpt = "5GB",
            force: ForceOpt = False, resume: ResumeOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False,
            workers: WorkersOpt = None):
    """Convert SRC to format --to; the route planner finds the chain of converters."""
    _run_convert(src, dst, to, from_format=from_format, max_shard_size=max_shard_size, force=force,
                 resume=resume, dry_run=dry_run, as_json=as_json, workers=workers,
                 options={"config_from": str(config_from)} if config_from else None)


@app.command()
def bin2st(src: SrcArg, dst: OutArg, max_shard_size: MaxShardOpt = "5GB", force: ForceOpt = False,
           resume: ResumeOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False,
           workers: WorkersOpt = None):
    """HF .bin -> HF safetensors (bit-exact, streamed, sharded)."""
    _run_convert(src, dst, "safetensors", from_format="bin", max_shard_size=max_shard_size, force=force,
                 resume=resume, dry_run=dry_run, as_json=as_json, workers=workers)


@app.command()
def inspect(path: SrcArg, from_format: FromOpt = None, as_json: JsonOpt = False):
    """Format, architecture, layer/expert counts, parameters, dtypes, files."""
    info = api.inspect_checkpoint(path, from_format)
    if as_json:
        emit_json(info)
        return
    t = Table(show_header=False, box=None)
    for k, v in info.items():
        if k == "parameters" and v:
            v = ", ".join(f"{kk} {human_count(vv)}" for kk, vv in v.items())
        elif k == "dtypes":
            v = "; ".join(f"{d}: {c['tensors']} tensors, {human_bytes(c['bytes'])}" for d, c in v.items())
        elif k == "bytes":
            v = human_bytes(v)
        elif isinstance(v, (list, dict)):
            v = ", ".join(f"{a}: {b}" for a, b in v.items()) if isinstance(v, dict) else ", ".join(map(str, v)) or "-"
        t.add_row(k, str(v))
    out.print(t)


@app.command()
def formats(as_json: JsonOpt = False):
    """List the format nodes and converter edges of the graph."""
    g = api.graph()
    fm, ed = g["formats"], g["edges"]
    if as_json:
        emit_json({"formats": fm, "edges": ed})
        return
    t = Table("format", "writable", "summary")
    for n, f in fm.items():
        t.add_row(n, "yes" if f["writable"] else "no", f["summary"])
    out.print(t)
    t = Table("edge", "from", "to", "lossless")
    for e in ed:
        t.add_row(e["edge"], e["from"], e["to"], "yes" if e["lossless"] else "no")
    out.print(t)


@app.command()
def demo(workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Where to build (default: a temp dir).")] = None,
         as_json: JsonOpt = False):
    """Build the embedded tiny Ling models and run every edge, printing a parity table."""
    rows = api.run_demo(workdir)
    if as_json:
        emit_json(rows)
        return
    t = Table("model", "edge", "seconds", "bytes", "parity", title="ling-convert demo: every edge, verified")
    for r in rows:
        t.add_row(r["model"], r["edge"], f"{r['seconds']:.2f}", human_bytes(r["bytes"]), r["parity"])
    out.print(t)
    bad = [r for r in rows if r["parity"].startswith("FAIL")]
    if bad:
        raise typer.Exit(1)
