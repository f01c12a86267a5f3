"""Scaling table: every heavy edge at 1, 2 and all cores, as a ratio to `cp -r` + `sync` of the source.

Per edge, on a synthetic model whose output is one shard / one file (so any speed-up comes from
parallelism below the shard):
  startup_s     the same command on a tiny model: interpreter, imports, planning (fixed cost)
  w1_s, w2_s, wN_s   wall time with --workers 1, 2, N (N = cores available; omitted when N <= 2)
  *_vs_cp_sync  wall time / (`cp -r` + `sync` of the source)
  net_2v1       (w1_s - startup_s) / (w2_s - startup_s): the speed-up of 2 workers, start-up excluded
  pss_w1_mb, pss_wN_mb  peak PSS of the whole process tree (workers included; shared pages split)

    python benchmarks/bench_scaling.py --size-gb 0.5 --edges bin2st,quantize
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_dcp import write_synthetic_dcp
from bench_mindie import lite_config
from common import cp_baseline, dir_bytes, ling, print_table, settle, synthetic_config, write_synthetic

from ling_convert.core.fill import cores
from ling_convert.testing import write_tiny

TOKDIR = "{st}"
# edge -> (source kind, command before SRC OUT, options, output is a file)
EDGES = {
    "bin2st": ("bin", ["bin2st"], [], False),
    "dcp2st": ("dcp", ["dcp2st"], ["--tokenizer-dir", TOKDIR], False),
    "dcp2st-fp8": ("dcp", ["dcp2st"], ["--force-fp8", "--tokenizer-dir", TOKDIR], False),
    "quantize": ("st", ["quantize"], [], False),
    "dequantize": ("fp8", ["dequantize"], [], False),
    "to-gguf-q8_0": ("st", ["to-gguf"], ["--outtype", "q8_0"], True),
    "to-gguf-q4_0": ("st", ["to-gguf"], ["--outtype", "q4_0"], True),
    "to-mindie": ("lite", ["to-mindie", "lite"], [], False),
}
TINY = {"bin": ("ling-mini-2", "bin"), "dcp": None, "st": ("ling-mini-2", "safetensors"),
        "fp8": None, "lite": ("ling-lite", "safetensors")}


def _tree_pss_kb(root: int) -> int:
    """PSS of `root` and all its descendants (kB), from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total


def run_tree(cmd: list[str]) -> dict:
    """Wall seconds and peak PSS (MB) of the process tree, sampled every 50 ms."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while p.poll() is None:
        peak = max(peak, _tree_pss_kb(p.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {p.stderr.read()[-2000:]}")
    return {"wall": wall, "pss_mb": peak / 1024}


def sources(kinds: set[str], size_gb: float, work: Path) -> dict[str, Path]:
    """Synthetic sources (kept between runs in `work`, keyed by size) and their tiny twins."""
    tag, out = f"{size_gb:g}", {}
    makers = {
        "bin": lambda p: write_synthetic(p, synthetic_config(size_gb), fmt="bin"),
        "st": lambda p: write_synthetic(p, synthetic_config(size_gb), fmt="safetensors"),
        "lite": lambda p: write_synthetic(p, lite_config(size_gb), fmt="safetensors"),
        "dcp": lambda p: write_synthetic_dcp(p, size_gb),
        "fp8": lambda p: subprocess.run(ling("quantize", str(out["st"]), str(p)), check=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    }
    need = kinds | ({"st"} if kinds & {"fp8", "dcp"} else set())
    for kind in ["bin", "st", "lite", "dcp", "fp8"]:
        if kind in need:
            p = work / f"scaling-{kind}-{tag}"
            if not (p / "config.json").exists():
                shutil.rmtree(p, ignore_errors=True)
                makers[kind](p)
            out[kind] = p
    return out


def _tiny(kind: str, work: Path) -> Path:
    p = work / f"scaling-tiny-{kind}"
    if not p.exists():
        if TINY.get(kind):
            write_tiny(p, TINY[kind][0], fmt=TINY[kind][1])
        else:       # fp8, dcp: converted from the tiny safetensors model
            cmd = "quantize" if kind == "fp8" else "st2dcp"
            subprocess.run(ling(cmd, str(_tiny("st", work)), str(p)), check=True, capture_output=True)
    return p


def _cmd(edge: str, src: Path, out: Path, st: Path, workers: int) -> list[str]:
    _, head, opts, _ = EDGES[edge]
    return ling(*head, str(src), str(out), *[o.replace(TOKDIR, str(st)) for o in opts], "--workers", str(workers),
                "--force")


def bench_edge(edge: str, srcs: dict, work: Path) -> dict:
    kind, _, _, is_file = EDGES[edge]
    src, out = srcs[kind], work / ("scaling-out.gguf" if is_file else "scaling-out")
    tiny = _tiny(kind, work)
    row = {"edge": edge, "src_gb": dir_bytes(src) / 1e9}
    counts = sorted({1, 2, cores()})
    row["cp_sync_s"] = cp_baseline(src, work / "scaling-cp")["cp_sync"]
    settle(tiny)
    row["startup_s"] = run_tree(_cmd(edge, tiny, out, _tiny("st", work), 1))["wall"]
    for n in counts:
        settle(src)
        r = run_tree(_cmd(edge, src, out, srcs.get("st", src), n))
        key = f"w{n}" if n <= 2 else "wN"
        row[f"{key}_s"], row[f"pss_{key}_mb"] = r["wall"], r["pss_mb"]
        row[f"{key}_vs_cp_sync"] = r["wall"] / row["cp_sync_s"]
        out.unlink() if out.is_file() else shutil.rmtree(out, ignore_errors=True)
    net1, net2 = row["w1_s"] - row["startup_s"], row["w2_s"] - row["startup_s"]
    row["net_2v1"] = net1 / net2 if net1 > 0 and net2 > 0 else "-"     # "-": start-up noise exceeds the work
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--edges", default=",".join(EDGES), help="comma-separated subset of: " + ", ".join(EDGES))
    ap.add_argument("--workdir", type=Path, default=Path("../bench-work"))
    a = ap.parse_args()
    edges = a.edges.split(",")
    a.workdir.mkdir(parents=True, exist_ok=True)
    srcs = sources({EDGES[e][0] for e in edges}, a.size_gb, a.workdir)
    rows = []
    for e in edges:
        rows.append(bench_edge(e, srcs, a.workdir))
        print(rows[-1], file=sys.stderr, flush=True)      # a long run keeps what it measured so far
    cols = ["edge", "src_gb", "cp_sync_s", "startup_s", "w1_s", "w2_s", "w1_vs_cp_sync", "w2_vs_cp_sync",
            "net_2v1", "pss_w1_mb", "pss_w2_mb"]
    if cores() > 2:
        cols[6:6] = ["wN_s"]
        cols[9:9] = ["wN_vs_cp_sync"]
        cols.append("pss_wN_mb")
    print_table(f"scaling below the shard ({cores()} cores available, one output shard/file)", rows, cols)


if __name__ == "__main__":
    sys.exit(main())
