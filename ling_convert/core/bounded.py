"""Bounded reading of untrusted files: regular files only, JSON capped by size, depth and digits.

Every reader opens its inputs through here, so a FIFO never blocks, a link to /dev/zero never
grows memory and a hostile JSON document never reaches Python's recursion limit.

    >>> parse_json('{"a": [1, 2]}', "x.json")
    {'a': [1, 2]}
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import BadInputError, CorruptFileError

MAX_CONFIG = 16 << 20       # config.json, tokenizer_config, metadata.json, rank tables
MAX_INDEX = 256 << 20       # a weight_map of 10^6 tensors is ~100 MB
MAX_DEPTH = 64              # nesting of any JSON document we read (a real config is < 6 deep)
MAX_DIGITS = 40             # an integer literal longer than this is no count or offset we use
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
          stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """stat `path` (following links) and refuse anything but a regular file, before it is opened."""
    try:
        st = os.stat(path)
    except ValueError:       # a NUL byte in the name
        raise BadInputError(f"{what} name holds a NUL byte", path=repr(str(path)),
                            fix="rename the file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadInputError(f"{what} is a symlink loop", path=path, fix="point the link at a real file") from None
        if e.errno == errno.ENOENT:
            raise BadInputError(f"{what} does not exist", path=path, fix="check the path") from None
        raise BadInputError(f"cannot stat {what} ({e.strerror})", path=path, fix="check the path") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise BadInputError(f"{what} is {kind}, not a regular file; refused without opening it", path=path,
                            fix="replace it with the real file")
    return st


def exists(path: str | Path) -> bool:
    """Like Path.exists, but a dangling link, a link loop or a FIFO counts as present (so it is refused by
    `regular_file` with its reason, instead of being skipped as absent)."""
    try:
        os.lstat(path)
        return True
    except (OSError, ValueError):
        return False


def read_bytes(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The whole file, refused by size before reading when it is larger than `limit` bytes."""
    st = regular_file(path, what)
    if st.st_size > limit:
        raise CorruptFileError(f"{what} is {st.st_size} bytes, more than the {limit}-byte limit for it", path=path,
                               fix="this is not a real checkpoint file; replace it")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):       # swapped after the stat
            raise BadInputError(f"{what} is not a regular file", path=path, fix="replace it with the real file")
        data = os.read(fd, limit + 1) if limit else b""
        while len(data) <= limit:
            more = os.read(fd, limit + 1 - len(data))
            if not more:
                break
            data += more
    finally:
        os.close(fd)
    if len(data) > limit:
        raise CorruptFileError(f"{what} grew past {limit} bytes while being read", path=path,
                               fix="replace it with the real file")
    return data


class _TooBig(ValueError):
    pass


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise _TooBig(f"an integer of {len(text)} digits (at most {MAX_DIGITS} are accepted)")
    return int(text)


def parse_json(text: str | bytes, where, *, pairs_hook=None, max_depth: int | None = MAX_DEPTH,
               digits: bool = True) -> Any:
    """json.loads with integers capped at MAX_DIGITS digits and nesting at `max_depth`; every
    failure is a CorruptFileError naming `where`. `digits=False` leaves integers to Python's own
    4300-digit cap (a large header whose caller range-checks every integer saves a call per integer)."""
    fix = "repair or replace the file"
    try:
        doc = json.loads(text, parse_int=_int if digits else None, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise CorruptFileError("JSON nested too deeply to be a checkpoint file", path=where, fix=fix) from None
    except _TooBig as e:
        raise CorruptFileError(f"JSON holds {e}", path=where, fix=fix) from None
    except UnicodeDecodeError:
        raise CorruptFileError("not valid UTF-8", path=where, fix=fix) from None
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"not valid JSON ({e.msg} at line {e.lineno})", path=where, fix=fix) from None
    except ValueError as e:      # a float or constant json could not convert
        raise CorruptFileError(f"not valid JSON ({str(e)[:120]})", path=where, fix=fix) from None
    if max_depth is not None and depth(doc, max_depth) > max_depth:
        raise CorruptFileError(f"JSON nested more than {max_depth} levels deep", path=where, fix=fix)
    return doc


def depth(doc: Any, stop: int) -> int:
    """Nesting depth of lists/dicts in `doc`, counted iteratively (stops once past `stop`)."""
    best, todo = 0, [(doc, 1)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, (dict, list)):
            best = max(best, d)
            if best > stop:
                return best
            todo.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return best


def load_json(path: str | Path, what: str = "file", *, limit: int = MAX_CONFIG, max_depth: int | None = MAX_DEPTH,
              pairs_hook=None) -> Any:
    """Read and parse a JSON file with every bound above: `load_json(p, "config.json")`."""
    return parse_json(read_bytes(path, limit, what), path, pairs_hook=pairs_hook, max_depth=max_depth)


_SCALARS = (bool, int, float, str, type(None))


def short(value: Any, limit: int = 60) -> str:
    """A bounded description of an untrusted value for an error message. Never `repr` of a whole
    structure: a pickled DAG of shared lists prints as 2**depth items."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        text = f"an integer of {value.bit_length()} bits"
    elif isinstance(value, str):
        text = repr(value[:limit])
    elif isinstance(value, _SCALARS):
        text = repr(value)
    elif isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, _SCALARS) for v in value):
        text = "[" + ", ".join(short(v, 24) for v in value) + "]"
    else:
        size = f" of {len(value)} items" if isinstance(value, (list, tuple, dict, set)) else ""
        text = f"a {type(value).__name__[:40]}{size}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Opcodes that build an object (call a class or function, set state): their byte count bounds how
# many objects a pickle can make, found at C speed without walking it.
_BUILDS = (b"R", b"b", b"\x81", b"\x92", b"o", b"i")


def check_pickle(data: bytes, where, *, max_builds: int, what: str = "pickle") -> None:
    """Refuse a pickle that could build more than `max_builds` objects, before it is unpickled."""
    builds = sum(data.count(op) for op in _BUILDS)
    if builds > max_builds:
        raise CorruptFileError(f"{what} could build up to {builds} objects (the limit is {max_builds})", path=where,
                               fix="this is not a checkpoint this tool writes or reads; get it from its source")
