"""Reference forward for BailingMoeV2 (``BailingMoeV2ForCausalLM``: Ling-mini/flash-2.0, Ling-1T, Ring-2.0).

Math follows inclusionAI/Ling-V2 ``models/modeling_bailing_moe_v2.py``:
QK RMSNorm before partial RoPE, sigmoid router with a selection-only ``expert_bias``, group-limited
top-k, renormalised and scaled gates, and optional MTP layers appended after the main stack.

    >>> out = forward(config, weight, torch.tensor([[1, 2, 3]]), mtp=True)  # doctest: +SKIP
    >>> len(out.mtp_logits)  # doctest: +SKIP
    1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import (CommonArgs, LayerWeights, ReferenceOutput, WeightFn, as_batch, attention_block,
                     cfg_get, dense_mlp, embed, layer_count, lm_head, moe_block, resolve_rotary_dim,
                     rms_norm, rope_cos_sin)

# ref: Ling-V2 BailingMoeV2Gate, `scores / (scores.sum() + 1e-20)`.
GATE_EPS = 1e-20


@dataclass(frozen=True)
class Args(CommonArgs):
    """v2 config: the common keys plus routing groups, QK-norm, partial RoPE and MTP depth."""

    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    use_qk_norm: bool = False
    rotary_dim: int = 0
    num_nextn_predict_layers: int = 0

    @classmethod
    def from_dict(cls, config: dict) -> "Args":
        kw = cls.common_from_dict(config)
        score_fn = config.get("score_function")
        if score_fn not in (None, "sigmoid"):
            raise ValueError(f"score_function {score_fn!r}: the v2 router is sigmoid only")
        # NOTE: routing knobs change every MoE output, so a missing one fails instead of defaulting.
        kw.update(n_group=int(cfg_get(config, "n_group")), topk_group=int(cfg_get(config, "topk_group")),
                  routed_scaling_factor=float(cfg_get(config, "routed_scaling_factor")),
                  use_qk_norm=bool(config.get("use_qk_norm", False)),
                  rotary_dim=resolve_rotary_dim(config, kw["head_dim"]),
                  num_nextn_predict_layers=int(config.get("num_nextn_predict_layers") or 0))
        args = cls(**kw)
        args.check_groups()
        return args

    def check_groups(self) -> None:
        """Groups must tile the experts, hold >= 2 each (top-2 group score) and cover top-k."""
        per_group, rem = divmod(self.num_experts, self.n_group)
        if rem or per_group < 2 or not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"bad routing groups: {self.num_experts} experts, n_group={self.n_group}, "
                             f"topk_group={self.topk_group}")
        if self.topk_group * per_group < self.num_experts_per_tok:
            raise ValueError("topk_group * experts per group is smaller than num_experts_per_tok")


def group_limited_topk(biased: torch.Tensor, args: Args) -> torch.Tensor:
    """Expert ids [N, k]: keep the topk_group groups with the best top-2 sums, then top-k inside them."""
    n = biased.shape[0]
    grouped = biased.view(n, args.n_group, -1)  # [N, E] -> [N, G, E/G]
    group_score = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [N, G]
    best_groups = group_score.topk(args.topk_group, dim=-1).indices  # [N, topk_group]
    keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best_groups, True)  # [N, G]
    keep = keep[:, :, None].expand_as(grouped).reshape(n, -1)  # [N, G] -> [N, E]
    masked = biased.masked_fill(~keep, float("-inf"))
    return masked.topk(args.num_experts_per_tok, dim=-1).indices


def route(flat: torch.Tensor, w: LayerWeights, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid router: expert_bias steers selection only; gates are the unbiased scores, renormalised."""
    scores = torch.sigmoid(F.linear(flat, w("mlp.gate.weight")))  # [N, E]
    idx = group_limited_topk(scores + w("mlp.gate.expert_bias", (args.num_experts,)), args)  # [N, k]
    gates = scores.gather(1, idx)  # [N, k]
    if args.num_experts_per_tok > 1:
        # NOTE: HF renormalises whatever norm_topk_prob says.
        gates = gates / (gates.sum(dim=-1, keepdim=True) + GATE_EPS)
    return idx, gates * args.routed_scaling_factor


