"""One `Op` type: a named many-to-many tensor re-layout with its declared inverse, on data and on shapes.

Every direction takes `(params, inputs)`, params a mapping. The Megatron table (`OPS` here), the GGUF
table (`model/gguf_ops.py`) and the hybrid-linear recipe (`converters/hybrid.py`) all hold `Op`s, so
one definition drives both directions (Megatron -> HF runs `forward`, HF -> Megatron `inverse`):

    >>> fwd, inv = OPS["split"]                                  # the two directions, f(tensors, **params)
    >>> gate, up = fwd([fc1], parts=2, dim=0)                    # doctest: +SKIP
    >>> inv([gate, up], parts=2, dim=0)[0].equal(fc1)            # doctest: +SKIP
    True

The ops are pure (no I/O); the shape functions give the same ops on shapes only, so callers plan
outputs without reading data. NOTE: not meta tensors: the first torch.cat on `meta` imports torch's
decompositions (seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch

Tensors = list["torch.Tensor"]
Shapes = list[tuple[int, ...]]


@dataclass(frozen=True)
class Op:
    """A re-layout and its inverse; `exact` is False where the inverse only undoes the move, not the value."""

    name: str
    forward_shapes: Callable[[Mapping, Shapes], Shapes]
    forward: Callable[[Mapping, Tensors], Tensors]
    inverse_shapes: Callable[[Mapping, Shapes], Shapes]
    inverse: Callable[[Mapping, Tensors], Tensors]
    float_out: bool = False        # forward always yields float32 (a value change, not a move)
    exact: bool = True             # inverse(forward(x)) == x bit for bit

    def __iter__(self) -> Iterator[Callable[..., Tensors]]:
        """`fwd, inv = op`: the two directions as plain functions of (tensors, **params)."""
        yield lambda ts, **p: self.forward(p, ts)
        yield lambda ts, **p: self.inverse(p, ts)


def keyword_op(name: str, *fns: Callable, **flags) -> Op:
    """An Op from its four functions (Op's field order) written as f(inputs, **params)."""
    def bind(f):
        return lambda p, xs: f(xs, **p)
    return Op(name, *map(bind, fns), **flags)


def _one(ts: Tensors, op: str) -> torch.Tensor:
    if len(ts) != 1:
        raise ValueError(f"{op} takes 1 tensor, got {len(ts)}")
    return ts[0]


# -- identity ----------------------------------------------------------------

def same(params: Mapping, xs: list) -> list:
    return list(xs)


IDENTITY = Op("identity", same, same, same, same)


# -- split / concatenate (gated MLP fc1 = [gate; up]) --------------------------

def split(ts: Tensors, parts: int = 2, dim: int = 0) -> Tensors:
    """One tensor -> `parts` equal slices along `dim` (views, no copy)."""
    x = _one(ts, "split")
    if x.shape[dim] % parts:
        raise ValueError(f"dim {dim} of size {x.shape[dim]} does not split into {parts} equal parts")
    return list(x.chunk(parts, dim))


def concat(ts: Tensors, parts: int = 2, dim: int = 0) -> Tensors:
    if len(ts) != parts:
        raise ValueError(f"concat expects {parts} tensors, got {len(ts)}")
    return [torch.cat(ts, dim)]


# -- unstack / stack (experts stored as one [E, ...] tensor) -----------------------

def unstack(ts: Tensors, dim: int = 0) -> Tensors:
    return list(_one(ts, "unstack").unbind(dim))


def stack(ts: Tensors, dim: int = 0) -> Tensors:
    return [torch.stack(ts, dim)]


# -- fused QKV: [Q; K; V] rows, the one split every layout starts from ------------------------

def qkv_sizes(num_heads: int, num_groups: int, head_dim: int) -> tuple[int, int, int]:
    """Rows of Q, K and V in a fused [Q; K; V] tensor: [heads*d | groups*d | groups*d]."""
    return num_heads * head_dim, num_groups * head_dim, num_groups * head_dim


def split_qkv(x: torch.Tensor, num_heads: int, num_groups: int, head_dim: int) -> Tensors:
    """[Q; K; V] -> [q, k, v] (views); `num_groups` is the KV head count."""
    sizes = qkv_sizes(num_heads, num_groups, head_dim)
    if x.shape[0] != sum(sizes):
        raise ValueError(f"fused QKV has {x.shape[0]} rows; heads {num_heads}, KV heads {num_groups} and "
                         f"head_dim {head_dim} give {'+'.join(map(str, sizes))}")
    return list(x.split(sizes, 0))


# -- Megatron per-query-group rows <-> HF [Q; K; V] -------------------------------------------

def _qkv_dims(rows: int, num_heads: int, num_groups: int, head_dim: int) -> int:
    if num_heads % num_groups:
        raise ValueError(f"{num_heads} heads do not divide into {num_groups} query groups")
    want = (num_heads + 2 * num_groups) * head_dim
    if rows != want:
        raise ValueError(f"fused QKV has {rows} rows; (heads {num_heads} + 2 x groups {num_groups}) "
                         f"x head_dim {head_dim} = {want}")
    return num_heads // num_groups


def qkv_grouped_to_concat(ts: Tensors, num_heads: int, num_groups: int, head_dim: int) -> Tensors:
    """[groups x (q_per_group + 2) x head_dim, ...] -> [all Q; all K; all V] (weight or bias)."""
    x = _one(ts, "qkv")
    qpg = _qkv_dims(x.shape[0], num_heads, num_groups, head_dim)
    rest = tuple(x.shape[1:])
    g = x.reshape(num_groups, qpg + 2, head_dim, *rest)           # [ng, q/g + k + v, d, ...]
    q = g[:, :qpg].reshape(num_heads * head_dim, *rest)
    k = g[:, qpg].reshape(num_groups * head_dim, *rest)
    v = g[:, qpg + 1].reshape(num_groups * head_dim, *rest)
    return [torch.cat([q, k, v], 0)]


def qkv_concat_to_grouped(ts: Tensors, num_heads: int, num_groups: int, head_dim: int) -> Tensors:
    x = _one(ts, "qkv")
    qpg = _qkv_dims(x.shape[0], num_heads, num_groups, head_dim)
    rest = tuple(x.shape[1:])
    q, k, v = split_qkv(x, num_heads, num_groups, head_dim)
    g = torch.cat([q.reshape(num_groups, qpg, head_dim, *rest),          # [ng, q/g, d, ...]
                   k.reshape(num_groups, 1, head_dim, *rest),
                   v.reshape(num_groups, 1, head_dim, *rest)], 1)
    return [g.reshape(x.shape[0], *rest)]


# -- vocabulary rows (padding to a multiple of the TP size is trained but unused) -----------

def trim_rows(ts: Tensors, rows: int) -> Tensors:
    x = _one(ts, "trim_rows")
    if rows > x.shape[0]:
        raise ValueError(f"cannot keep {rows} rows of a tensor with {x.shape[0]}")
    return [x[:rows]]


def pad_rows(ts: Tensors, rows: int) -> Tensors:
    """Zero-pad dim 0 up to `rows` (the inverse of `trim_rows` up to the dropped padding)."""
    x = _one(ts, "pad_rows")
    if rows < x.shape[0]:
        raise ValueError(f"cannot pad a tensor with {x.shape[0]} rows down to {rows}")
    if rows == x.shape[0]:
        return [x]
    return [torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))], 0)]


