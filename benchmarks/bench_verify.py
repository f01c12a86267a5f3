"""`verify` cost: peak memory follows one layer, not the model; the weights pass reads each byte once.

Rows at L and 4L layers: `verify A` alone (reference summary), the full three-pass `verify A B`,
`verify A B --weights-only`, `cat` of both checkpoints' files (page cache warm for all), and the
start-up of a `ling-convert` command (python + imports) that every row pays once.

    python benchmarks/bench_verify.py --size-gb 0.25 --scale 4 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import STARTUP, dir_bytes, ling, print_table, run_measured, settle, synthetic_config, write_synthetic


def bench(size_gb: float, work: Path, repeat: int) -> dict:
    cfg = synthetic_config(size_gb)
    a = write_synthetic(work / f"a-{size_gb}", cfg, "safetensors")
    b = write_synthetic(work / f"b-{size_gb}", cfg, "bin")
    files = [str(f) for d in (a, b) for f in sorted(d.rglob("*")) if f.is_file()]
    row = {"layers": cfg["num_hidden_layers"], "model_gb": dir_bytes(a) / 1e9,
           "layer_mb": dir_bytes(a) / cfg["num_hidden_layers"] / 1e6}
    for key, cmd in (("cat_s", ["cat", *files]), ("startup_s", STARTUP),
                     ("single_s", ling("verify", str(a), "--seq-len", "16")),
                     ("weights_s", ling("verify", str(a), str(b), "--weights-only")),
                     ("full_s", ling("verify", str(a), str(b), "--seq-len", "16"))):
        runs = []
        for _ in range(repeat):        # best of N: the shared machine's load swings a single run by 2-3x
            settle(a)
            settle(b)
            runs.append(run_measured(cmd))
        row[key] = min(r["wall"] for r in runs)
        if key not in ("cat_s", "startup_s"):
            row[key.replace("_s", "_rss_mb")] = max(r["rss_mb"] for r in runs)
    row["weights/cat"] = row["weights_s"] / row["cat_s"]
    # The machine's python start + imports is paid once per command whatever the size; net of it:
    row["net_weights/cat"] = (row["weights_s"] - row["startup_s"]) / row["cat_s"]
    row["full/cat"] = row["full_s"] / row["cat_s"]
    shutil.rmtree(a)
    shutil.rmtree(b)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gb", type=float, default=0.25)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    a.workdir.mkdir(exist_ok=True)
    rows = [bench(s, a.workdir, a.repeat) for s in (a.size_gb, a.size_gb * a.scale)]
    print_table("verify (layer-streamed reference; three passes; bf16 safetensors vs bin of the same weights)", rows,
                ["layers", "model_gb", "layer_mb", "cat_s", "startup_s", "single_s", "single_rss_mb", "weights_s",
                 "weights_rss_mb", "weights/cat", "net_weights/cat", "full_s", "full_rss_mb", "full/cat"])
    print(f"\nfull verify peak RSS growth for {a.scale}x the layers: "
          f"{rows[1]['full_rss_mb'] / rows[0]['full_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
