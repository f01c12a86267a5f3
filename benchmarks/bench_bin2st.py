"""bin -> safetensors on synthetic Ling-shaped checkpoints at two sizes (x and 4x).

Prints wall time as a ratio to `cp` of the same bytes (plain, and with the copies
synced, since ling-convert fsyncs what it writes) and the converter's peak RSS.

    python benchmarks/bench_bin2st.py --size-gb 2 --scale 4 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import cp_baseline, dir_bytes, ling, print_table, run_measured, settle, synthetic_config, write_synthetic


def bench(size_gb: float, work: Path, repeat: int = 1) -> dict:
    """Fastest of `repeat` rounds (the machine may be shared); each round runs `cp` then ours, each
    from a settled start, so a slow spell hits both alike."""
    src = write_synthetic(work / f"bin-{size_gb}", synthetic_config(size_gb), "bin")
    nbytes = dir_bytes(src)
    out, cps, runs = work / "st-out", [], []
    for _ in range(repeat):
        cps.append(cp_baseline(src, work / "cp-out"))
        shutil.rmtree(out, ignore_errors=True)
        settle(src)
        runs.append(run_measured(ling("bin2st", str(src), str(out))))
        shutil.rmtree(out)        # before the next round's cp: at most one copy besides the source
    base = {"cp": min(r["cp"] for r in cps), "cp_sync": min(r["cp_sync"] for r in cps)}
    ours = min(runs, key=lambda r: r["wall"])
    shutil.rmtree(src)
    return {"size_gb": nbytes / 1e9, "ours_s": ours["wall"], "cp_s": base["cp"], "cp_sync_s": base["cp_sync"],
            "vs_cp": ours["wall"] / base["cp"], "vs_cp_sync": ours["wall"] / base["cp_sync"],
            "GB_per_s": nbytes / 1e9 / ours["wall"], "peak_rss_mb": ours["rss_mb"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    ap.add_argument("--repeat", type=int, default=1, help="rounds of cp and ours in turn; the fastest of each is kept")
    a = ap.parse_args()
    a.workdir.mkdir(exist_ok=True)
    rows = [bench(s, a.workdir, a.repeat) for s in (a.size_gb, a.size_gb * a.scale)]
    print_table("bin2st (.bin -> safetensors)", rows,
                ["size_gb", "ours_s", "cp_s", "cp_sync_s", "vs_cp", "vs_cp_sync", "GB_per_s", "peak_rss_mb"])
    flat = rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    print(f"\npeak RSS growth for {a.scale}x the model: {flat:.2f}x")


if __name__ == "__main__":
    main()
