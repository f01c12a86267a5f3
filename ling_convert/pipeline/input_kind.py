"""Say what a source really is when a command is given the wrong kind of input (a path that does
not exist, a safetensors dir given to `bin2st`, a directory given to `from-gguf`, ...)."""

from __future__ import annotations

from pathlib import Path

from ..converters import all_edges
from ..core.errors import BadInputError
from ..formats import all_formats, get_format


def _readers(fmt: str) -> str:
    """The commands whose edge reads `fmt`: "`ling-convert quantize`, `to-gguf` or `st2dcp`"."""
    names = [e.name for e in all_edges() if e.src == fmt]
    if not names:
        return "`ling-convert convert SRC OUT --to FORMAT`"
    names[0] = f"ling-convert {names[0]}"
    quoted = [f"`{n}`" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def check_input_kind(path: str | Path, want: str, to: str | None = None) -> None:
    """Raise BadInputError when `path` is missing or plainly another format than `want`.

    >>> check_input_kind("Ling-lite-st/", "bin", to="safetensors")  # doctest: +SKIP
    BadInputError: Ling-lite-st: already a safetensors checkpoint, nothing to convert
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError("path does not exist", path=path, fix="check the spelling")
    fmt = get_format(want)
    if fmt.detect(path):
        return
    other = next((f for f in all_formats().values() if f.name != want and f.detect(path)), None)
    if other is not None and other.name == to:
        raise BadInputError(f"already a {to} checkpoint, nothing to convert", path=path,
                            fix=f"for another format use {_readers(to)}, or `convert SRC OUT --to FORMAT`")
    if other is not None:
        raise BadInputError(f"this is a {other.name} checkpoint, not {want}", path=path,
                            fix=f"read it with {_readers(other.name)}")
    if want == "gguf" and path.is_dir():   # the only format whose input is a file, not a directory
        found = sorted(p.name for p in path.glob("*.gguf"))[:3]
        raise BadInputError("a directory, not a GGUF file", path=path,
                            fix="pass the .gguf file itself (for split files: any one of them)"
                                + (f", e.g. {path / found[0]}" if found else ""))
    # Otherwise the reader names what is wrong (truncated file, missing .metadata, ...).
