"""safetensors -> GGUF (`to-gguf`) on synthetic Ling-mini-2.0-shaped (v2) checkpoints at x and 4x.

Prints wall time as a ratio to `cp` of the same bytes (plain, and with the copies
synced, since ling-convert fsyncs what it writes) and the converter's own peak RSS
(child getrusage). The 4x model has 4x the layers with the same tensor sizes, so a
streaming writer keeps the same peak RSS.

    python benchmarks/bench_gguf.py --size-gb 0.5 --outtypes bf16,q8_0
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import (cp_baseline, dir_bytes, ling, print_table, run_measured, synthetic_config, warm,
                    write_synthetic)


def bench(size_gb: float, outtypes: list[str], work: Path) -> list[dict]:
    src = write_synthetic(work / f"st-{size_gb}", synthetic_config(size_gb), "safetensors")
    nbytes = dir_bytes(src)
    warm(src)
    base = cp_baseline(src, work / "cp-out")
    rows = []
    for outtype in outtypes:
        out = work / f"out-{outtype}.gguf"
        out.unlink(missing_ok=True)
        ours = run_measured(ling("to-gguf", str(src), str(out), "--outtype", outtype, "--force"))
        gguf_bytes = out.stat().st_size
        out.unlink()
        Path(str(out) + ".ling-convert.json").unlink(missing_ok=True)
        rows.append({"size_gb": nbytes / 1e9, "outtype": outtype, "gguf_gb": gguf_bytes / 1e9,
                     "ours_s": ours["wall"], "cp_s": base["cp"], "cp_sync_s": base["cp_sync"],
                     "vs_cp": ours["wall"] / base["cp"], "vs_cp_sync": ours["wall"] / base["cp_sync"],
                     "GB_per_s": nbytes / 1e9 / ours["wall"], "peak_rss_mb": ours["rss_mb"]})
    shutil.rmtree(src)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--outtypes", default="bf16", help="comma-separated --outtype values to time")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    a = ap.parse_args()
    a.workdir.mkdir(exist_ok=True)
    outtypes = a.outtypes.split(",")
    rows = [r for s in (a.size_gb, a.size_gb * a.scale) for r in bench(s, outtypes, a.workdir)]
    print_table("to-gguf (safetensors bf16 -> GGUF, bailingmoe2)", rows,
                ["size_gb", "outtype", "gguf_gb", "ours_s", "cp_s", "cp_sync_s", "vs_cp", "vs_cp_sync",
                 "GB_per_s", "peak_rss_mb"])
    for t in outtypes:
        small, big = (r for r in rows if r["outtype"] == t)
        print(f"\npeak RSS growth for {a.scale}x the model ({t}): {big['peak_rss_mb'] / small['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
