"""Usage errors (unknown option or command, missing or bad argument) as one line, like every
other error, instead of click's usage text and rich's boxed panel."""

from __future__ import annotations

import difflib
import re

import typer

try:  # typer 0.2x vendors its own click as typer._click; older typer uses click itself
    from typer._click import exceptions as _exc
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _exc

# The framework's exception types, under names of our own (see ling_convert/cli/__init__.py).
UsageError, NoArgsIsHelpError = _exc.UsageError, _exc.NoArgsIsHelpError
Abort = typer.Abort
PROG = "ling-convert"


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _help_hint(ctx) -> str:
    path = ctx.command_path if ctx is not None else PROG
    return f" (see `{path} --help`)"


def usage_line(e: UsageError) -> str:
    """`no such option --too (did you mean --to?)`: the message, a suggestion or where help is."""
    ctx = e.ctx
    if isinstance(e, _exc.NoSuchOption):
        hint = _did_you_mean(e.option_name, e.possibilities or []) or _help_hint(ctx)
        return f"no such option {e.option_name}{hint}"
    if isinstance(e, _exc.MissingParameter) and e.param is not None:
        kind = e.param_type or e.param.param_type_name
        name = e.param.opts[0] if e.param.param_type_name == "option" else e.param.name.upper()
        return f"missing {kind} {name}{_help_hint(ctx)}"
    m = re.match(r"No such command '([^']+)'", e.message)
    if m and hasattr(getattr(ctx, "command", None), "list_commands"):
        hint = _did_you_mean(m.group(1), ctx.command.list_commands(ctx)) or _help_hint(ctx)
        return f"no such command {m.group(1)}{hint}"
    msg = " ".join(e.format_message().split())
    return f"{msg[:1].lower()}{msg[1:].rstrip('.')}{_help_hint(ctx)}"
