"""Kill/resume table for the closing note: every edge x N SIGKILLs (default 10), then --resume.

    python tests/robustness/kill_report.py [--trials 10] [--seed 1234] [--edges bin2st,dcp2st]

Prints "edge | trials | killed mid-run | identical after --resume" (markdown) and exits 1 on any
problem. See killpoints.py for what a trial checks.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]

from robustness.forkrun import Zygote  # noqa: E402
from robustness.killpoints import EDGES, run_edge, table  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--edges", default=",".join(EDGES), help="comma-separated edge names")
    args = ap.parse_args()
    reports = []
    with tempfile.TemporaryDirectory(prefix="ling-kill-") as tmp:
        z = Zygote(Path(tmp) / "zygote")
        try:
            for name in args.edges.split(","):
                t0 = time.perf_counter()
                rep = run_edge(z, EDGES[name], Path(tmp), args.trials, seed=args.seed)
                print(f"# {name}: {time.perf_counter() - t0:.1f} s, {rep.reused} file(s) reused by --resume",
                      file=sys.stderr)
                for p in rep.problems:
                    print(f"#   problem: {p}", file=sys.stderr)
                reports.append(rep)
        finally:
            z.close()
    print(table(reports))
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
