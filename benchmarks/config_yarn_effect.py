"""How much `ling-convert yarn --factor F` moves the reference logits at short context.

Not a timing benchmark: YaRN rescales RoPE, so logits *should* change; this prints by how much
(max |delta logit|, top-1 agreement, KL at the last position) on the tiny models, for
  * the tiny config as shipped (trained context 512, so most RoPE pairs get interpolated),
  * a trained context of 32768 (the real Ling-lite-1.5 / Ling-mini-2.0 value),
  * the same with YaRN's attention factor neutralised (mscale = mscale_all_dim = 1), which
    isolates the frequency interpolation from the 0.1*ln(F)+1 cos/sin scale.

    python benchmarks/config_yarn_effect.py --factor 4 --seq-lens 8 32 128
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from ling_convert.model.config_rewrite import apply_yarn
from ling_convert.formats import open_source
from ling_convert.reference import run_reference
from ling_convert.testing import TINY_MODELS, write_tiny
from ling_convert.verify.logits import compare


def variants(cfg: dict, factor: float) -> dict[str, dict]:
    long_ctx = {**cfg, "max_position_embeddings": 32768}
    neutral = apply_yarn(long_ctx, factor)
    neutral["rope_scaling"] = {**neutral["rope_scaling"], "mscale": 1.0, "mscale_all_dim": 1.0}
    return {"ctx 512 (tiny)": (cfg, apply_yarn(cfg, factor)),
            "ctx 32768": (long_ctx, apply_yarn(long_ctx, factor)),
            "ctx 32768, no attn factor": (long_ctx, neutral)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{'model':12} {'variant':27} {'T':>4} {'max_abs':>8} {'top1':>6} {'kl_last':>9} {'|logit|max':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in TINY_MODELS:
            src = open_source(write_tiny(Path(tmp) / model, model, tokenizer=False))
            for name, (base, scaled) in variants(src.config, args.factor).items():
                for t in args.seq_lens:
                    ids = torch.randint(0, base["vocab_size"], (t,), generator=torch.Generator().manual_seed(args.seed))
                    a = run_reference(base, src.load, ids).logits
                    b = run_reference(scaled, src.load, ids).logits
                    m = compare(a, b)
                    print(f"{model:12} {name:27} {t:4d} {m['max_abs']:8.4f} {m['top1']:6.3f} {m['kl_last']:9.2e} "
                          f"{a.abs().max().item():10.3f}")


if __name__ == "__main__":
    main()
