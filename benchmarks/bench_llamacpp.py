"""`to-gguf` against llama.cpp's own `convert_hf_to_gguf.py` on the same synthetic Ling-2.0 model.

Both convert the same bf16 safetensors checkpoint (written here, Ling-mini-2.0-shaped) to the same
--outtype, one after the other within each round, from a warm page cache; the best of --repeat
rounds is kept. Ours fsyncs what it writes; llama.cpp's converter does not, so its column is
shown both as it runs and followed by `sync` of its output file.

llama.cpp's converter is not a package: pass the directory of a llama.cpp checkout (or of the
`vendor/llama.cpp` folder of the llama-cpp-python sdist) and an interpreter that has its
requirements (`transformers`, `sentencepiece`, numpy, torch). Its vocabulary step refuses a
tokenizer whose pre-tokenizer hash it does not know, which a synthetic tokenizer is: the launcher
below names the pre-tokenizer ("bailingmoe2") instead of hashing it, and changes nothing else.

    python benchmarks/bench_llamacpp.py --llama-cpp /path/to/llama.cpp --python /venv/bin/python \\
        --size-gb 1 --outtypes q8_0,bf16
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import dir_bytes, ling, print_table, run_measured, settle, synthetic_config, write_synthetic

# Runs llama.cpp's converter unchanged but for the pre-tokenizer name (see the module docstring).
LAUNCHER = """
import runpy, sys
sys.path.insert(0, sys.argv[1])
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "bailingmoe2"
sys.argv = [sys.argv[1] + "/convert_hf_to_gguf.py", *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# Our --outtype -> llama.cpp's --outtype (the same GGUF tensor types).
THEIRS = {"q8_0": "q8_0", "bf16": "bf16", "f16": "f16", "f32": "f32"}


def _ours(src: Path, out: Path, outtype: str) -> float:
    return run_measured(ling("to-gguf", str(src), str(out), "--outtype", outtype, "--force"))["wall"]


def _theirs(py: str, llama: Path, src: Path, out: Path, outtype: str) -> tuple[float, float]:
    """(wall as it runs, wall including `sync` of its output)."""
    t0 = time.perf_counter()
    r = run_measured([py, "-c", LAUNCHER, str(llama), str(src), "--outfile", str(out),
                      "--outtype", THEIRS[outtype]])
    subprocess.run(["sync", str(out)], check=True)
    return r["wall"], time.perf_counter() - t0


def same_tensors(a: Path, b: Path) -> bool:
    """Both files hold the same tensors: names, GGUF types, shapes and data bytes."""
    import gguf
    ta, tb = (sorted(gguf.GGUFReader(p).tensors, key=lambda t: t.name) for p in (a, b))
    return len(ta) == len(tb) and all(
        x.name == y.name and x.tensor_type == y.tensor_type and list(x.shape) == list(y.shape)
        and x.data.tobytes() == y.data.tobytes() for x, y in zip(ta, tb))


def bench(a, src: Path, outtype: str) -> dict:
    ours_runs, theirs_runs = [], []
    outs = {side: a.workdir / f"{side}-{outtype}.gguf" for side in ("ours", "theirs")}
    for _ in range(a.repeat):
        for side, out in outs.items():
            out.unlink(missing_ok=True)
            settle(src)
            if side == "ours":
                ours_runs.append(_ours(src, out, outtype))
            else:
                theirs_runs.append(_theirs(a.python, a.llama_cpp, src, out, outtype))
    same = same_tensors(outs["ours"], outs["theirs"])
    sizes = {side: out.stat().st_size / 1e9 for side, out in outs.items()}
    for out in outs.values():
        out.unlink()
        Path(str(out) + ".ling-convert.json").unlink(missing_ok=True)
    ours = min(ours_runs)
    theirs, theirs_sync = min(t for t, _ in theirs_runs), min(s for _, s in theirs_runs)
    return {"outtype": outtype, "src_gb": dir_bytes(src) / 1e9, "ours_gb": sizes["ours"],
            "llamacpp_gb": sizes["theirs"], "same_tensor_bytes": same, "ours_s": ours,
            "llamacpp_s": theirs, "llamacpp_sync_s": theirs_sync, "ours_vs_llamacpp": ours / theirs,
            "ours_vs_llamacpp_sync": ours / theirs_sync}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", type=Path, required=True, help="dir holding convert_hf_to_gguf.py")
    ap.add_argument("--python", default=sys.executable, help="interpreter with llama.cpp's requirements")
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--outtypes", default="q8_0,bf16")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path("../bench-work-llamacpp"))
    a = ap.parse_args()
    if not (a.llama_cpp / "convert_hf_to_gguf.py").is_file():
        print(f"no convert_hf_to_gguf.py in {a.llama_cpp}", file=sys.stderr)
        return 2
    a.workdir.mkdir(parents=True, exist_ok=True)
    src = write_synthetic(a.workdir / "src", synthetic_config(a.size_gb), "safetensors")
    try:
        rows = [bench(a, src, t) for t in a.outtypes.split(",")]
    finally:
        shutil.rmtree(src, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, best of {a.repeat} interleaved rounds")
    print_table("to-gguf vs llama.cpp convert_hf_to_gguf.py (same model, same --outtype)", rows,
                ["outtype", "src_gb", "ours_gb", "llamacpp_gb", "same_tensor_bytes", "ours_s", "llamacpp_s", "llamacpp_sync_s", "ours_vs_llamacpp",
                 "ours_vs_llamacpp_sync"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
