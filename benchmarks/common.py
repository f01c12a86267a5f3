"""Shared benchmark helpers: synthetic Ling-shaped checkpoints, child-process timing and peak RSS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from ling_convert.testing import tiny_config, tensor_shapes, write_tokenizer
from ling_convert.testing_shapes import save_order


def synthetic_config(size_gb: float, model: str = "ling-mini-2", hidden: int = 2048, experts: int = 16,
                     moe_inter: int = 1024) -> dict:
    """A Ling-shaped config whose bf16 weights total about `size_gb` GB (layers scale with size)."""
    cfg = tiny_config(model, hidden_size=hidden, intermediate_size=2 * moe_inter, moe_intermediate_size=moe_inter,
                      moe_shared_expert_intermediate_size=moe_inter, num_experts=experts, num_attention_heads=16,
                      num_key_value_heads=4, head_dim=hidden // 16, num_nextn_predict_layers=0,
                      first_k_dense_replace=0, n_group=1, topk_group=1, num_hidden_layers=1)
    per_layer = sum(2 * _numel(s) for n, s in tensor_shapes(cfg).items() if ".layers.0." in n)
    cfg["num_hidden_layers"] = max(1, round(size_gb * 1e9 / per_layer))
    return cfg


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def synthetic_tensors(cfg: dict, seed: int = 0):
    """(name, tensor) one at a time, in `save_order`; values random but cheap to make."""
    g = torch.Generator().manual_seed(seed)
    shapes = tensor_shapes(cfg)
    for name in save_order(shapes):
        shape = shapes[name]
        dtype = torch.float32 if name.endswith("expert_bias") else torch.bfloat16
        yield name, (torch.rand(shape, generator=g, dtype=torch.float32) - 0.5).to(dtype)


def write_synthetic(out: Path, cfg: dict, fmt: str = "bin", shard_bytes: int = 1_000_000_000) -> Path:
    """Write shard by shard (memory: one shard) as .bin or safetensors, with an index."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    size = 0
    names: dict[str, str] = {}

    def flush(final=False):
        i = len(names_files) + 1
        fname = f"{'pytorch_model' if fmt == 'bin' else 'model'}-{i:05d}.{fmt if fmt == 'bin' else 'safetensors'}"
        if fmt == "bin":
            torch.save(shards[-1], out / fname)
        else:
            save_file(shards[-1], str(out / fname))
        names_files.append(fname)
        for n in shards[-1]:
            names[n] = fname
        shards[-1] = {}

    names_files: list[str] = []
    for name, t in synthetic_tensors(cfg):
        if shards[-1] and size + t.numel() * t.element_size() > shard_bytes:
            flush()
            size = 0
        shards[-1][name] = t
        size += t.numel() * t.element_size()
    flush(True)
    total = sum((out / f).stat().st_size for f in names_files)
    idx = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (out / idx).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": names}))
    (out / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(out, cfg)
    return out


# A fresh, small interpreter that starts the command and reports its peak RSS.
# NOTE: wait4 from this (large) benchmark process would count pages the child
# inherited through fork; a small launcher makes the child's figure its own.
_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
             "_, st, ru = os.wait4(p.pid, 0)\n"
             "print('LINGRSS', ru.ru_maxrss, file=sys.stderr)\n"
             "sys.exit(os.waitstatus_to_exitcode(st))\n")


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command; return wall seconds and its own peak RSS (MB)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       env={**os.environ, **(env or {})}, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {p.stderr[-2000:]}")
    rss_kb = int(p.stderr.strip().splitlines()[-1].split()[-1])
    return {"wall": wall, "rss_mb": rss_kb / 1024}


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def warm(p: Path) -> None:
    """Read every file once so ours and the baseline both start from the page cache."""
    for f in sorted(p.rglob("*")):
        if f.is_file():
            with open(f, "rb") as h:
                while h.read(1 << 24):
                    pass


def settle(src: Path) -> None:
    """Same start for every measured run: no dirty pages pending, the source in the page cache."""
    os.sync()
    warm(src)


def cp_baseline(src: Path, dst: Path) -> dict:
    """`cp -r` of the same bytes, plus `sync` of the copies (we fsync every file we write)."""
    shutil.rmtree(dst, ignore_errors=True)
    settle(src)
    plain = run_measured(["cp", "-r", str(src), str(dst)])
    shutil.rmtree(dst)
    settle(src)
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    subprocess.run(["sync", *map(str, sorted(dst.iterdir()))], check=True)
    synced = time.perf_counter() - t0
    shutil.rmtree(dst)
    return {"cp": plain["wall"], "cp_sync": synced}


def ling(*args: str) -> list[str]:
    return [sys.executable, "-m", "ling_convert", *args]


# What a converting command pays before its first tensor: the interpreter, torch and the library.
# (`ling-convert formats` no longer serves: it reads no tensor, so it never imports torch.)
STARTUP = [sys.executable, "-c", "import ling_convert.api, ling_convert.cli"]


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)
