"""Reference forward for the hybrid-linear Bailing models (softmax layers + linear-attention layers).

``BailingMoeLinearForCausalLM`` (v1-linear: Ring-lite-linear-preview) and ``BailingMoeLinearV2ForCausalLM``
(v2-linear: Ring-mini/flash-linear-2.0). Softmax layers run the v1 / v2 code unchanged; linear layers run
Lightning-style linear attention (schemas/hybrid/linear_attention.json) in one of two forms written apart:

- ``recurrent``: token by token on a d x d state per head (decode semantics);
- ``chunked``: masked block products inside a chunk plus a carried state between chunks (prefill semantics).

    >>> out = forward_v1(config, weight, torch.tensor([[1, 2, 3]]), linear_form="recurrent")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..model.arch import linear_layer_set
from . import bailing_moe as v1
from . import bailing_moe_v2 as v2
from .common import (LayerWeights, ReferenceOutput, WeightFn, apply_rope, as_batch, dense_mlp, embed, layer_count,
                     lm_head, moe_block, rms_norm, rope_cos_sin)

ARCH_V1 = "BailingMoeLinearForCausalLM"
ARCH_V2 = "BailingMoeLinearV2ForCausalLM"
# ref: Ring hybrid_linear modeling_bailing_moe_linear.py, decay `1 - layer_idx / (num_layers - 1) + 1e-5`.
DECAY_EPS = 1e-5
DEFAULT_CHUNK = 16

# ---------------------------------------------------------------- decay


def alibi_slopes(n: int) -> list[float]:
    """Per-head slopes of Lightning-Attention-2: 2^(-8(h+1)/n) for n a power of two, interleaved otherwise.

    >>> alibi_slopes(4)
    [0.25, 0.0625, 0.015625, 0.00390625]
    """
    if n < 1:
        raise ValueError(f"head count must be >= 1, got {n}")
    p = 1 << (n.bit_length() - 1)  # largest power of two <= n
    base = [2.0 ** (-8.0 * (h + 1) / p) for h in range(p)]
    if p == n:
        return base
    # Odd head counts borrow every other slope of the next power of two.
    return base + alibi_slopes(2 * p)[0::2][:n - p]


def layer_log_decay(n_heads: int, layer: int, n_layers: int) -> torch.Tensor:
    """g_h = -s_h * (1 - l/(L-1) + 1e-5) as float32 [n_heads]; the per-token decay is exp(g_h)."""
    factor = 1.0 + DECAY_EPS if n_layers <= 1 else 1.0 - layer / (n_layers - 1) + DECAY_EPS
    return -torch.tensor(alibi_slopes(n_heads), dtype=torch.float32) * factor


# ---------------------------------------------------------------- the two forms


def linear_attention_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float,
                               state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token form: S_t = exp(g) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.

    q, k, v [B, h, T, d]; g [h]; state [B, h, d, d] or None (zeros). Returns (o [B, h, T, d], last state).
    """
    b, h, t, d = q.shape
    s = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float32) if state is None else state.clone()
    lam = g.exp().view(1, h, 1, 1)  # [1, h, 1, 1]
    outs = []
    for i in range(t):
        s = lam * s + k[:, :, i, :, None] * v[:, :, i, None, :]  # outer product k_t^T v_t: [B, h, d, d]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, i] * scale, s))
    return torch.stack(outs, dim=2), s


