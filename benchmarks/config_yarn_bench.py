"""Timing and peak RSS of `ling-convert yarn --out` on a GGUF file and an HF dir, vs `cp` of the same bytes.

`yarn` only edits metadata, so the cost is the copy: GGUF tensors go file-to-file
(copy_file_range) and are then re-read once to verify them; HF dirs are copied file by file
through the staged output. Peak RSS is measured in a fresh child per run, at two sizes (x, 4x),
and should not grow with the model.

    python benchmarks/config_yarn_bench.py --size-mb 256 --workdir bench-work
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
from ling_convert.converters import config_ops
t = time.perf_counter()
config_ops.yarn(sys.argv[1], factor=4, out=sys.argv[2])
print(json.dumps({"s": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
BASELINE = "import resource, ling_convert.converters.config_ops; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def make_gguf(path: Path, total_mb: int, tensor_mb: int = 32) -> None:
    """A bailingmoe2 GGUF of ~total_mb of F16 tensors, written one tensor at a time."""
    import gguf
    w = gguf.GGUFWriter(path, "bailingmoe2")
    w.add_context_length(32768)
    rows = tensor_mb * (1 << 20) // (2 * 4096)
    n = max(1, total_mb // tensor_mb)
    for i in range(n):
        w.add_tensor_info(f"blk.{i}.ffn_up.weight", (rows, 4096), np.dtype(np.float16), rows * 4096 * 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for _ in range(n):
        w.write_tensor_data(rng.standard_normal((rows, 4096), dtype=np.float32).astype(np.float16))
    w.close()


def make_hf(path: Path, total_mb: int) -> None:
    """An HF-style dir: the tiny config plus ~total_mb of safetensors shards (bytes only matter here)."""
    import torch
    from safetensors.torch import save_file
    from ling_convert.testing import tiny_config
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(tiny_config("ling-mini-2"), indent=2))
    for i in range(max(1, total_mb // 64)):
        save_file({f"t{i}": torch.zeros(64 << 18, dtype=torch.float32)}, str(path / f"model-{i:05d}.safetensors"))


def timed_cp(src: Path, dst: Path, sync: bool) -> float:
    """`cp -r`, optionally followed by `sync` of the copy (yarn fsyncs every file it writes)."""
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    if sync:
        files = [dst] if dst.is_file() else sorted(p for p in dst.rglob("*") if p.is_file())
        subprocess.run(["sync", *map(str, files)], check=True)
    return time.perf_counter() - t


def run_yarn(src: Path, dst: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(dst)], check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=256, help="the x size; 4x is also run")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    args = ap.parse_args()
    base = float(subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                                check=True).stdout)
    print(f"baseline RSS (python + ling_convert imports): {base:.0f} MB")
    print(f"{'input':6} {'MB':>6} {'cp s':>7} {'cp+sync s':>9} {'yarn s':>7} {'vs cp':>6} {'vs cp+sync':>10} "
          f"{'peak RSS MB':>12} {'over baseline':>14}")
    for mb in (args.size_mb, 4 * args.size_mb):
        for kind, make in (("gguf", make_gguf), ("hf", make_hf)):
            work = args.workdir / f"yarn-{kind}-{mb}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            src = work / ("m.gguf" if kind == "gguf" else "m")
            make(src, mb)
            cp_s = timed_cp(src, work / "cp", sync=False)
            cps_s = timed_cp(src, work / "cps", sync=True)
            r = run_yarn(src, work / ("y.gguf" if kind == "gguf" else "y"))
            print(f"{kind:6} {mb:6d} {cp_s:7.2f} {cps_s:9.2f} {r['s']:7.2f} {r['s'] / cp_s:6.2f} "
                  f"{r['s'] / cps_s:10.2f} {r['rss_mb']:12.0f} {r['rss_mb'] - base:14.0f}")
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
