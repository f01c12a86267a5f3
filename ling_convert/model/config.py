"""A typed view of config.json, built once: the numbers every module asks for, each rule written once.

    >>> mc = ModelConfig.of(cfg)                                  # doctest: +SKIP
    >>> mc.head_dim, mc.layer_kinds[mc.num_hidden_layers]         # doctest: +SKIP
    (128, 'mtp')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..core.errors import ConfigSchemaError


def derived_head_dim(cfg: Mapping) -> int:
    """hidden / heads: what an absent, 0 or null `head_dim` means (HF's `or` rule)."""
    return config_int(cfg, "hidden_size") // config_int(cfg, "num_attention_heads")


def head_dim(cfg: Mapping) -> int:
    """`head_dim` from the config; 0/None means hidden/heads (Ling-plus has heads*head_dim != hidden)."""
    hd = cfg.get("head_dim")
    return config_int(cfg, "head_dim") if hd else derived_head_dim(cfg)


def head_dim_is_derived(cfg: Mapping) -> bool:
    """True when `head_dim` is absent or says what hidden/heads says anyway."""
    hd = cfg.get("head_dim")
    return not hd or config_int(cfg, "head_dim") == derived_head_dim(cfg)


def config_int(cfg: Mapping, key: str, default: int | None = None) -> int:
    """The integer at `key`; absent, 0 or null means `default` when one is given. Bad values name the key."""
    v = cfg.get(key)
    if not v and default is not None:
        return default
    if v is None:
        raise ConfigSchemaError(f"field {key!r} is missing", fix=f"add {key!r} to config.json")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ConfigSchemaError(f"field {key!r} must be a number, got {v!r}", fix=f"set {key!r} to a number") from None


def _int(cfg: Mapping, key: str) -> int:
    return config_int(cfg, key, 0)


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    first_k_dense_replace: int
    mtp_layers: int
    num_experts: int
    experts_per_token: int
    shared_experts: int
    vocab_size: int

    @classmethod
    def of(cls, cfg: Mapping) -> "ModelConfig":
        heads = _int(cfg, "num_attention_heads")
        return cls(hidden_size=config_int(cfg, "hidden_size"), num_attention_heads=heads,
                   num_key_value_heads=config_int(cfg, "num_key_value_heads", heads), head_dim=head_dim(cfg),
                   num_hidden_layers=config_int(cfg, "num_hidden_layers"),
                   first_k_dense_replace=_int(cfg, "first_k_dense_replace"),
                   mtp_layers=_int(cfg, "num_nextn_predict_layers"), num_experts=_int(cfg, "num_experts"),
                   experts_per_token=_int(cfg, "num_experts_per_tok"), shared_experts=_int(cfg, "num_shared_experts"),
                   vocab_size=config_int(cfg, "vocab_size"))

    @property
    def layer_kinds(self) -> dict[int, str]:
        """layer index -> 'dense' | 'moe' | 'mtp' (MTP layers follow the main stack)."""
        n, k = self.num_hidden_layers, self.first_k_dense_replace
        kinds = {i: ("dense" if i < k else "moe") for i in range(n)}
        kinds.update({n + j: "mtp" for j in range(self.mtp_layers)})
        return kinds
