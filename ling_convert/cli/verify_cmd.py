"""`ling-convert verify A [B]`: weights, every expert and logits, through the reference forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..core.errors import BadInputError
from . import app
from .common import JsonOpt, emit_json, out


def parse_tol(text: str | None) -> dict | None:
    """'1e-3' (max-abs) or 'kl=1e-3,top1=0.95,max_abs=0.1'."""
    if not text:
        return None
    try:
        if "=" not in text:
            return {"max_abs": float(text)}
        pairs = dict(p.split("=", 1) for p in text.split(","))
        tol = {k.strip(): float(v) for k, v in pairs.items()}
    except ValueError:
        raise BadInputError(f"cannot parse --tol {text!r}", fix="use e.g. --tol 1e-3 or --tol kl=1e-3,top1=0.95") from None
    unknown = set(tol) - {"max_abs", "kl", "kl_mean", "top1", "cosine"}
    if unknown:
        raise BadInputError(f"unknown tolerance key(s) {sorted(unknown)}", fix="use max_abs, kl, kl_mean, top1 and/or cosine")
    return tol


def parse_tokens(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise BadInputError(f"cannot parse --tokens {text!r}", fix="use comma-separated ids, e.g. 1,2,3") from None


@app.command()
def verify(a: Annotated[Path, typer.Argument(help="Checkpoint A (any format).")],
           b: Annotated[Optional[Path], typer.Argument(help="Checkpoint B; omit to summarise A alone.")] = None,
           tokens: Annotated[Optional[str], typer.Option("--tokens", help="Comma-separated token ids.")] = None,
           seq_len: Annotated[int, typer.Option("--seq-len", help="Random tokens when --tokens is not given.")] = 32,
           seed: Annotated[int, typer.Option("--seed")] = 0,
           tol: Annotated[Optional[str], typer.Option("--tol", help="Override: 1e-3 or kl=..,top1=..,cosine=..,max_abs=..")] = None,
           layers: Annotated[Optional[int], typer.Option("--layers", help="Compare hidden states after N layers.")] = None,
           mtp: Annotated[bool, typer.Option("--mtp", help="Also compare MTP-layer outputs.")] = False,
           logits_only: Annotated[bool, typer.Option("--logits-only", help="Only the logits pass.")] = False,
           weights_only: Annotated[bool, typer.Option("--weights-only", help="Only the weights pass.")] = False,
           as_json: JsonOpt = False):
    """Judge B against A: every weight, every expert, the logits (exit 0 pass, 1 fail)."""
    from ..api import verify as run
    if seq_len < 1:
        raise BadInputError("--seq-len must be >= 1", fix="e.g. --seq-len 32")
    if logits_only and weights_only:
        raise BadInputError("--logits-only and --weights-only exclude each other", fix="give at most one")
    rep = run(a, b, tokens=parse_tokens(tokens), seq_len=seq_len, seed=seed, tol=parse_tol(tol), layers=layers,
              mtp=mtp, weights=not logits_only, logits=not weights_only)
    if as_json:
        emit_json(rep.to_dict())
    else:
        _render(rep)
    if not rep.passed:
        raise typer.Exit(1)


def _render(rep) -> None:
    from rich.table import Table
    if rep.b is None:
        t = Table("field", "value", title=f"reference summary of {rep.a}")
        for k, v in rep.summary.items():
            t.add_row(k, str(v))
        out.print(t)
        if not rep.passed:
            out.print("FAIL: the logits hold NaN or Inf values (a damaged or mis-converted weight)")
        return
    t = Table("pass", "result", "detail", title=f"{rep.a} vs {rep.b} ({rep.edge_class})")
    for row in rep.rows():
        t.add_row(*row)
    out.print(t)
    out.print(f"{'PASS' if rep.passed else 'FAIL'}" + (f": {rep.failure}" if rep.failure else ""))
