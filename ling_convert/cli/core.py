"""Core commands: convert, bin2st, inspect, formats, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import (api, ConfigFromOpt, DryRunOpt, ForceOpt, FromOpt, JsonOpt, MaxShardOpt, OutArg, ResumeOpt, SrcArg,
                     WorkersOpt, byte_progress, emit_json, err, human_bytes, human_count, out, print_shard_plan,
                     text_table, workers_line)


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
                 options=api.CommonOptions(config_from=config_from))


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
    from rich.table import Table
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
    from rich.table import Table
    t = Table("format", "writable", "summary")
    for n, f in fm.items():
        t.add_row(n, "yes" if f["writable"] else "no", f["summary"])
    out.print(t)
    t = Table("edge", "from", "to", "lossless")
    for e in ed:
        t.add_row(e["edge"], e["from"], e["to"], "yes" if e["lossless"] else "no")
    out.print(t)


# The demo table: (header, cell of a row). Columns are added here; the table wraps at words to 100 columns.
DEMO_COLUMNS = (
    ("model", lambda r: r["model"]),
    ("edge", lambda r: r["edge"].split(":")[0]),      # an edge's name says its formats
    ("s", lambda r: f"{r['seconds']:.2f}"),
    ("size", lambda r: human_bytes(r["bytes"])),
    ("result", lambda r: r["result"]),
    ("tolerance", lambda r: r["tolerance"]),
    # verify's weight and expert passes (the logits pass is the result column)
    ("checks", lambda r: ", ".join(p for p in r["checks"].split(" | ") if not p.startswith("logits"))),
)
DEMO_WIDTH = 100


def _demo_progress(r: dict) -> None:
    err.print(f"{r['model']:<12} {r['edge']:<38} {r['seconds']:6.2f} s  {r['result']}", markup=False,
              highlight=False, soft_wrap=True)


@app.command()
def demo(workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Where to build and keep the outputs "
                                                         "(default: a temporary directory, removed at the end).")] = None,
         model: Annotated[Optional[list[str]], typer.Option("--model", help="Only this tiny model (repeatable): "
                                                            "ling-lite, ling-plus, ling-mini-2.")] = None,
         as_json: JsonOpt = False):
    """Build the embedded tiny Ling models and run every edge, printing a parity table."""
    import shutil
    import tempfile
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="ling-convert-demo-"))
    try:
        rows = api.run_demo(root, model or None, on_row=None if as_json else _demo_progress)
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    if as_json:
        emit_json(rows)
    else:
        print("ling-convert demo: every edge, verified")
        print(text_table([h for h, _ in DEMO_COLUMNS], [[cell(r) for _, cell in DEMO_COLUMNS] for r in rows],
                         width=DEMO_WIDTH))
        print(f"outputs kept in {root}" if workdir is not None else
              f"outputs were written to {root}, now removed (pass --workdir DIR to keep them)")
    if any(r["parity"].startswith("FAIL") for r in rows):
        raise typer.Exit(1)
