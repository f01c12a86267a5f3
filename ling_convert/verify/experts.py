"""`verify` every-expert pass: each routed expert and the shared expert of A and of B, run on the
MoE layer's real input (A's hidden states), whatever the router picks.

A prompt reaches only the experts its router picks (top-8 of 256 at 32 tokens: about 64 %), and an
expert whose `expert_bias` is far below the others is reached by no prompt; this pass looks at them
all. It runs inside A's layer-streamed forward through `reference.common.MOE_TAP`, one expert of A
and one of B in memory at a time.

    >>> check = ExpertsCheck(weight_b, has_a, "exact")          # doctest: +SKIP
    >>> token = MOE_TAP.set(check)                               # doctest: +SKIP
"""

from __future__ import annotations

import torch

from ..reference.common import LayerWeights, WeightFn, dense_mlp

# Relative L2 error ||y_A - y_B|| / ||y_A|| an expert output may show per edge class. Measured on the
# tiny models' correct conversions (worst seen, README "Verify") with about 3x margin; a swapped or
# perturbed expert shows 1e-3 (exact class) to ~1.4 (swap).
EXPERT_REL: dict[str, float] = {
    "exact": 0.0, "fp8": 0.15, "gguf-f32": 1e-6, "gguf-f16": 2e-3, "gguf-bf16": 1.5e-2,
    "gguf-q8_0": 0.03, "gguf-q4_0": 0.4,
}
KEEP_FAILED = 8          # failed experts whose outputs are kept per layer, to spot swaps among them


def rel_err(ya: torch.Tensor, yb: torch.Tensor) -> float:
    return float((ya - yb).norm() / ya.norm().clamp_min(1e-30))


def _layer_of(prefix: str) -> int:
    return int(prefix.split(".")[2])                      # "model.layers.{i}."


def find_swaps(failed: list[tuple[int, torch.Tensor, torch.Tensor]], tol: float) -> list[list[int]]:
    """Pairs (e, f) of failed experts where B's e computes A's f and B's f computes A's e."""
    pairs = []
    for i, (e, ya_e, yb_e) in enumerate(failed):
        for f, ya_f, yb_f in failed[i + 1:]:
            if rel_err(ya_e, yb_f) <= tol and rel_err(ya_f, yb_e) <= tol:
                pairs.append([e, f])
    return pairs


class ExpertsCheck:
    """The MOE_TAP callable: compare every expert of one MoE layer; keeps one small dict per layer."""

    def __init__(self, weight_b: WeightFn, has_a, edge: str, tol: float | None = None):
        self.weight_b, self.has_a = weight_b, has_a
        self.tol = EXPERT_REL.get(edge, max(EXPERT_REL.values())) if tol is None else tol
        self.layers: list[dict] = []

    def _ok(self, ya: torch.Tensor, yb: torch.Tensor) -> tuple[bool, float]:
        r = rel_err(ya, yb)
        ok = bool(torch.equal(ya, yb)) if self.tol == 0.0 else r <= self.tol
        return ok, r

    def __call__(self, flat: torch.Tensor, idx: torch.Tensor, w: LayerWeights) -> None:
        wb = LayerWeights(self.weight_b, w.prefix)
        n = 0
        while self.has_a(f"{w.prefix}mlp.experts.{n}.gate_proj.weight"):
            n += 1
        worst, failed, kept = 0.0, [], []
        for e in range(n):
            ya, yb = dense_mlp(flat, w, f"mlp.experts.{e}."), dense_mlp(flat, wb, f"mlp.experts.{e}.")
            ok, r = self._ok(ya, yb)
            worst = max(worst, r)
            if not ok:
                failed.append(f"{w.prefix}mlp.experts.{e}")
                if len(kept) < KEEP_FAILED:
                    kept.append((e, ya, yb))
        shared = self.has_a(f"{w.prefix}mlp.shared_experts.gate_proj.weight")
        if shared:
            ok, r = self._ok(dense_mlp(flat, w, "mlp.shared_experts."), dense_mlp(flat, wb, "mlp.shared_experts."))
            worst = max(worst, r)
            if not ok:
                failed.append(f"{w.prefix}mlp.shared_experts")
        self.layers.append({"layer": _layer_of(w.prefix), "routed": len(torch.unique(idx)), "experts": n,
                            "compared": n + int(shared), "shared": shared, "worst_rel": worst,
                            "failed": failed, "swapped": find_swaps(kept, max(self.tol, 1e-6))})

    def report(self) -> dict:
        failed = [f for row in self.layers for f in row["failed"]]
        return {"passed": not failed, "tolerance_rel": self.tol, "layers": self.layers, "failed": failed,
                "swapped": [[row["layer"], *p] for row in self.layers for p in row["swapped"]],
                "coverage": [coverage_line(row) for row in self.layers]}


def coverage_line(row: dict) -> str:
    """'layer 5: prompt routes 161/256 experts; all 256 compared directly'."""
    return (f"layer {row['layer']}: prompt routes {row['routed']}/{row['experts']} experts; "
            f"all {row['experts']} compared directly" + (" (+ shared)" if row["shared"] else ""))
