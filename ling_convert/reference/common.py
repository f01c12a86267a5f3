"""Shared math for the reference forward pass: norms, RoPE, SwiGLU, GQA attention, MoE mixing.

Everything runs in float32 on CPU with plain torch ops. Weights come one tensor at a time
from a ``weight(name)`` callable; nothing here keeps a tensor after it returns.

    >>> normalize_rope_scaling({"rope_scaling": {"type": "yarn", "factor": 4}})
    {'rope_type': 'yarn', 'factor': 4.0}
"""

from __future__ import annotations

import dataclasses
import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..model.config import head_dim

WeightFn = Callable[[str], "torch.Tensor"]

# Vocabulary rows upcast at once in the head; bounds the fp32 copy of a 157k-row lm_head.
HEAD_CHUNK_ROWS = 16384
# ref: inclusionAI/Ling models/modeling_bailing_moe.py BailingMoeYarnRotaryEmbedding defaults.
YARN_DEFAULTS = {"original_max_position_embeddings": 4096, "beta_fast": 32.0, "beta_slow": 1.0,
                 "mscale": 1.0, "mscale_all_dim": 0.0}
_REQUIRED = object()
# Called as tap(flat [N, H], idx [N, k], w) in every MoE block when set: verify's every-expert pass
# reads each MoE layer's real input there (ling_convert/verify/experts.py).
MOE_TAP: ContextVar = ContextVar("moe_tap", default=None)


@dataclass
class ReferenceOutput:
    """Result of ``run_reference``; all tensors float32 with a batch axis.

    >>> out = ReferenceOutput(logits=None, hidden=torch.zeros(1, 3, 8))
    """

    logits: torch.Tensor | None  # [B, T, V]; None when only some layers ran
    hidden: torch.Tensor  # [B, T, H] after the last layer run, before the final norm
    mtp_logits: list[torch.Tensor] = field(default_factory=list)  # each [B, T, V]


# ---------------------------------------------------------------- config helpers


def cfg_get(config: dict, key: str, default: Any = _REQUIRED) -> Any:
    """Read one config key; a missing required key raises a ValueError that names it."""
    value = config.get(key)
    if value is not None:
        return value
    if default is _REQUIRED:
        raise ValueError(f"config.json lacks {key!r}; the reference forward needs it")
    return default


def resolve_head_dim(config: dict) -> int:
    """``head_dim`` from the config; missing, 0 or null means hidden / heads (HF ``or`` rule)."""
    cfg_get(config, "num_attention_heads")      # a missing key is named here, not as a KeyError
    if not config.get("head_dim"):
        cfg_get(config, "hidden_size")
    return head_dim(config)


def resolve_rotary_dim(config: dict, head_dim: int) -> int:
    """Rotated dims per head: ``rotary_dim``, else head_dim * ``partial_rotary_factor``, else head_dim.

    NOTE: SGLang's precedence; the Ling-V2 HF file reads only partial_rotary_factor.
    """
    if config.get("rotary_dim"):
        rot = int(config["rotary_dim"])
    elif config.get("partial_rotary_factor") is not None:
        rot = int(head_dim * float(config["partial_rotary_factor"]))
    else:
        rot = head_dim
    if rot <= 0 or rot % 2 or rot > head_dim:
        raise ValueError(f"rotary dim {rot} must be even and in (0, head_dim={head_dim}]")
    return rot


def resolve_rope_theta(config: dict) -> float:
    """RoPE base: ``rope_theta``, or the transformers-5 ``rope_parameters.rope_theta``; HF default 1e4."""
    theta = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta")
    return float(theta or 10000.0)


def normalize_rope_scaling(config: dict) -> dict | None:
    """`rope_scaling` as the config rewriter normalises it, limited to what this reference implements.

    One normaliser (`config_rewrite.normalize_rope_scaling`) reads the legacy spellings, so
    the reference builds RoPE from exactly the dict that `yarn` writes.

    >>> normalize_rope_scaling({"rope_scaling": None}) is None
    True
    """
    from ..model.config_rewrite import normalize_rope_scaling as normalize
    out = normalize(config)
    if out is None:
        return None
    if out["rope_type"] not in ("yarn", "linear"):
        raise ValueError(f"rope_scaling type {out['rope_type']!r} is not supported (known: yarn, linear)")
    if out.get("factor") is None:
        raise ValueError(f"rope_scaling of type {out['rope_type']!r} lacks 'factor'")
    return out


