"""Architecture registry: which Ling model a config describes, and its tensor names.

Dispatch is on `architectures[0]`, never `model_type` (Ling-2.0 configs say
`bailing_moe`, the v1 string). Tensor-name tables are data in `schemas/arch/`.

    >>> a = detect_architecture({"architectures": ["BailingMoeV2ForCausalLM"], ...})  # doctest: +SKIP
    >>> a.expected_names(config)[:2]                                                   # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core import schemas
from ..core.errors import ConfigSchemaError, UnknownArchitectureError
from .config import ModelConfig, config_int, head_dim  # noqa: F401  (head_dim: re-exported)


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str
    hf_architectures: tuple[str, ...]
    table: object  # the frozen schemas/arch/<name>.json

    def layer_kinds(self, cfg: dict) -> dict[int, str]:
        """layer index -> 'dense' | 'moe' | 'mtp' (MTP layers follow the main stack)."""
        return ModelConfig.of(cfg).layer_kinds

    def linear_layers(self, cfg: dict) -> frozenset[int]:
        """Main layers with linear attention (hybrid tables carry a `layer_pattern`); empty otherwise."""
        pattern = self.table.get("layer_pattern")
        if not pattern:
            return frozenset()
        return linear_layer_set(ModelConfig.of(cfg).num_hidden_layers, config_int(cfg, pattern["field"], pattern["default"]))

    def expected_names(self, cfg: dict) -> list[str]:
        """Every tensor name a complete checkpoint of this config holds."""
        names: list[str] = []
        kinds = self.layer_kinds(cfg)
        for spec in self.table["tensors"]:
            if not _applies(spec, cfg):
                continue
            scope = spec["scope"]
            if scope == "global":
                names.append(spec["name"])
                continue
            if scope == "linear":  # hybrid models: tensors only linear-attention layers hold
                names.extend(spec["name"].format(layer=i) for i in sorted(self.linear_layers(cfg)))
                continue
            for layer, kind in kinds.items():
                if _in_scope(scope, kind):
                    names.extend(_expand(spec["name"], layer, cfg, scope))
        return names


def linear_layer_set(n_layers: int, group: int) -> frozenset[int]:
    """Linear-attention layers under the `layer_group_size` rule of the first-party v1-linear code.

    Layer l is softmax iff (l+1) % group == 0 or l >= n_layers // group * group (schemas/hybrid/layer_pattern.json).

    >>> sorted(linear_layer_set(28, 7))[:7]
    [0, 1, 2, 3, 4, 5, 7]
    """
    if group < 1:
        raise ConfigSchemaError(f"layer_group_size must be >= 1, got {group}", fix="set layer_group_size to 1 or more")
    tail = n_layers // group * group
    return frozenset(i for i in range(n_layers) if (i + 1) % group and i < tail)


def _applies(spec, cfg: dict) -> bool:
    if "when" in spec and not cfg.get(spec["when"]):
        return False
    if "unless" in spec and cfg.get(spec["unless"]):
        return False
    return True


def _in_scope(scope: str, kind: str) -> bool:
    # MTP layers carry a full attention block and a sparse MoE block plus their own norms.
    return {"layer": True, "dense": kind == "dense", "moe": kind in ("moe", "mtp"),
            "expert": kind in ("moe", "mtp"), "mtp": kind == "mtp"}[scope]


def _expand(pattern: str, layer: int, cfg: dict, scope: str) -> list[str]:
    if scope == "expert":
        return [pattern.format(layer=layer, expert=e) for e in range(ModelConfig.of(cfg).num_experts)]
    return [pattern.format(layer=layer)]


def all_architectures() -> dict[str, Architecture]:
    out = {}
    for fname in schemas.listing("arch"):
        t = schemas.load(f"arch/{fname}")
        out[t["name"]] = Architecture(t["name"], t["summary"], tuple(t["architectures"]), t)
    return out


def detect_architecture(cfg: dict | None, where: str | Path | None = None) -> Architecture:
    if not cfg:
        raise ConfigSchemaError("config.json is missing", path=where,
                                fix="copy the model's config.json next to the weights (or pass --config-from)")
    archs = cfg.get("architectures")
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str)):
        raise ConfigSchemaError("'architectures' must be a non-empty list of strings", path=where,
                                fix='set e.g. "architectures": ["BailingMoeV2ForCausalLM"]')
    for a in all_architectures().values():
        if archs[0] in a.hf_architectures:
            check_config(a, cfg, where)
            return a
    known = sorted(s for a in all_architectures().values() for s in a.hf_architectures)
    raise UnknownArchitectureError(f"unknown architecture {archs[0]!r}", path=where,
                                   fix=f"supported: {', '.join(known)}")


def check_config(a: Architecture, cfg: dict, where=None) -> None:
    for key in a.table.get("required_config", ()):
        v = cfg.get(key)
        if v is None:
            raise ConfigSchemaError(f"field {key!r} is missing", path=where,
                                    fix=f"add {key!r} as in the published {a.hf_architectures[0]} config")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigSchemaError(f"field {key!r} must be a number, got {v!r}", path=where,
                                    fix=f"set {key!r} to a number")
        # Counts size loops and divisions (head_dim = hidden / heads): positive integers only.
        if v <= 0 or (not key.endswith("_eps") and not isinstance(v, int)):
            raise ConfigSchemaError(f"field {key!r} must be a positive {'number' if key.endswith('_eps') else 'integer'}"
                                    f", got {v!r}", path=where, fix=f"set {key!r} as in the published config")


def param_counts(a: Architecture, cfg: dict, infos: dict) -> dict:
    """Total, activated (per token) and MTP parameter counts from tensor shapes."""
    kinds = a.layer_kinds(cfg)
    n_main = ModelConfig.of(cfg).num_hidden_layers
    E, k = config_int(cfg, "num_experts", 1), config_int(cfg, "num_experts_per_tok", 1)
    total = mtp = routed = 0
    for name, info in infos.items():
        total += info.numel
        layer = _layer_of(name)
        if layer is not None and layer >= n_main and kinds.get(layer) == "mtp":
            mtp += info.numel
        elif ".mlp.experts." in name:
            routed += info.numel
    main = total - mtp
    return {"total": total, "main": main, "mtp": mtp,
            "activated": main - routed + (routed * k // E if E else routed)}


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
        return int(parts[2])
    return None
