"""Peak memory of `verify` follows one layer, not the model: RSS at L and 4L layers.

    python benchmarks/bench_verify.py --size-gb 1 --scale 4
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import dir_bytes, ling, print_table, run_measured, synthetic_config, write_synthetic


def bench(size_gb: float, work: Path) -> dict:
    cfg = synthetic_config(size_gb)
    src = write_synthetic(work / f"st-{size_gb}", cfg, "safetensors")
    per_layer = dir_bytes(src) / cfg["num_hidden_layers"]
    r = run_measured(ling("verify", str(src), "--seq-len", "16"))
    rows = {"layers": cfg["num_hidden_layers"], "model_gb": dir_bytes(src) / 1e9, "layer_mb": per_layer / 1e6,
            "verify_s": r["wall"], "peak_rss_mb": r["rss_mb"]}
    shutil.rmtree(src)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    a = ap.parse_args()
    a.workdir.mkdir(exist_ok=True)
    rows = [bench(s, a.workdir) for s in (a.size_gb, a.size_gb * a.scale)]
    print_table("verify (single checkpoint, layer-streamed reference)", rows,
                ["layers", "model_gb", "layer_mb", "verify_s", "peak_rss_mb"])
    print(f"\npeak RSS growth for {a.scale}x the layers: {rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
