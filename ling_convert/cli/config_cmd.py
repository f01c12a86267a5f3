"""Config commands: `yarn` (RoPE context extension) and `config show|diff|validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import ConfigSchemaError
from . import app
from .common import ConfigFromOpt, DryRunOpt, ForceOpt, JsonOpt, api, emit_json

config_app = typer.Typer(name="config", no_args_is_help=True,
                         help="Show, compare and validate model configs (HF dirs, MindIE dirs, config.json, GGUF).")
app.add_typer(config_app, name="config")

PathArg = Annotated[Path, typer.Argument(help="Model dir (HF or MindIE), a config.json file, or a .gguf file.")]
NormOpt = Annotated[bool, typer.Option("--normalized", help="Fold legacy RoPE spellings (type/rope_type, "
                                       "rope_parameters) into one form first.")]
# Numbers arrive as text so a bad value gets our one-line error instead of a usage panel.
FactorOpt = Annotated[Optional[str], typer.Option("--factor", help="Context multiplier, a number > 1 (e.g. 4).")]
OrigOpt = Annotated[Optional[str], typer.Option(
    "--original-max-position-embeddings",
    help="Trained context length (default: an existing YaRN's value, else max_position_embeddings).")]
YarnOutOpt = Annotated[Optional[Path], typer.Option("--out", help="Write a rewritten copy here (atomic).")]
InPlaceOpt = Annotated[bool, typer.Option("--in-place", help="Rewrite the config files (or the GGUF) in place.")]
RemoveOpt = Annotated[bool, typer.Option("--remove", help="Undo YaRN: restore the original context length.")]


def _row(r: dict) -> str:
    a, b = (json.dumps(r[k], ensure_ascii=False, default=str) for k in ("a", "b"))
    if r["change"] == "added":
        return f"{r['field']}: (absent) -> {b}"
    if r["change"] == "removed":
        return f"{r['field']}: {a} -> (absent)"
    return f"{r['field']}: {a} -> {b}"


def _print_changes(changes: dict[str, list[dict]]) -> None:
    for name, rows in changes.items():
        if not rows:
            typer.echo(f"{name}: unchanged")
        for r in rows:
            typer.echo(f"{name}: {_row(r)}")


@app.command()
def yarn(path: PathArg, factor: FactorOpt = None, original: OrigOpt = None, out_path: YarnOutOpt = None,
         in_place: InPlaceOpt = False, remove: RemoveOpt = False, force: ForceOpt = False, dry_run: DryRunOpt = False,
         as_json: JsonOpt = False):
    """Set YaRN RoPE scaling (factor, original context; both `type` and `rope_type`) and
    max_position_embeddings = factor x original; idempotent; --remove restores the original."""
    r = api.config_yarn(path, factor=factor, original=original, remove=remove, out=out_path, in_place=in_place,
                        force=force, dry_run=dry_run)
    if as_json:
        emit_json(r)
        return
    _print_changes(r["changes"])
    if dry_run:
        typer.echo("dry run: nothing written")
    else:
        typer.echo(f"wrote {r['output']}" if r["changed"] or not in_place else f"nothing to do: {r['output']}")


@config_app.command("show")
def show(path: PathArg, normalized: NormOpt = False, config_from: ConfigFromOpt = None, as_json: JsonOpt = False):
    """Print the config (both files of a MindIE dir; the metadata of a GGUF; for a Megatron DCP dir, the
    config a conversion would use)."""
    r = api.config_show(path, normalized=normalized, config_from=config_from)
    if as_json:
        emit_json(r)
        return
    for name, cfg in r["configs"].items():
        typer.echo(f"# {name} ({r['kind']})")
        typer.echo(json.dumps(cfg, indent=2, ensure_ascii=False, default=str))


@config_app.command("diff")
def diff(a: PathArg, b: PathArg, normalized: NormOpt = False, as_json: JsonOpt = False):
    """List the fields that differ from A to B (added, removed, changed)."""
    rows = api.config_diff(a, b, normalized=normalized)
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            typer.echo(f"{r['change']:8} {_row(r)}")
        if not rows:
            typer.echo("no differences")
    if rows:            # like diff(1): 0 same, 1 different, 2 trouble
        raise typer.Exit(1)


@config_app.command("validate")
def validate(path: PathArg, as_json: JsonOpt = False):
    """Check configs against the JSON Schemas in schemas/config (and MindIE's); exit 2 with every problem."""
    r = api.config_validate(path)
    if as_json:
        emit_json(r)
    else:
        for c in r["checked"]:
            if not c["problems"]:
                typer.echo(f"ok: {c['file'] or r['path']} ({str(c['schema']).rsplit(':', 1)[-1]})")
    if not r["ok"]:
        problems = [f"{c['file']}: {p}" if c["file"] else p for c in r["checked"] for p in c["problems"]]
        raise ConfigSchemaError(f"{len(problems)} problem(s): " + "; ".join(problems), path=path,
                                fix="edit the config to match, or regenerate it from the source checkpoint")
