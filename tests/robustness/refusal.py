"""What every refusal in the robustness suite must look like, and how sources are proven untouched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SECONDS = 60        # a refusal comes at once; generous for a loaded CI machine
MEMORY_MB = 1024    # peak RSS of the run (the forked CLI's shared pages included)


def tree_hash(root: Path) -> dict[str, str]:
    """relpath -> sha256 (files) or "-> target" (links) of everything under `root`, links not followed."""
    root = Path(root)
    if root.is_symlink() or root.is_file():
        return {root.name: _entry(root)}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            if p.is_symlink() or p.is_file():
                out[str(p.relative_to(root))] = _entry(p)
            else:
                out[str(p.relative_to(root)) + "/"] = "dir"
    return out


def _entry(p: Path) -> str:
    if p.is_symlink():
        return "-> " + os.readlink(p)
    return hashlib.sha256(p.read_bytes()).hexdigest()


def assert_refused(r, elapsed: float, *needles: str) -> None:
    """Exit 2, one line `error: ...` naming what was refused, no traceback, bounded time and memory."""
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert r.rc == 2, (r.rc, r.stderr[-2000:])
    assert len(r.lines) == 1 and r.lines[0].startswith("error: "), r.stderr
    assert "internal error" not in r.lines[0], r.lines[0]
    for n in needles:
        assert str(n) in r.lines[0], (n, r.lines[0])
    assert elapsed < SECONDS, elapsed
    assert r.maxrss_mb < MEMORY_MB, r.maxrss_mb
    if os.environ.get("LING_CONVERT_FIGURES"):   # README figures: one line per refusal
        with open(os.environ["LING_CONVERT_FIGURES"], "a") as f:
            f.write(f"{elapsed:.3f} {r.maxrss_mb:.0f}\n")
