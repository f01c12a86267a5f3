"""`ling-convert` command line: a thin typer shell over `ling_convert.api`.

Command groups live one per module in this package and register on `app`.
Errors from the library are mapped here, once, to a one-line message and an
exit code (0 ok, 1 verification failed, 2 bad input or usage, 3 internal error).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated

import typer

from ..core.deferred import defer
from ..core.heap import fewer_gc_passes, return_big_buffers_to_os
from ..core.errors import LingConvertError
from ..core.plugins import load_modules
from .usage import PROG, Abort, NoArgsIsHelpError, UsageError, usage_line

# Plain help text (rich_markup_mode=None): rendering help through rich costs ~0.1 s of start-up.
app = typer.Typer(name="ling-convert", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]},
                  help="Convert, quantize, verify and sync Ling (BailingMoe) checkpoints.")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__
        print(f"ling-convert {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False):
    """Convert, quantize, verify and sync Ling (BailingMoe) checkpoints."""


# Command modules; each defines its commands on `app` at import time.
_COMMANDS = ("core", "verify_cmd", "fp8_cmd", "dcp_cmd", "mindie_cmd", "gguf_cmd", "hybrid_cmd",
             "config_cmd", "hub_cmd")
DEBUG_ENV = "LING_CONVERT_DEBUG"
INTERRUPTED = "interrupted; finished shards are kept, rerun the same command with --resume to continue"


def _load_commands() -> None:
    load_modules(__name__, _COMMANDS)


def _fail(line: str, code: int) -> int:
    hint = "" if os.environ.get(DEBUG_ENV) else f" [set {DEBUG_ENV}=1 for the traceback]" if code == 3 else ""
    print(f"error: {line}{hint}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns (and exits with) the process exit code."""
    return_big_buffers_to_os()
    fewer_gc_passes()
    defer("torch", "nn", "nn.functional")   # imported on first use: header-only commands never pay for it
    _load_commands()
    with warnings.catch_warnings(record=True) as caught:
        code = _run(argv)
    if code in (0, 1):
        # Warnings no command rendered itself: one line each after the result, never Python's
        # two-line "file:line: Category" form; a failed run shows only its error line.
        for msg in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
            print(f"warning: {msg}", file=sys.stderr)
    if argv is None:
        sys.exit(code)
    return code


def _run(argv: list[str] | None) -> int:
    debug = bool(os.environ.get(DEBUG_ENV))
    try:
        # Not standalone: usage errors come back as exceptions, to be printed as one line.
        rv = app(args=argv, prog_name=PROG, standalone_mode=False)
        code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0   # an Exit's code
        if code == 130:  # click turned Ctrl-C into Exit(130) after the command unwound
            code = _fail(INTERRUPTED, 130)
    except NoArgsIsHelpError as e:
        print(e.ctx.get_help())
        code = 0
    except UsageError as e:
        code = _fail(usage_line(e), 2)
    except Abort:
        code = _fail(INTERRUPTED, 130)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except LingConvertError as e:
        if debug:
            import traceback
            traceback.print_exc()
        code = _fail(e.one_line(), e.exit_code)
    except KeyboardInterrupt:
        code = _fail(INTERRUPTED, 130)
    except MemoryError:
        code = _fail("out of memory", 3)
    except OSError as e:
        if debug:
            import traceback
            traceback.print_exc()
        code = _fail(" ".join(f"{e.filename or ''}: {e.strerror or e}".split()), 2)
    except Exception as e:  # a bug: still one line, traceback on request
        if debug:
            import traceback
            traceback.print_exc()
        code = _fail(" ".join(f"internal error: {type(e).__name__}: {e}".split())[:500], 3)
    return code
