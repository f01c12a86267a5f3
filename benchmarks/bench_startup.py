"""Start-up cost: the CLI's `--help`/`--version` next to a bare interpreter, torch's import, and a
conversion's fixed cost (a whole `ling-convert` run on a tiny model minus the same conversion
timed inside an already warm process). Minimum of N runs each; markdown on stdout.

    python benchmarks/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def best_wall(cmd: list[str], runs: int, before=None) -> float:
    best = float("inf")
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=ENV, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def best_in_process(fn, runs: int, before) -> float:
    before()
    fn()                                   # warm: imports, page cache, first-call caches
    best = float("inf")
    for _ in range(runs):
        before()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def conversions(work: Path, runs: int) -> list[tuple[str, float, float]]:
    sys.path.insert(0, str(REPO))
    from ling_convert import api
    from ling_convert.testing import write_tiny
    src_bin = write_tiny(work / "bin", "ling-lite", fmt="bin", shards=2)
    src_st = write_tiny(work / "st", "ling-lite", fmt="safetensors", shards=2)
    out = work / "out"
    clear = lambda: shutil.rmtree(out, ignore_errors=True)  # noqa: E731
    rows = []
    for name, cli, fn in (
        ("bin2st", ["bin2st", str(src_bin), str(out)], lambda: api.convert(src_bin, out, to="safetensors")),
        ("quantize", ["quantize", str(src_st), str(out)], lambda: api.quantize_checkpoint(src_st, out)),
    ):
        wall = best_wall([sys.executable, "-m", "ling_convert", *cli], runs, clear)
        inner = best_in_process(fn, runs, clear)
        rows.append((name, wall, inner))
    return rows


def header_only(work: Path, runs: int) -> None:
    """Commands that read no tensor data: they run without torch (core/deferred.py)."""
    sys.path.insert(0, str(REPO))
    from ling_convert.testing import write_tiny
    st = str(write_tiny(work / "hdr", "ling-mini-2"))
    ling = [sys.executable, "-m", "ling_convert"]
    for label, args in (("formats", ["formats"]), ("inspect (safetensors)", ["inspect", st]),
                        ("config validate", ["config", "validate", st]),
                        ("yarn --dry-run", ["yarn", st, "--factor", "4", "--dry-run"]),
                        ("quantize --dry-run", ["quantize", st, str(work / "q"), "--dry-run"]),
                        ("to-gguf --dry-run", ["to-gguf", st, str(work / "g.gguf"), "--dry-run"])):
        print(f"| `ling-convert {label}` (tiny Ling-mini-2.0) | {best_wall(ling + args, runs):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--heavy-runs", type=int, default=3, help="runs of the lines that import torch")
    args = ap.parse_args()
    py, n = sys.executable, args.runs
    load = os.getloadavg()[0]
    print(f"\n## Start-up (minimum of {n} runs, {args.heavy_runs} for lines that import torch, {os.cpu_count()} cores, load average {load:.1f})\n")
    print("| what | wall s |\n|---|---|")
    heavy = args.heavy_runs
    for label, cmd, k in (("`python -c pass`", [py, "-c", "pass"], n),
                          ("`ling-convert --help`", [py, "-m", "ling_convert", "--help"], n),
                          ("`ling-convert --version`", [py, "-m", "ling_convert", "--version"], n),
                          ("`python -c 'import torch'`", [py, "-c", "import torch"], heavy),
                          ("`python -c 'import ling_convert.api'`", [py, "-c", "import ling_convert.api"], heavy)):
        print(f"| {label} | {best_wall(cmd, k):.3f} |", flush=True)
    with tempfile.TemporaryDirectory(prefix="lc-startup-") as tmp:
        header_only(Path(tmp), n)
        rows = conversions(Path(tmp), heavy)
    print("\n| tiny ling-lite conversion | whole CLI run s | same conversion in a warm process s | fixed cost s |")
    print("|---|---|---|---|")
    for name, wall, inner in rows:
        print(f"| `{name}` | {wall:.3f} | {inner:.3f} | {wall - inner:.3f} |")


if __name__ == "__main__":
    main()