def linear_attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float,
                             state: torch.Tensor | None = None, chunk: int = DEFAULT_CHUNK
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked parallel form: inside a chunk O = scale ((Q K^T) * D) V with D[i, j] = exp(g (i - j)), j <= i;
    the state from earlier chunks enters as scale (Q * exp(g (i + 1))) S. chunk >= T is the plain O(T^2) form.
    """
    b, h, t, d = q.shape
    s = torch.zeros(b, h, d, v.shape[-1], dtype=torch.float32) if state is None else state
    g = g.view(1, h, 1, 1)
    outs = []
    for start in range(0, t, chunk):
        qc, kc, vc = (x[:, :, start:start + chunk] for x in (q, k, v))  # [B, h, C, d]
        c = qc.shape[2]
        pos = torch.arange(c, dtype=torch.float32)
        gap = pos[:, None] - pos[None, :]  # [C, C], i - j
        # NOTE: decay built from exp(g * gap) in fp32, never by repeated multiplication.
        decay = torch.where(gap >= 0, torch.exp(g * gap), torch.zeros(()))  # [1, h, C, C]
        intra = ((qc @ kc.transpose(-1, -2)) * decay) @ vc  # [B, h, C, d]
        inter = (qc * torch.exp(g * (pos[:, None] + 1))) @ s  # earlier chunks, decayed i + 1 steps
        outs.append(scale * (intra + inter))
        k_weight = torch.exp(g * (c - 1 - pos[:, None]))  # [1, h, C, 1]: decay from token j to chunk end
        s = torch.exp(g * c) * s + (kc * k_weight).transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2), s


FORMS: dict[str, Callable] = {"recurrent": linear_attention_recurrent, "chunked": linear_attention_chunked}

# ---------------------------------------------------------------- config


def _hybrid_fields(config: dict, generation: int) -> dict:
    """Linear-attention knobs; v1 spells SiLU `use_linear_silu`, v2 `linear_silu` (SGLang reads both)."""
    silu = config.get("use_linear_silu", config.get("linear_silu", False))
    fields = {"layer_group_size": int(config.get("layer_group_size") or 1), "linear_silu": bool(silu),
              "linear_rope": bool(config.get("linear_rope", True))}
    if generation == 1:
        rotary = config.get("rotary_type", "full-1d")
        if rotary != "full-1d":
            raise ValueError(f"rotary_type {rotary!r}: the v1-linear code supports only 'full-1d'")
        fields.update(linear_gqa=bool(config.get("use_linear_gqa", False)),
                      low_rank_gate=bool(config.get("use_low_rank", False)))
    else:
        fields["group_norm_size"] = int(config.get("group_norm_size") or 1)
    return fields


@dataclass(frozen=True)
class _Knobs:
    """The hybrid knobs both generations add (defaults: Ring configuration_bailing_moe_linear.py)."""

    layer_group_size: int = 1
    linear_silu: bool = False
    linear_rope: bool = True
    linear_gqa: bool = False
    low_rank_gate: bool = False
    group_norm_size: int = 1  # v1 normalises the full width

    generation = 0  # a class attribute, not a field: set by each Args below

    @classmethod
    def from_dict(cls, config: dict):
        return dataclasses.replace(super().from_dict(config), **_hybrid_fields(config, cls.generation))


@dataclass(frozen=True)
class ArgsV1(_Knobs, v1.Args):
    """v1 config plus the hybrid knobs."""

    generation = 1


@dataclass(frozen=True)
class ArgsV2(_Knobs, v2.Args):
    """v2 config plus the hybrid knobs; linear layers are always MHA with a full gate."""

    generation = 2


# ---------------------------------------------------------------- linear-attention layer


def group_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, groups: int) -> torch.Tensor:
    """RMSNorm of each of `groups` contiguous slices of the last axis, then the full-length weight."""
    if x.shape[-1] % groups:
        raise ValueError(f"group_norm_size {groups} does not divide the attention width {x.shape[-1]}")
    parts = x.view(*x.shape[:-1], groups, x.shape[-1] // groups)  # [..., n*d] -> [..., G, n*d/G]
    normed = parts * torch.rsqrt(parts.pow(2).mean(-1, keepdim=True) + eps)
    return normed.view_as(x) * w


def _checked(w: LayerWeights, suffix: str, shape: tuple[int, ...]) -> torch.Tensor:
    t = w(suffix)
    if tuple(t.shape) != shape:
        raise ValueError(f"{w.prefix}{suffix} has shape {list(t.shape)}, a linear-attention layer needs "
                         f"{list(shape)}; is the layer pattern (layer_group_size) right?")
    return t


def linear_attention_block(x: torch.Tensor, w: LayerWeights, args, layer: int, cos: torch.Tensor,
                           sin: torch.Tensor, form: str = "chunked") -> torch.Tensor:
    """Linear-attention sublayer on the normed input x [B, T, H] of main layer `layer`."""
    b, t, hidden = x.shape
    nh, d = args.num_attention_heads, args.head_dim
    nkv = args.num_key_value_heads if args.linear_gqa else nh
    qkv = F.linear(x, _checked(w, "attention.query_key_value.weight", ((nh + 2 * nkv) * d, hidden)))
    if args.linear_silu:
        qkv = F.silu(qkv)  # on Q, K and V alike, before the split
    qkv = qkv.view(b, t, nh + 2 * nkv, d)  # [B, T, (nh+2nkv)*d] -> [B, T, nh+2nkv, d]
    q, k, v = (part.transpose(1, 2) for part in qkv.split([nh, nkv, nkv], dim=2))  # [B, heads, T, d]
    if getattr(args, "use_qk_norm", False):
        q = rms_norm(q, _checked(w, "attention.query_layernorm.weight", (d,)), args.rms_norm_eps)
        k = rms_norm(k, _checked(w, "attention.key_layernorm.weight", (d,)), args.rms_norm_eps)
    if args.linear_rope:
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if nkv != nh:
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # -> [B, nh, T, d]
    g = layer_log_decay(nh, layer, args.num_hidden_layers)
    o, _ = FORMS[form](q, k, v, g, d ** -0.5)
    o = o.transpose(1, 2).reshape(b, t, nh * d)  # [B, nh, T, d] -> [B, T, nh*d]
    o = group_rms_norm(o, _checked(w, "attention.g_norm.weight", (nh * d,)), args.rms_norm_eps, args.group_norm_size)
    if args.low_rank_gate:
        gate = F.linear(F.linear(x, _checked(w, "attention.g_proj.0.weight", (d, hidden))),
                        _checked(w, "attention.g_proj.1.weight", (nh * d, d)))
    else:
        gate = F.linear(x, _checked(w, "attention.g_proj.weight", (nh * d, hidden)))
    return F.linear(o * torch.sigmoid(gate), _checked(w, "attention.dense.weight", (hidden, nh * d)))


# ---------------------------------------------------------------- decoder


def _mlp(x: torch.Tensor, w: LayerWeights, args, index: int, route) -> torch.Tensor:
    if index < args.first_k_dense_replace:
        return dense_mlp(x, w, "mlp.")
    return moe_block(x, w, args, lambda flat, lw: route(flat, lw, args))


def _linear_layer(h, w, args, index, cos, sin, form, route) -> torch.Tensor:
    """Pre-norm block whose attention is linear; the MLP half is the base model's."""
    h = h + linear_attention_block(rms_norm(h, w("input_layernorm.weight"), args.rms_norm_eps), w, args, index,
                                   cos, sin, form)
    return h + _mlp(rms_norm(h, w("post_attention_layernorm.weight"), args.rms_norm_eps), w, args, index, route)