def block(h: torch.Tensor, w: LayerWeights, args: Args, cos: torch.Tensor, sin: torch.Tensor,
          *, dense: bool) -> torch.Tensor:
    """Pre-norm attention then MLP (dense SwiGLU or MoE) on h [B, T, H]."""
    x = rms_norm(h, w("input_layernorm.weight"), args.rms_norm_eps)
    h = h + attention_block(x, w, args, cos, sin, qk_norm=args.use_qk_norm)
    x = rms_norm(h, w("post_attention_layernorm.weight"), args.rms_norm_eps)
    if dense:
        return h + dense_mlp(x, w, "mlp.")
    return h + moe_block(x, w, args, lambda flat, lw: route(flat, lw, args))


def shift_left(tokens: torch.Tensor) -> torch.Tensor:
    """Ids moved one step left with 0 filling the last slot (HF ``roll_tensor``)."""
    out = tokens.roll(-1, dims=-1)
    out[:, -1] = 0
    return out


def mtp_layer(prev: torch.Tensor, tokens: torch.Tensor, w: LayerWeights, args: Args, weight: WeightFn,
              cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One MTP layer: eh_proj([enorm(E[ids]); hnorm(prev)]), a MoE block, then final_layernorm."""
    e = rms_norm(embed(weight, tokens), w("enorm.weight"), args.rms_norm_eps)
    hn = rms_norm(prev, w("hnorm.weight"), args.rms_norm_eps)
    x = F.linear(torch.cat([e, hn], dim=-1), w("eh_proj.weight"))  # [B, T, 2H] -> [B, T, H]
    x = block(x, w, args, cos, sin, dense=False)  # MTP layers are always sparse
    return rms_norm(x, w("final_layernorm.weight"), args.rms_norm_eps)


def run_mtp(normed: torch.Tensor, tokens: torch.Tensor, args: Args, weight: WeightFn,
            cos: torch.Tensor, sin: torch.Tensor) -> list[torch.Tensor]:
    """MTP logits per depth; depth j reads ids shifted j+1 steps and the previous depth's output."""
    out, prev = [], normed
    for j in range(args.num_nextn_predict_layers):
        tokens = shift_left(tokens)
        # NOTE: appended convention (index L + j); the Ring-V2 copy reuses the last L layers instead.
        w = LayerWeights(weight, f"model.layers.{args.num_hidden_layers + j}.")
        prev = mtp_layer(prev, tokens, w, args, weight, cos, sin)
        out.append(lm_head(weight, prev, tied=args.tie_word_embeddings, norm_head=False))
    return out


def forward(config: dict, weight: WeightFn, tokens: torch.Tensor, *, layers: int | None = None,
            mtp: bool = False) -> ReferenceOutput:
    """Run v2 layer by layer; MTP logits are computed after, and apart from, the main logits."""
    args = Args.from_dict(config)
    tokens = as_batch(tokens)  # [B, T]
    n_layers = layer_count(layers, args.num_hidden_layers)
    if mtp and layers is not None:
        raise ValueError("mtp=True needs the whole main stack; drop layers=")
    cos, sin = rope_cos_sin(args.rope_theta, args.rotary_dim, args.rope_scaling, tokens.shape[1])
    h = embed(weight, tokens)  # [B, T, H]
    for i in range(n_layers):
        w = LayerWeights(weight, f"model.layers.{i}.")
        h = block(h, w, args, cos, sin, dense=i < args.first_k_dense_replace)
    if layers is not None:
        return ReferenceOutput(logits=None, hidden=h)
    normed = rms_norm(h, weight("model.norm.weight").float(), args.rms_norm_eps)
    # NOTE: the v2 HF code never reads norm_head, so neither do we.
    logits = lm_head(weight, normed, tied=args.tie_word_embeddings, norm_head=False)
    mtp_logits = run_mtp(normed, tokens, args, weight, cos, sin) if mtp else []
    return ReferenceOutput(logits=logits, hidden=h, mtp_logits=mtp_logits)