@dataclass(frozen=True)
class CommonArgs:
    """Config keys both generations read. Defaults are those of the HF config classes."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    intermediate_size: int | None
    num_shared_experts: int
    first_k_dense_replace: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    use_qkv_bias: bool
    use_bias: bool
    tie_word_embeddings: bool

    @classmethod
    def common_from_dict(cls, config: dict) -> dict:
        """The shared fields as keyword arguments; unknown keys are ignored."""
        kw = {
            "head_dim": resolve_head_dim(config),
            "rope_scaling": normalize_rope_scaling(config),
            "intermediate_size": config.get("intermediate_size"),
            # ref: HF BailingMoeConfig defaults (use_bias=True, rms_norm_eps=1e-5, rope_theta=1e4).
            "num_shared_experts": int(config.get("num_shared_experts") or 0),
            "first_k_dense_replace": int(config.get("first_k_dense_replace") or 0),
            "rms_norm_eps": float(cfg_get(config, "rms_norm_eps", 1e-5)),
            "rope_theta": resolve_rope_theta(config),
            "use_qkv_bias": bool(config.get("use_qkv_bias", False)),
            "use_bias": bool(config.get("use_bias", True)),
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
        }
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "vocab_size", "num_experts", "num_experts_per_tok", "moe_intermediate_size"):
            kw[name] = int(cfg_get(config, name))
        if kw["first_k_dense_replace"] > 0 and not kw["intermediate_size"]:
            raise ValueError("config.json lacks 'intermediate_size' but has dense lead layers")
        if kw["num_attention_heads"] % kw["num_key_value_heads"]:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return kw

    @classmethod
    def from_dict(cls, config: dict):
        """Build from a config.json dict, ignoring keys this architecture does not read."""
        kw = cls.common_from_dict(config)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kw.items() if k in names})


def layer_count(layers: int | None, total: int) -> int:
    """How many main layers to run; ``layers`` must lie in 1..total."""
    if layers is None:
        return total
    if not 1 <= layers <= total:
        raise ValueError(f"layers={layers} is outside 1..{total}")
    return layers


def as_batch(tokens: torch.Tensor) -> torch.Tensor:
    """Token ids as [B, T] int64; a 1-D input becomes a batch of one."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() == 1:
        tokens = tokens[None, :]  # [T] -> [1, T]
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [T] or [B, T], got shape {tuple(tokens.shape)}")
    return tokens


# ---------------------------------------------------------------- weight access


