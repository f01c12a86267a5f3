"""dcp2st on synthetic Megatron-style DCPs at two sizes (x and 4x) vs `cp` and torch's dcp_to_torch_save.

Each measurement runs in its own child process (peak RSS from wait4 of that child):
  cp            `cp -r` of the DCP directory (plain, and with the copies synced: we fsync)
  ours          `ling-convert dcp2st SRC OUT` (one process), and with `--workers 2` (wall only)
  dcp_to_torch  torch.distributed.checkpoint.format_utils.dcp_to_torch_save(SRC, out.pt)
  torch_import  `python -c "import torch"`: the RSS floor every Python child starts from
The input is written once through ling-convert's own st2dcp (experts as one chunk each, like
expert parallelism) and read from the page cache by every contestant (`warm`).

    python benchmarks/bench_dcp.py --size-gb 0.5          # 0.5 GB and 2 GB
"""

from __future__ import annotations

import argparse
import shutil
import sys
import zlib
from pathlib import Path

import torch

from common import STARTUP, cp_baseline, dir_bytes, ling, print_table, run_measured, synthetic_config, warm

from ling_convert.converters import apply_route, plan_route
from ling_convert.formats import get_format
from ling_convert.core.source import Source, TensorInfo
from ling_convert.testing import tensor_shapes, write_tokenizer
from ling_convert.formats.writer import WriteOptions

_TO_TORCH = ("import sys\nfrom torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
             "dcp_to_torch_save(sys.argv[1], sys.argv[2])\n")


def _thunk(name: str, shape, dtype):
    def load():
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        return (torch.rand(shape, generator=g) - 0.5).to(dtype)
    return load


def write_synthetic_dcp(out: Path, size_gb: float) -> Path:
    """A Megatron torch_dist DCP of about `size_gb` GB, generated tensor by tensor."""
    cfg = synthetic_config(size_gb)
    infos, thunks = {}, {}
    for name, shape in tensor_shapes(cfg).items():
        dtype = torch.float32 if name.endswith("expert_bias") else torch.bfloat16
        infos[name], thunks[name] = TensorInfo(tuple(shape), dtype), _thunk(name, shape, dtype)
    src = Source(path=out.with_name(out.name + ".synthetic"),   # generated: reads no file
                  format="safetensors", config=cfg, infos=infos, thunks=thunks)
    lazy = apply_route(src, plan_route("safetensors", "dcp"))
    shutil.rmtree(out, ignore_errors=True)
    get_format("dcp").write(lazy, out, WriteOptions(max_shard_size="2GB"))
    write_tokenizer(out, cfg)
    return out


def _timed(cmd: list[str], out: Path) -> dict:
    out.unlink() if out.is_file() else shutil.rmtree(out, ignore_errors=True)
    r = run_measured(cmd)
    out.unlink() if out.is_file() else shutil.rmtree(out, ignore_errors=True)
    return r


def bench(size_gb: float, work: Path, floor_mb: float, startup_s: float) -> dict:
    src = write_synthetic_dcp(work / f"dcp-{size_gb}", size_gb)
    nbytes = dir_bytes(src)
    warm(src)
    base = cp_baseline(src, work / "cp-out")
    ours = _timed(ling("dcp2st", str(src), str(work / "st-out")), work / "st-out")
    ours2 = _timed(ling("dcp2st", str(src), str(work / "st-out"), "--workers", "2"), work / "st-out")
    peer = _timed([sys.executable, "-c", _TO_TORCH, str(src), str(work / "out.pt")], work / "out.pt")
    shutil.rmtree(src)
    return {"size_gb": nbytes / 1e9, "cp_s": base["cp"], "cp_sync_s": base["cp_sync"],
            "ours_s": ours["wall"], "ours_vs_cp": ours["wall"] / base["cp"],
            "ours_net_vs_cp_sync": (ours["wall"] - startup_s) / base["cp_sync"],
            "ours_vs_cp_sync": ours["wall"] / base["cp_sync"], "ours_w2_s": ours2["wall"],
            "ours_rss_mb": ours["rss_mb"],
            "peer_s": peer["wall"], "peer_vs_cp": peer["wall"] / base["cp"], "peer_rss_mb": peer["rss_mb"],
            "ours_above_floor_mb": ours["rss_mb"] - floor_mb, "peer_above_floor_mb": peer["rss_mb"] - floor_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=0.5, help="smaller size; the larger is --scale times it")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=Path("bench-work-dcp"))
    a = ap.parse_args()
    a.workdir.mkdir(exist_ok=True)
    floor = run_measured([sys.executable, "-c", "import torch"])["rss_mb"]
    startup = min(run_measured(STARTUP)["wall"] for _ in range(2))
    rows = [bench(s, a.workdir, floor, startup) for s in (a.size_gb, a.size_gb * a.scale)]
    print(f"python + torch import alone: {floor:.0f} MB peak RSS; interpreter + torch + library import (start-up only): "
          f"{startup:.2f} s (subtracted in ours_net_vs_cp_sync)")
    print_table("dcp2st (Megatron torch_dist DCP -> HF safetensors) vs cp", rows,
                ["size_gb", "cp_s", "cp_sync_s", "ours_s", "ours_vs_cp", "ours_vs_cp_sync", "ours_net_vs_cp_sync",
                 "ours_w2_s"])
    print_table("peak RSS (MB): ours vs torch dcp_to_torch_save", rows,
                ["size_gb", "ours_rss_mb", "peer_rss_mb", "ours_above_floor_mb",
                 "peer_above_floor_mb", "peer_s", "peer_vs_cp"])
    grow = lambda k: rows[1][k] / max(rows[0][k], 1e-9)  # noqa: E731
    print(f"\n{a.scale}x the checkpoint: our RSS above the torch floor grows {grow('ours_above_floor_mb'):.2f}x, "
          f"dcp_to_torch_save's {grow('peer_above_floor_mb'):.2f}x")


if __name__ == "__main__":
    main()
