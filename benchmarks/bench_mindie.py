""".bin -> MindIE dir on synthetic Ling-lite-shaped checkpoints at two sizes (x and 4x).

Measured in one run, each command in a child process (wall time, peak RSS via wait4):
  ours    `ling-convert to-mindie lite SRC OUT` (streams tensor by tensor, fsyncs, writes configs)
  recipe  the Ling README's approach (convert_bin_to_safetensor.py): torch.load every .bin into one
          dict, save_file blocks of 8 layers (non-layer tensors in the last file), then copy the
          tokenizer/config files and swap config.json; re-implemented here for any layer count
  cp      `cp -r` of the same .bin bytes, plain and with the copies synced
Ratios: x_recipe = recipe_s / ours_s, vs_cp = ours_s / cp_s. Also checks both wrote equal tensors.

    python benchmarks/bench_mindie.py --size-gb 0.5 --scale 4
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch

from common import cp_baseline, dir_bytes, ling, print_table, run_measured, warm, write_synthetic
from ling_convert.testing import tensor_shapes, tiny_config

BLOCK = 8  # layers per file in the recipe's script


def lite_config(size_gb: float, hidden: int = 1024, experts: int = 16, moe_inter: int = 512) -> dict:
    """A BailingMoe v1 (Ling-lite-shaped) config whose bf16 weights total about `size_gb` GB."""
    cfg = tiny_config("ling-lite", hidden_size=hidden, intermediate_size=4 * moe_inter, moe_intermediate_size=moe_inter,
                      num_experts=experts, num_shared_experts=2, num_experts_per_tok=4, num_attention_heads=16,
                      num_key_value_heads=4, num_hidden_layers=1, max_position_embeddings=16384)
    per_layer = sum(2 * math.prod(s) for n, s in tensor_shapes(cfg).items() if ".layers.0." in n)
    cfg["num_hidden_layers"] = max(1, round(size_gb * 1e9 / per_layer))
    return cfg


def recipe_convert(src: Path, out: Path) -> None:
    """The README recipe, whole model in memory (runs in a child: `bench_mindie.py --recipe SRC OUT`)."""
    from safetensors.torch import save_file
    sd = {}
    for f in sorted(src.glob("pytorch_model*.bin")):
        sd.update(torch.load(f, weights_only=True, map_location="cpu"))
    cfg = json.loads((src / "config.json").read_text())
    n = math.ceil(cfg["num_hidden_layers"] / BLOCK)
    out.mkdir(parents=True)
    weight_map, total = {}, 0
    for i in range(n):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        part = {k: v.contiguous() for k, v in sd.items()
                if (int(k.split("layers.")[1].split(".")[0]) // BLOCK if "layers." in k else n - 1) == i}
        save_file(part, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
        total += sum(v.numel() * v.element_size() for v in part.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items(), key=lambda x: x[1] + x[0]))},
        indent=4))
    for f in src.iterdir():
        if f.suffix in (".json", ".py") and "index" not in f.name:
            shutil.copyfile(f, out / f.name)
    shutil.copyfile(out / "config.json", out / "config.json.bak")


def same_tensors(a: Path, b: Path) -> bool:
    from ling_convert.formats.safetensors import open_source
    sa, sb = open_source(a), open_source(b)
    return set(sa.keys()) == set(sb.keys()) and all(torch.equal(sa.load(n), sb.load(n)) for n in sa.keys())


def bench(size_gb: float, work: Path) -> dict:
    src = write_synthetic(work / f"bin-{size_gb}", lite_config(size_gb), "bin")
    nbytes = dir_bytes(src)
    warm(src)
    base = cp_baseline(src, work / "cp-out")
    ours_out, recipe_out = work / "mindie-ours", work / "mindie-recipe"
    for d in (ours_out, recipe_out):
        shutil.rmtree(d, ignore_errors=True)
    ours = run_measured(ling("to-mindie", "lite", str(src), str(ours_out)))
    recipe = run_measured([sys.executable, __file__, "--recipe", str(src), str(recipe_out)])
    same = same_tensors(ours_out, recipe_out)
    for d in (ours_out, recipe_out, src):
        shutil.rmtree(d)
    return {"size_gb": nbytes / 1e9, "ours_s": ours["wall"], "recipe_s": recipe["wall"], "cp_s": base["cp"],
            "cp_sync_s": base["cp_sync"], "x_recipe": recipe["wall"] / ours["wall"], "vs_cp": ours["wall"] / base["cp"],
            "vs_cp_sync": ours["wall"] / base["cp_sync"], "GB_per_s": nbytes / 1e9 / ours["wall"],
            "rss_mb": ours["rss_mb"], "recipe_rss_mb": recipe["rss_mb"], "same_tensors": same}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--recipe":
        recipe_convert(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=0.5, help="bf16 size of the smaller model (x)")
    ap.add_argument("--scale", type=int, default=4, help="the larger model is this many times x")
    ap.add_argument("--workdir", type=Path, default=Path("bench-work"))
    a = ap.parse_args()
    a.workdir.mkdir(exist_ok=True)
    rows = [bench(s, a.workdir) for s in (a.size_gb, a.size_gb * a.scale)]
    print_table("to-mindie lite (.bin -> MindIE dir)", rows,
                ["size_gb", "ours_s", "recipe_s", "cp_s", "cp_sync_s", "x_recipe", "vs_cp", "vs_cp_sync",
                 "GB_per_s", "rss_mb", "recipe_rss_mb", "same_tensors"])
    print(f"\npeak RSS growth for {a.scale}x the model: ours {rows[1]['rss_mb'] / rows[0]['rss_mb']:.2f}x, "
          f"recipe {rows[1]['recipe_rss_mb'] / rows[0]['recipe_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