class LayerWeights:
    """Fetch one layer's tensors by suffix, upcast to float32, hold nothing."""

    def __init__(self, weight: WeightFn, prefix: str):
        self.weight = weight
        self.prefix = prefix

    def __call__(self, suffix: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        t = self.weight(self.prefix + suffix)
        if shape is not None and tuple(t.shape) != tuple(shape):
            # NOTE: a wrong head_dim or head split can still load; fail on shape, not on a broadcast.
            raise ValueError(f"{self.prefix}{suffix} has shape {list(t.shape)}, config implies {list(shape)}; "
                             "check head_dim, num_attention_heads and num_key_value_heads")
        return t.float()

    def maybe(self, suffix: str, present: bool, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """Fetch only when the config says the tensor exists (biases, QK-norm)."""
        return self(suffix, shape) if present else None


def embed(weight: WeightFn, tokens: torch.Tensor) -> torch.Tensor:
    """Embedding rows for [B, T] ids as float32 [B, T, H]; upcast after the lookup to save memory."""
    table = weight("model.word_embeddings.weight")
    return table[tokens].float()


def lm_head(weight: WeightFn, h: torch.Tensor, *, tied: bool, norm_head: bool) -> torch.Tensor:
    """Logits [B, T, V] from normed hidden [B, T, H], upcasting the head in vocab chunks.

    ``norm_head`` divides each hidden column by its L2 norm over the vocab axis (dim 0) + 1e-7.
    """
    w = weight("model.word_embeddings.weight" if tied else "lm_head.weight")
    col_scale = None
    if norm_head:
        sq = torch.zeros(w.shape[1], dtype=torch.float32)
        for start in range(0, w.shape[0], HEAD_CHUNK_ROWS):
            sq += w[start:start + HEAD_CHUNK_ROWS].float().pow(2).sum(dim=0)
        col_scale = 1.0 / (sq.sqrt() + 1e-7)  # [H]; ref: Ling modeling_bailing_moe.py compute_logit
    chunks = []
    for start in range(0, w.shape[0], HEAD_CHUNK_ROWS):
        rows = w[start:start + HEAD_CHUNK_ROWS].float()  # [chunk, H]
        if col_scale is not None:
            rows = rows * col_scale
        chunks.append(F.linear(h, rows))  # [B, T, chunk]
    return torch.cat(chunks, dim=-1)


# ---------------------------------------------------------------- math blocks


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis: x * rsqrt(mean(x^2) + eps) * w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """down(silu(gate x) * up x); all Ling MLPs and experts are bias-free."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def dense_mlp(x: torch.Tensor, w: LayerWeights, prefix: str) -> torch.Tensor:
    """SwiGLU MLP whose three projections live under ``prefix`` (dense layer or shared experts)."""
    return swiglu(x, w(prefix + "gate_proj.weight"), w(prefix + "up_proj.weight"), w(prefix + "down_proj.weight"))


def mix_experts(x: torch.Tensor, idx: torch.Tensor, gates: torch.Tensor, w: LayerWeights) -> torch.Tensor:
    """Sum_k gates[n, k] * Expert_idx[n, k](x[n]) for x [N, H]; loads only experts that got a token."""
    out = torch.zeros_like(x)
    for e in torch.unique(idx).tolist():
        rows, slots = (idx == e).nonzero(as_tuple=True)  # tokens routed to e, and at which rank
        y = dense_mlp(x[rows], w, f"mlp.experts.{e}.")  # [n_e, H]
        out.index_add_(0, rows, y * gates[rows, slots].unsqueeze(-1))
    return out


def moe_block(x: torch.Tensor, w: LayerWeights, args: CommonArgs, router) -> torch.Tensor:
    """Routed experts plus the shared MLP for x [B, T, H]; ``router`` maps [N, H] -> (idx, gates)."""
    flat = x.reshape(-1, x.shape[-1])  # [B, T, H] -> [N, H]
    idx, gates = router(flat, w)  # [N, k] each
    tap = MOE_TAP.get()
    if tap is not None:
        tap(flat, idx, w)
    out = mix_experts(flat, idx, gates, w)
    if args.num_shared_experts:
        out = out + dense_mlp(flat, w, "mlp.shared_experts.")
    return out.view_as(x)


def _yarn_inv_freq(theta: float, dim: int, scaling: dict) -> tuple[torch.Tensor, float]:
    """DeepSeek-style YaRN from the v1 remote code: ramp-blended inv_freq and a cos/sin scale."""
    s = {**YARN_DEFAULTS, **{k: v for k, v in scaling.items() if v is not None}}
    factor, orig = s["factor"], s["original_max_position_embeddings"]

    def correction_dim(rotations: float) -> float:  # dim index whose wavelength fits `rotations` turns
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(s["beta_fast"])), 0)
    high = min(math.ceil(correction_dim(s["beta_slow"])), dim - 1)
    if low == high:
        high += 0.001  # ref: v1 yarn_linear_ramp_mask, avoids a zero division
    extra = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # [dim/2]
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1 = high-frequency pair kept as trained, 0 = fully interpolated
    inv_freq = (extra / factor) * (1 - keep) + extra * keep

    def get_mscale(m: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    return inv_freq, get_mscale(s["mscale"]) / get_mscale(s["mscale_all_dim"])


def rope_cos_sin(theta: float, rot_dim: int, scaling: dict | None,
                 seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables [T, rot_dim] for positions 0..T-1 (rotate_half layout: freqs repeated twice)."""
    positions = torch.arange(seq_len, dtype=torch.float32)
    scale = 1.0
    kind = scaling["rope_type"] if scaling else None
    if kind == "yarn":
        inv_freq, scale = _yarn_inv_freq(theta, rot_dim, scaling)
    else:
        inv_freq = 1.0 / theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float32) / rot_dim)
        if kind == "linear":
            positions = positions / scaling["factor"]
    freqs = torch.outer(positions, inv_freq)  # [T, rot/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [T, rot]; pair i is (i, i + rot/2)
    return emb.cos() * scale, emb.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the leading ``cos.shape[-1]`` dims of x [B, heads, T, d]; the rest pass through."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)  # rotate_half
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax(q k^T / sqrt(d) + causal) v with GQA; q [B, nh, T, d], k/v [B, nkv, T, d] -> [B, nh, T, d]."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # [B, nkv, T, d] -> [B, nh, T, d]; head j reads kv j // groups
    v = v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, nh, T, T]
    t = q.shape[2]
    future = torch.ones(t, t, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


def attention_block(x: torch.Tensor, w: LayerWeights, args: CommonArgs, cos: torch.Tensor,
                    sin: torch.Tensor, *, qk_norm: bool = False) -> torch.Tensor:
    """Fused-QKV GQA attention with RoPE (and v2 per-head QK RMSNorm before RoPE); x [B, T, H]."""
    b, t, _ = x.shape
    nh, nkv, d = args.num_attention_heads, args.num_key_value_heads, args.head_dim
    rows = (nh + 2 * nkv) * d
    qkv = F.linear(x, w("attention.query_key_value.weight", (rows, args.hidden_size)),
                   w.maybe("attention.query_key_value.bias", args.use_qkv_bias, (rows,)))
    qkv = qkv.view(b, t, nh + 2 * nkv, d)  # [B, T, (nh+2nkv)*d] -> [B, T, nh+2nkv, d]
    q, k, v = (part.transpose(1, 2) for part in qkv.split([nh, nkv, nkv], dim=2))  # [B, heads, T, d]
    if qk_norm:
        q = rms_norm(q, w("attention.query_layernorm.weight", (d,)), args.rms_norm_eps)  # per head
        k = rms_norm(k, w("attention.key_layernorm.weight", (d,)), args.rms_norm_eps)
    o = causal_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)  # [B, nh, T, d]
    o = o.transpose(1, 2).reshape(b, t, nh * d)  # [B, nh, T, d] -> [B, T, nh*d]
    return F.linear(o, w("attention.dense.weight", (args.hidden_size, nh * d)),
                    w.maybe("attention.dense.bias", args.use_bias, (args.hidden_size,)))
