"""Shared CLI option aliases and the render layer (rich for humans, JSON for machines)."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

def flag(name: str, help: str, kind=Optional[str]):
    """A command's option alias on one line: `Annotated[kind, typer.Option(name, help=help)]`."""
    return Annotated[kind, typer.Option(name, help=help)]


SrcArg = Annotated[Path, typer.Argument(help="Source checkpoint (file or directory, any supported format).")]
OutArg = Annotated[Path, typer.Argument(help="Output path (created atomically).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a non-empty output.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run, reusing finished shards.")]
MaxShardOpt = Annotated[str, typer.Option("--max-shard-size", help="Shard byte budget, decimal like the Hub (5GB).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
FromOpt = Annotated[Optional[str], typer.Option("--from", help="Source format (default: detected).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print route and shard plan; read no tensor data.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="Processes filling each output file (default: cores available, capped by memory). "
                      "Output bytes do not depend on it.")]
# Options of more than one command (each command passes them to the API inside its options object).
ConfigFromOpt = Annotated[Optional[Path], typer.Option(
    "--config-from", help="HF model dir whose config.json (and tokenizer files) to use, e.g. for a Megatron DCP.")]
TokDirOpt = Annotated[Optional[Path], typer.Option(
    "--tokenizer-dir", help="Dir whose tokenizer files are used (default: the source's); also gives eos/pad ids.")]

class _LazyModule:
    """`api.convert(...)` imports the module on first use, so `--help`, `--version` and usage errors
    start without the library and torch (tests/test_startup.py)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        import importlib
        return getattr(importlib.import_module(self._name), attr)


api = _LazyModule("ling_convert.api")

# Wide enough for the demo table when output is piped (rich assumes 80 columns then).
class _LazyConsole:
    """A rich Console made on first print: rich costs ~0.1 s of start-up that --help does not need."""

    def __init__(self, **kw):
        self._kw, self._console = kw, None

    def __getattr__(self, attr: str):
        if self._console is None:
            from rich.console import Console
            self._console = Console(**self._kw)
        return getattr(self._console, attr)


out = _LazyConsole(width=None if sys.stdout.isatty() else 140)
err = _LazyConsole(stderr=True)


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def human_count(n: int) -> str:
    """Parameter counts: 16.26B, 1.44M, 127.8K, 512."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.4g}{unit}"
    return str(n)


def text_table(headers: list[str], rows: list[list[str]], width: int = 100, gap: int = 2) -> str:
    """A plain table at most `width` columns wide: the widest columns wrap at spaces, never inside a
    word (a word longer than its column is the only thing that can overflow)."""
    import textwrap
    cells = [list(headers), *rows]
    natural = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    floor = [max((len(w) for r in cells for w in r[i].split()), default=1) for i in range(len(headers))]
    widths, budget = natural[:], width - gap * (len(headers) - 1)
    while sum(widths) > budget:
        i = max(range(len(widths)), key=lambda j: (widths[j] > floor[j], widths[j]))
        if widths[i] <= floor[i]:
            break
        widths[i] -= 1
    lines = []
    for n, row in enumerate(cells):
        wrapped = [textwrap.wrap(c, w, break_long_words=False, break_on_hyphens=False) or [""]
                   for c, w in zip(row, widths)]
        for k in range(max(map(len, wrapped))):
            parts = [(col[k] if k < len(col) else "").ljust(w) for col, w in zip(wrapped, widths)]
            lines.append((" " * gap).join(parts).rstrip())
        if n == 0:
            lines.append((" " * gap).join("─" * w for w in widths))
    return "\n".join(lines)


class _Bar:
    """Adapter the API drives: `start(total_bytes)` once, then `advance(n)` per tensor written."""

    def __init__(self, bar, label: str):
        self.bar, self.label, self.task = bar, label, None

    def start(self, total: int) -> None:
        self.task = self.bar.add_task(self.label, total=total)

    def __call__(self, n: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, n)


@contextmanager
def byte_progress(label: str, quiet: bool = False):
    """A rich bar (bytes, rate, ETA) on a TTY; None (no bar) otherwise or with --json."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        yield _Bar(bar, label)


def workers_line(r) -> str:
    """How many processes fill each output file, and what set the number."""
    return f"workers: {r.workers} ({r.workers_why})"


def print_shard_plan(shards: list[dict]) -> None:
    """The --dry-run table: one row per planned shard."""
    from rich.table import Table
    t = Table("shard", "tensors", "bytes")
    for s in shards:
        t.add_row(s["file"], str(s["tensors"]), human_bytes(s["bytes"]))
    out.print(t)
    out.print("dry run: no tensor data read, nothing written")
