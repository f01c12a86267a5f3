"""Config counts checked against the tensors before anything is sized by them.

A config saying 10^9 layers or experts must be refused before code builds per-layer or per-expert
tables (`Architecture.expected_names`, the reference model); a head count or head_dim that does not
match the fused QKV projection would silently compute something else. One pass over the names.

    >>> check_counts(src)          # doctest: +SKIP
"""

from __future__ import annotations

import re

from .arch import Architecture
from .config import ModelConfig, config_int
from .ops import qkv_sizes
from ..core.errors import ConfigSchemaError
from ..core.source import Source

# `model.layers.3.`, `decoder.layers.3.` (Megatron), `blk.3.` (GGUF); experts as `experts.5.`
_LAYER = re.compile(r"(?:^|\.)(?:layers|blk)\.(\d+)\.")
_EXPERT = re.compile(r"experts\.(\d+)\.")
QKV = "model.layers.{layer}.attention.query_key_value.weight"


def _indexed(names, pattern: re.Pattern) -> tuple[int, str] | None:
    """(highest index + 1, the name prefix before it) over names the pattern matches; None if none."""
    best, prefix = -1, ""
    for n in names:
        m = pattern.search(n)
        if m and int(m[1]) > best:
            best, prefix = int(m[1]), n[:m.start(1)]
    return (best + 1, prefix) if best >= 0 else None


def _bound(src: Source, field: str, what: str, pattern: re.Pattern) -> None:
    """Refuse `config[field]` larger than the tensors can hold: the highest indexed name when names
    carry the index, else the largest dimension of any tensor (stacked layers or experts)."""
    n = src.config.get(field)
    if not isinstance(n, int) or isinstance(n, bool):
        return
    found = _indexed(src.infos, pattern)
    if found is not None:
        have, prefix = found
        where = f"{what} 0-{have - 1} only (no {prefix}{have}.)"
    else:
        have = max((d for i in src.infos.values() for d in i.shape), default=0)
        where = f"no dimension larger than {have}"
    if n > have:
        raise ConfigSchemaError(f"config {field} is {n} but the tensors hold {where}", path=src.path,
                                fix=f"correct {field} in config.json (or pass the model's own config)")


def _check_qkv(a: Architecture, src: Source) -> None:
    cfg = src.config
    linear = a.linear_layers(cfg)
    softmax = next((i for i in range(config_int(cfg, "num_hidden_layers")) if i not in linear), None)
    info = src.infos.get(QKV.format(layer=softmax)) if softmax is not None else None
    if info is None or not info.shape:
        return
    mc = ModelConfig.of(cfg)
    heads, groups, hd = mc.num_attention_heads, mc.num_key_value_heads, mc.head_dim
    want = sum(qkv_sizes(heads, groups, hd))
    if info.shape[0] != want:
        raise ConfigSchemaError(
            f"config gives (num_attention_heads {heads} + 2 x num_key_value_heads {groups}) x head_dim {hd} = {want} "
            f"rows, but {QKV.format(layer=softmax)} has {info.shape[0]}", path=src.path,
            fix="correct num_attention_heads / num_key_value_heads / head_dim in config.json")


def _plausible(cfg: dict, n: int) -> bool:
    """Counts that per-layer/per-expert tables can be built for at a size proportional to the tensors
    (an HF checkpoint holds about 3 tensors per layer and expert); only others need the name scan."""
    layers, experts = cfg.get("num_hidden_layers"), cfg.get("num_experts") or 1
    return all(isinstance(v, int) and 0 < v <= n for v in (layers, experts)) and layers * experts <= 2 * n + 64


def check_counts(a: Architecture, src: Source) -> None:
    """Layer and expert counts bounded by the tensors; heads and head_dim matched to the QKV rows."""
    if not _plausible(src.config, len(src.infos)):
        _bound(src, "num_hidden_layers", "layers", _LAYER)
        _bound(src, "num_experts", "experts", _EXPERT)
    _check_qkv(a, src)
