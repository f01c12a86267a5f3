"""Reference forward for BailingMoe v1 (``BailingMoeForCausalLM``: Ling-lite, Ling-plus, Ling-Coder-lite).

Math follows inclusionAI/Ling ``models/modeling_bailing_moe.py``:
pre-norm blocks, full-head RoPE, softmax top-k router, shared experts, optional ``norm_head``.

    >>> out = forward(config, weight, torch.tensor([1, 2, 3]))  # doctest: +SKIP
    >>> out.logits.shape  # doctest: +SKIP
    torch.Size([1, 3, 126464])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common import (CommonArgs, LayerWeights, ReferenceOutput, WeightFn, as_batch, attention_block,
                     dense_mlp, embed, layer_count, lm_head, moe_block, rms_norm, rope_cos_sin)


@dataclass(frozen=True)
class Args(CommonArgs):
    """v1 config: the common keys plus the router and head switches."""

    norm_topk_prob: bool = True
    norm_head: bool = False

    @classmethod
    def from_dict(cls, config: dict) -> "Args":
        kw = cls.common_from_dict(config)
        # ref: HF BailingMoeConfig defaults norm_topk_prob=True, norm_head=False.
        kw["norm_topk_prob"] = bool(config.get("norm_topk_prob", True))
        kw["norm_head"] = bool(config.get("norm_head", False))
        return cls(**kw)


def route(flat: torch.Tensor, w: LayerWeights, args: Args) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax router: top-k of softmax(x W^T), renormalised to sum 1 when k > 1 and norm_topk_prob."""
    probs = F.linear(flat, w("mlp.gate.weight")).softmax(dim=-1)  # [N, E]
    gates, idx = probs.topk(args.num_experts_per_tok, dim=-1)  # [N, k] each
    if args.num_experts_per_tok > 1 and args.norm_topk_prob:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return idx, gates


def decoder_layer(h: torch.Tensor, w: LayerWeights, args: Args, index: int,
                  cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One pre-norm block: h + Attn(norm h), then + MLP(norm h); MLP is dense below first_k_dense_replace."""
    h = h + attention_block(rms_norm(h, w("input_layernorm.weight"), args.rms_norm_eps), w, args, cos, sin)
    x = rms_norm(h, w("post_attention_layernorm.weight"), args.rms_norm_eps)
    if index < args.first_k_dense_replace:
        return h + dense_mlp(x, w, "mlp.")
    return h + moe_block(x, w, args, lambda flat, lw: route(flat, lw, args))


def forward(config: dict, weight: WeightFn, tokens: torch.Tensor, *, layers: int | None = None,
            mtp: bool = False) -> ReferenceOutput:
    """Run v1 layer by layer; logits only when the whole stack ran. v1 has no MTP layers."""
    args = Args.from_dict(config)
    tokens = as_batch(tokens)  # [B, T]
    n_layers = layer_count(layers, args.num_hidden_layers)
    # v1 rotates the full head (rotary_type 'full-1d').
    cos, sin = rope_cos_sin(args.rope_theta, args.head_dim, args.rope_scaling, tokens.shape[1])
    h = embed(weight, tokens)  # [B, T, H]
    for i in range(n_layers):
        h = decoder_layer(h, LayerWeights(weight, f"model.layers.{i}."), args, i, cos, sin)
    if layers is not None:
        return ReferenceOutput(logits=None, hidden=h)
    normed = rms_norm(h, weight("model.norm.weight").float(), args.rms_norm_eps)
    logits = lm_head(weight, normed, tied=args.tie_word_embeddings, norm_head=args.norm_head)
    return ReferenceOutput(logits=logits, hidden=h)