# -- shapes without data --------------------------------------------------------------

def _split_shape(ss: Shapes, parts: int = 2, dim: int = 0) -> Shapes:
    (s,) = ss
    if s[dim] % parts:
        raise ValueError(f"dim {dim} of size {s[dim]} does not split into {parts} equal parts")
    return [tuple(d // parts if i == dim else d for i, d in enumerate(s))] * parts


def _concat_shape(ss: Shapes, parts: int = 2, dim: int = 0) -> Shapes:
    if len(ss) != parts or len({s[:dim] + s[dim + 1:] for s in ss}) != 1:
        raise ValueError(f"cannot concatenate shapes {ss} along dim {dim}")
    s = ss[0]
    return [s[:dim] + (sum(x[dim] for x in ss),) + s[dim + 1:]]


def _unstack_shape(ss: Shapes, dim: int = 0) -> Shapes:
    (s,) = ss
    return [s[:dim] + s[dim + 1:]] * s[dim]


def _stack_shape(ss: Shapes, dim: int = 0) -> Shapes:
    if len(set(ss)) != 1:
        raise ValueError(f"cannot stack different shapes {sorted(set(ss))}")
    return [ss[0][:dim] + (len(ss),) + ss[0][dim:]]


def _qkv_shape(ss: Shapes, num_heads: int, num_groups: int, head_dim: int) -> Shapes:
    (s,) = ss
    _qkv_dims(s[0], num_heads, num_groups, head_dim)
    return [s]


def _rows_shape(shrink: bool):
    def shape(ss: Shapes, rows: int) -> Shapes:
        (s,) = ss
        if (rows > s[0]) if shrink else (rows < s[0]):
            raise ValueError(f"cannot {'keep' if shrink else 'pad to'} {rows} rows of a tensor with {s[0]}")
        return [(rows, *s[1:])]
    return shape


OPS: dict[str, Op] = {
    "identity": IDENTITY,
    "split": keyword_op("split", _split_shape, split, _concat_shape, concat),
    "unstack": keyword_op("unstack", _unstack_shape, unstack, _stack_shape, stack),
    "qkv_grouped": keyword_op("qkv_grouped", _qkv_shape, qkv_grouped_to_concat, _qkv_shape, qkv_concat_to_grouped),
    "trim_rows": keyword_op("trim_rows", _rows_shape(True), trim_rows, _rows_shape(False), pad_rows),
}


def apply(name: str, ts: Tensors, *, inverse: bool = False, **params) -> Tensors:
    """Run op `name` forward (or inverse) with `params`."""
    op = OPS[name]
    return (op.inverse if inverse else op.forward)(params, ts)


def out_shapes(name: str, shapes: list[tuple[int, ...]], dtype: torch.dtype | None = None, *,
               inverse: bool = False, **params) -> list[tuple[int, ...]]:
    """Output shapes for input shapes, without touching data (raises ValueError like the op)."""
    op = OPS[name]
    return (op.inverse_shapes if inverse else op.forward_shapes)(params, [tuple(s) for s in shapes])
