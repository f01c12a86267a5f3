"""What a run reads is never what it writes: output/source overlap checks, source fingerprints, and
removals that never follow a link.

`check_apart(out, sources)` refuses an output that is a source, lies inside one, or holds one,
compared after resolving symlinks on both sides (`--force` cannot override it). `fingerprint`
identifies the bytes a run read, so `--resume` reuses nothing a changed source would not make.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable

from .errors import OutputIsSourceError

# Bytes hashed per file at each of three fixed places (start, middle, end): a changed model is
# caught even when sizes and mtimes were forged to match, without reading whole shards.
SAMPLE = 1 << 16
MAX_FILES = 100_000   # a source tree larger than this is fingerprinted by its first files (sorted)


def resolved(p: str | Path) -> Path:
    return Path(os.path.realpath(os.path.abspath(p)))


def check_apart(out: str | Path, sources: Iterable[str | Path], *, what: str = "output") -> None:
    """Refuse (exit 2) when `out` and any source overlap: same path, or one inside the other."""
    dst = resolved(out)
    for s in sources:
        src = resolved(s)
        if dst == src:
            why = "is the source"
        elif src in dst.parents:
            why = "lies inside the source"
        elif dst in src.parents:
            why = "contains the source"
        else:
            continue
        shown = f" (through a symlink: {dst})" if dst != Path(os.path.abspath(out)) else ""
        raise OutputIsSourceError(f"{what} {why} {s}{shown}; refused, --force included", path=out,
                                  fix="write to a new path outside the source")


def _files(root: Path) -> list[Path]:
    if not root.is_dir():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))   # caches, staging dirs
        found += [Path(dirpath) / n for n in sorted(filenames)]
        if len(found) >= MAX_FILES:
            break
    return found[:MAX_FILES]


def _sample(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for at in sorted({0, max(size // 2 - SAMPLE // 2, 0), max(size - SAMPLE, 0)}):
            f.seek(at)
            h.update(f.read(SAMPLE))
    return h.hexdigest()


def fingerprint(sources: Iterable[str | Path]) -> str:
    """sha256 over every source file's name, size, mtime_ns and sampled bytes (regular files only)."""
    h = hashlib.sha256()
    for s in sources:
        root = resolved(s)
        for p in _files(root):
            try:
                st = p.stat()
                if not p.is_file():
                    continue
                row = [str(p.relative_to(root)) if p != root else p.name, st.st_size, st.st_mtime_ns,
                       _sample(p, st.st_size)]
            except (OSError, ValueError):
                row = [str(p), "unreadable"]
            h.update(json.dumps(row).encode() + b"\n")
    return h.hexdigest()[:32]


def in_place_target(p: Path, root: Path) -> Path:
    """The file an in-place rewrite of `p` replaces: `p`, or the file a link `p` points to when that lies
    inside the checkpoint directory `root`; a link leading elsewhere is refused (it is not ours to edit)."""
    if not p.is_symlink():
        return p
    real = resolved(p)
    if resolved(root) in real.parents:
        return real
    from .errors import UnsafePathError
    raise UnsafePathError(f"is a symlink to {real}, outside the checkpoint directory; not rewritten in place",
                          path=p, fix="use --out OUT to write a copy, or replace the link with a copy of the file")


def remove(p: Path) -> None:
    """Remove a file, a link (never what it points to) or a directory tree."""
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p)


def unlink_symlinks(root: Path) -> None:
    """Drop every symlink under `root` (a planted link must never be written through)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            if (Path(dirpath) / n).is_symlink():
                (Path(dirpath) / n).unlink()


def same_inode(path: Path, fd: int) -> bool:
    """Does `path` (not followed) still name the file open as `fd`?"""
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
