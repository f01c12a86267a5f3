"""Metadata-only paths at real published shapes: Ling-mini-2.0 and Ling-1T, at 1x and 4x tensors.

The checkpoints are header-true and data-sparse (ling_convert/testing_shapes.py): real names,
shapes, dtypes and shard counts, data left as file holes, so Ling-1T's 2.1 TB take a few MB.
Each command runs in a child process (wall time includes start-up; peak RSS via wait4).
Goal (issue 20): linear in the tensor count; inspect and every --dry-run on Ling-1T under 5 s.
4x multiplies the layer count (Ling-1T 4x: 249,296 tensors in 1,684 shards). Besides wall time
the child's CPU seconds (user + sys) are shown: on a shared, loaded machine they vary far less.

    python benchmarks/bench_shapes.py --scale 4
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
from pathlib import Path

from common import ling, print_table, run_measured
from ling_convert.testing_shapes import published_tensor_count, write_sparse

COMMANDS = {
    "inspect": lambda s, o: ["inspect", s, "--json"],
    "dry fp8": lambda s, o: ["convert", s, o, "--to", "fp8", "--dry-run"],
    "dry gguf": lambda s, o: ["convert", s, o, "--to", "gguf", "--dry-run"],
    "dry dcp": lambda s, o: ["st2dcp", s, o, "--dry-run"],
    "dry st": lambda s, o: ["convert", s, o, "--to", "safetensors", "--dry-run"],
}


def _timed(cmd: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s of the child, peak RSS MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = run_measured(cmd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r["wall"], cpu, r["rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--models", default="ling-1t", help="comma-separated, from testing_shapes.PUBLISHED")
    ap.add_argument("--workdir", type=Path, default=Path("../bench-work"))
    ap.add_argument("--size-gb", type=float, default=None, help="ignored (benchmarks/run passes it to every script)")
    a = ap.parse_args()
    root = a.workdir / "shapes"
    rows = []
    for model in a.models.split(","):
        for scale in sorted({1, a.scale}):
            src = write_sparse(root / f"{model}-x{scale}", model, scale=scale)
            row = {"model": model, "scale": f"{scale}x", "tensors": published_tensor_count(model, scale)}
            for label, argv in COMMANDS.items():
                wall, cpu, rss = _timed(ling(*argv(str(src), str(root / "out"))))
                row[label] = f"{wall:.1f} ({cpu:.1f})"
                row["peak MB"] = max(row.get("peak MB", 0), rss)
            rows.append(row)
            shutil.rmtree(src)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print_table(f"Metadata paths at published shapes (wall s incl. start-up (CPU s); load avg {load}, "
                f"{os.cpu_count()} cores)", rows, ["model", "scale", "tensors", *COMMANDS, "peak MB"])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
