"""`verify` logits pass: A and B stepped through the reference forward side by side, layer by layer.

After each layer the two hidden states are compared, so when the logits fail the first layer that
diverged is already known (no second run). The every-expert pass rides along through
`reference.common.MOE_TAP` while A's MoE blocks run. Memory: one tensor of A or B at a time, plus
the [T, H] hidden states of both.

    >>> res = run_pair(src_a, src_b, torch.tensor([1, 2, 3]))       # doctest: +SKIP
    >>> res.layers[0]["max_abs"]                                      # doctest: +SKIP
    0.0
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..core.errors import BadInputError, UnknownTensorError
from ..core.source import Source
from ..reference import forward_for
from ..reference.bailing_moe_linear import head, stepper
from ..reference.common import MOE_TAP, LayerWeights, ReferenceOutput, as_batch, embed, layer_count

# Relative L2 error of a layer's hidden states above which that layer counts as diverged (lossy
# classes; exact: any difference). Worst seen on the tiny models' correct conversions: fp8 0.27,
# q8_0 0.12, q4_0 0.61 (README "Verify"); about 2x that.
HIDDEN_REL: dict[str, float] = {
    "exact": 0.0, "fp8": 0.6, "gguf-f32": 1e-5, "gguf-f16": 5e-3, "gguf-bf16": 3e-2,
    "gguf-q8_0": 0.3, "gguf-q4_0": 1.2,
}


@dataclass
class PairResult:
    a: ReferenceOutput
    b: ReferenceOutput | None
    layers: list[dict] = field(default_factory=list)    # per main layer: max_abs, rel of hidden states


def weight_fn(src: Source):
    def weight(name: str) -> torch.Tensor:
        if name not in src.infos:
            raise UnknownTensorError("checkpoint lacks a tensor the reference needs", path=src.path, tensor=name,
                                     fix="the checkpoint is incomplete or its config does not match it")
        return src.load(name)
    return weight


@contextmanager
def as_bad_input(src: Source):
    """The reference's ValueErrors are config/tensor disagreements of `src` (bad input), not bugs."""
    try:
        yield
    except ValueError as e:
        raise BadInputError(str(e), path=src.path,
                            fix="the config does not describe these tensors; check it with `ling-convert config "
                                "validate`") from e


@contextmanager
def tapped(tap):
    token = MOE_TAP.set(tap)
    try:
        yield
    finally:
        MOE_TAP.reset(token)


class _Model:
    """One side: its stepper state and current hidden states."""

    def __init__(self, src: Source, tokens: torch.Tensor):
        self.src, self.weight, self.tokens = src, weight_fn(src), tokens
        with as_bad_input(src):
            forward_for(src.config)
            self.args, self.gen, self.cos, self.sin, self.layer = stepper(src.config, tokens.shape[1])
            self.h = embed(self.weight, tokens)              # [B, T, H]

    def step(self, i: int) -> None:
        with as_bad_input(self.src):
            self.h = self.layer(self.h, LayerWeights(self.weight, f"model.layers.{i}."), i, self.cos, self.sin)

    def finish(self, last: bool, mtp: bool) -> ReferenceOutput:
        if not last:
            return ReferenceOutput(logits=None, hidden=self.h)
        with as_bad_input(self.src):
            if mtp and self.gen == 1:
                raise ValueError("mtp=True needs a v2 model (v1 has no MTP layers)")
            return head(self.args, self.gen, self.weight, self.h, self.tokens, self.cos, self.sin, mtp=mtp)


def hidden_diff(ha: torch.Tensor, hb: torch.Tensor) -> dict:
    d = (ha - hb).abs()
    return {"max_abs": float(d.max()), "rel": float((ha - hb).norm() / ha.norm().clamp_min(1e-30))}


def run_pair(sa: Source, sb: Source | None, tokens: torch.Tensor, *, layers: int | None = None,
             mtp: bool = False, tap=None) -> PairResult:
    """Step A (and B) through every main layer; `tap` sees A's MoE inputs (every-expert pass)."""
    tokens = as_batch(tokens)
    with torch.no_grad():
        ma = _Model(sa, tokens)
        mb = _Model(sb, tokens) if sb is not None else None
        with as_bad_input(sa):
            n = layer_count(layers, ma.args.num_hidden_layers)
        out = PairResult(a=None, b=None)    # type: ignore[arg-type]
        for i in range(n):
            with tapped(tap):
                ma.step(i)
            if mb is not None:
                mb.step(i)
                out.layers.append({"layer": i, **hidden_diff(ma.h, mb.h)})
        with tapped(tap):
            out.a = ma.finish(layers is None, mtp)
        out.b = mb.finish(layers is None, mtp) if mb is not None else None
    return out


def first_diverged(layer_diffs: list[dict], edge: str) -> int | None:
    """The first main layer whose hidden states differ beyond the edge class's hidden tolerance."""
    tol = HIDDEN_REL.get(edge, max(HIDDEN_REL.values()))
    for row in layer_diffs:
        if (row["max_abs"] > 0.0) if tol == 0.0 else (row["rel"] > tol):
            return row["layer"]
    return None