def _layer_fn(args, generation: int, form: str):
    """One decoder layer (h, w, index, cos, sin) -> h; softmax layers reuse the base code unchanged."""
    linear = linear_layer_set(args.num_hidden_layers, args.layer_group_size)
    route = v1.route if generation == 1 else v2.route

    def run(h, w, index, cos, sin):
        if index in linear:
            return _linear_layer(h, w, args, index, cos, sin, form, route)
        if generation == 1:
            return v1.decoder_layer(h, w, args, index, cos, sin)
        return v2.block(h, w, args, cos, sin, dense=index < args.first_k_dense_replace)
    return run


def _setup(config: dict, t: int):
    """(args, generation, cos, sin) for a hybrid or base config; RoPE as the base model builds it.

    A base (softmax-only) config reads as layer_group_size 1, i.e. no linear layer.
    """
    arch = (config.get("architectures") or [None])[0]
    generation = {ARCH_V1: 1, "BailingMoeForCausalLM": 1, ARCH_V2: 2, "BailingMoeV2ForCausalLM": 2}.get(arch)
    if generation is None:
        raise ValueError(f"architecture {arch!r} is neither a Bailing hybrid-linear model nor its softmax base")
    args = (ArgsV1 if generation == 1 else ArgsV2).from_dict(config)
    rot = args.head_dim if generation == 1 else args.rotary_dim  # v1 'full-1d' rotates the whole head
    cos, sin = rope_cos_sin(args.rope_theta, rot, args.rope_scaling, t)
    return args, generation, cos, sin


