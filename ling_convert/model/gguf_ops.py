"""Named tensor ops between the HF layout and llama.cpp's GGUF layout, each with its inverse.

`schemas/gguf/<arch>.json` names an op per mapping entry; `to-gguf` runs `forward`,
`from-gguf` runs `inverse`, so export and import come from one definition.

    >>> w = torch.arange(8.).reshape(4, 2)              # 1 head, head_dim 4
    >>> torch.equal(rope_unpermute(rope_permute(w, 1), 1), w)
    True
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..core.errors import BadInputError
from .config import ModelConfig
from .ops import IDENTITY, Op, qkv_sizes, same, split_qkv, stack, unstack
from ..core.source import PartedSource, Source, Thunk, as_parted, torch_dtype  # noqa: F401  (as_parted: re-exported)

# llama.cpp's converter bakes norm_head as the HF modeling code's compute_logit does:
# W / (||W||_2 over dim 0 + 1e-7) (tests/test_gguf.py checks the baked output).
NORM_HEAD_EPS = 1e-7


# -- RoPE row order ---------------------------------------------------------------

def rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF rotate_half rows (i, i + d/2) -> llama.cpp NORM interleaved pairs (2i, 2i + 1), per head."""
    rows = w.shape[0]
    # [n_head*d, ...] -> [n_head, 2, d/2, ...] -> swap the half axis and the pair axis -> back
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def rope_unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of `rope_permute`."""
    rows = w.shape[0]
    # [n_head*d, ...] -> [n_head, d/2, 2, ...] -> swap back -> [n_head*d, ...]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _heads(cfg: Mapping) -> tuple[int, int, int]:
    mc = ModelConfig.of(cfg)
    return mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim


def qkv_rows(cfg: Mapping) -> tuple[int, int, int]:
    """Rows of Q, K and V in the fused query_key_value weight: [n_h*d | n_kv*d | n_kv*d]."""
    return qkv_sizes(*_heads(cfg))


# -- the ops (GGUF ops take the model config as their params) ---------------------------------

def _split_shapes(cfg, shapes):
    (rows, cols), = shapes
    q, k, v = qkv_rows(cfg)
    if rows != q + k + v:
        raise BadInputError(f"query_key_value has {rows} rows; the config implies {q}+{k}+{v}",
                            fix="check num_attention_heads, num_key_value_heads and head_dim in config.json")
    return [(q, cols), (k, cols), (v, cols)]


def _split_permute(cfg, ts):
    nh, nkv, d = _heads(cfg)
    q, k, v = split_qkv(ts[0], nh, nkv, d)
    return [rope_permute(q, nh), rope_permute(k, nkv), v.contiguous()]


def _merge_shapes(cfg, shapes):
    return [(sum(s[0] for s in shapes), shapes[0][1])]


def _unpermute_merge(cfg, ts):
    q, k, v = ts
    nh, nkv, _ = _heads(cfg)
    return [torch.cat([rope_unpermute(q, nh), rope_unpermute(k, nkv), v], dim=0)]


def _stack_shapes(cfg, shapes):
    if len(set(shapes)) != 1:
        raise BadInputError(f"experts of one layer differ in shape: {sorted(set(shapes))}",
                            fix="the checkpoint is inconsistent; re-export it")
    return [(len(shapes), *shapes[0])]


def _stack(cfg, ts):
    # experts stacked on a new axis 0: GGUF ne = {in, out, n_expert}
    return stack(ts, dim=0)


def _unstack_shapes(cfg, shapes):
    (n, *rest), = shapes
    return [tuple(rest)] * n


def _unstack(cfg, ts):
    return [t.clone() for t in unstack(ts, dim=0)]   # clone: a slice must not pin the whole stack


def _norm_head(cfg, ts):
    if not cfg.get("norm_head"):
        return list(ts)
    w = ts[0].float()
    return [w / (w.norm(dim=0, keepdim=True) + NORM_HEAD_EPS)]


OPS: dict[str, Op] = {
    "identity": IDENTITY,
    # v1 attention: fused QKV -> q, k, v with Q/K in llama.cpp's NORM rope order; inverse merges back.
    "split_qkv_rope_permute": Op("split_qkv_rope_permute", _split_shapes, _split_permute,
                                 _merge_shapes, _unpermute_merge),
    # experts e=0..E-1 -> one [E, out, in] tensor; inverse slices it again.
    "stack_experts": Op("stack_experts", _stack_shapes, _stack, _unstack_shapes, _unstack),
    # NOTE: not invertible; the inverse keeps the normalised head and the config says norm_head false.
    "bake_norm_head": Op("bake_norm_head", same, _norm_head, same, same, float_out=True, exact=False),
}


def get_op(name: str | None) -> Op:
    return OPS[name or "identity"]


# -- lazy application ---------------------------------------------------------------

class TakeOnce:
    """Run a many-output op once and hand each output out once, so q, k, v cost one read."""

    def __init__(self, compute: Callable[[], list[torch.Tensor]]):
        self.compute = compute
        self.pending: dict[int, torch.Tensor] | None = None

    def take(self, i: int) -> torch.Tensor:
        if self.pending is None or i not in self.pending:
            self.pending = dict(enumerate(self.compute()))
        return self.pending.pop(i)


def output_thunks(fn: Callable[[dict, list[torch.Tensor]], list[torch.Tensor]], cfg: dict,
                  inputs: list[Thunk], n_out: int, cast=None) -> list[Thunk]:
    """Thunks for each output of `fn(cfg, [inputs...])`, cast to `cast` (a torch dtype or a
    safetensors code) if given; inputs are read only when asked."""
    def compute():
        outs = fn(cfg, [t() for t in inputs])
        return [o.to(torch_dtype(cast)) if cast is not None else o for o in outs]
    if n_out == 1:
        return [lambda: compute()[0]]
    box = TakeOnce(compute)
    return [lambda i=i: box.take(i) for i in range(n_out)]


def slice_thunks(src: Source, name: str, n: int) -> list[Thunk]:
    """Thunks for `src.load(name)[i]`, i < n: per-slice reads when the Source offers them."""
    parts = getattr(src, "parts", {}).get(name)
    if parts is not None and len(parts) == n:
        return list(parts)
    box = TakeOnce(lambda: _unstack({}, [src.load(name)]))
    return [lambda i=i: box.take(i) for i in range(n)]