def _forward(config: dict, weight: WeightFn, tokens: torch.Tensor, *, layers: int | None, mtp: bool,
             linear_form: str) -> ReferenceOutput:
    tokens = as_batch(tokens)  # [B, T]
    args, generation, cos, sin = _setup(config, tokens.shape[1])
    if linear_form not in FORMS:
        raise ValueError(f"linear_form {linear_form!r}: choose from {sorted(FORMS)}")
    n_layers = layer_count(layers, args.num_hidden_layers)
    if mtp and (layers is not None or generation == 1):
        raise ValueError("mtp=True needs a v2 hybrid and the whole main stack")
    run = _layer_fn(args, generation, linear_form)
    h = embed(weight, tokens)  # [B, T, H]
    for i in range(n_layers):
        h = run(h, LayerWeights(weight, f"model.layers.{i}."), i, cos, sin)
    if layers is not None:
        return ReferenceOutput(logits=None, hidden=h)
    return head(args, generation, weight, h, tokens, cos, sin, mtp=mtp)


def head(args, generation: int, weight: WeightFn, h: torch.Tensor, tokens: torch.Tensor, cos: torch.Tensor,
         sin: torch.Tensor, *, mtp: bool) -> ReferenceOutput:
    """Final norm, logits and (v2) MTP logits from the last layer's hidden states h [B, T, H]."""
    normed = rms_norm(h, weight("model.norm.weight").float(), args.rms_norm_eps)
    norm_head = args.norm_head if generation == 1 else False  # the v2 code never reads norm_head
    logits = lm_head(weight, normed, tied=args.tie_word_embeddings, norm_head=norm_head)
    # NOTE: MTP layers keep softmax attention (inferred; no public v2-linear MTP code).
    extra = v2.run_mtp(normed, tokens, args, weight, cos, sin) if mtp else []
    return ReferenceOutput(logits=logits, hidden=h, mtp_logits=extra)


def stepper(config: dict, t: int, linear_form: str = "chunked"):
    """(args, generation, cos, sin, layer) for stepping a model one layer at a time beside another.

    ``layer(h, w, index, cos, sin) -> h``; works for the hybrids and their softmax bases (v1, v2).
    """
    args, generation, cos, sin = _setup(config, t)
    return args, generation, cos, sin, _layer_fn(args, generation, linear_form)


def forward_v1(config: dict, weight: WeightFn, tokens: torch.Tensor, *, layers: int | None = None,
               mtp: bool = False, linear_form: str = "chunked") -> ReferenceOutput:
    """v1-linear forward (``BailingMoeLinearForCausalLM``)."""
    return _forward(config, weight, tokens, layers=layers, mtp=mtp, linear_form=linear_form)


def forward_v2(config: dict, weight: WeightFn, tokens: torch.Tensor, *, layers: int | None = None,
               mtp: bool = False, linear_form: str = "chunked") -> ReferenceOutput:
    """v2-linear forward (``BailingMoeLinearV2ForCausalLM``); MTP layers as in v2."""
    return _forward(config, weight, tokens, layers=layers, mtp=mtp, linear_form=linear_form)


def run_layer(config: dict, weight: WeightFn, index: int, h: torch.Tensor, *,
              linear_form: str = "chunked") -> torch.Tensor:
    """Main layer `index` alone on hidden states h [B, T, H], for a hybrid or a base (v1 / v2) config.

    Used for layer-level parity: a copied softmax layer must map the same input to the same output.
    """
    args, generation, cos, sin = _setup(config, h.shape[1])
    if not 0 <= index < args.num_hidden_layers:
        raise ValueError(f"layer {index} is outside 0..{args.num_hidden_layers - 1}")
    with torch.no_grad():
        return _layer_fn(args, generation, linear_form)(h.float(), LayerWeights(weight, f"model.layers.{index}."),
                                                        index, cos, sin)


def _register() -> None:
    from .registry import ARCHITECTURES, register_architecture
    for name, fn in ((ARCH_V1, forward_v1), (ARCH_V2, forward_v2)):
        if ARCHITECTURES.get(name) is not fn:
            register_architecture(name, fn)


_register()
