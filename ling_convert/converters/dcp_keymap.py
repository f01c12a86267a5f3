"""The Megatron <-> HF key map, driven by `schemas/megatron/bailing_moe.json`.

A rule pairs one Megatron key pattern with one or more HF patterns, an optional
named op from `model/ops.py` (applied forward for Megatron -> HF, inverse
for HF -> Megatron) and optional *stack axes*: placeholders that index leading
axes of the Megatron tensor (`{expert}` of `experts.experts.linear_fc1` [E, 2F, H];
`{layer}` of the layer-stacked `decoder.layers.*` form). Placeholders are named
whole key segments; lookup goes through `core/names.segment_key`, one dict hit per key.

    >>> km = KeyMap(config)                                                     # doctest: +SKIP
    >>> km.match_megatron("decoder.layers.1.mlp.linear_fc2.weight")[1]          # doctest: +SKIP
    {'layer': 1}
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core import schemas
from ..core.names import segment_key
from ..model.arch import detect_architecture, head_dim
from ..model.config import ModelConfig

TABLE = "megatron/bailing_moe.json"


@dataclass(frozen=True)
class Rule:
    megatron: str                 # full Megatron key pattern
    hf: tuple[str, ...]           # full HF name patterns, in op output order
    op: str                       # schema op name ("identity" when none)
    scope: str                    # "any" | "dense" | "moe": which layers export through this rule
    axes: tuple[str, ...]         # placeholders indexing leading axes of the Megatron tensor
    vocab: bool                   # rows = vocabulary (padding trimmed / added)
    export: bool                  # False: import-only spelling (HF -> Megatron uses another rule)
    prefix: str                   # "global" | prefix name from the schema ("decoder", "mtp")


def _rules(table) -> list[Rule]:
    out = []

    def add(spec, mg: str, hf_prefix: str, prefix: str, extra_axes=()):
        hf = spec["hf"] if isinstance(spec["hf"], (list, tuple)) else [spec["hf"]]
        axes = tuple(extra_axes) + ((spec["stack"],) if spec.get("stack") else ())
        out.append(Rule(mg, tuple(hf_prefix + h for h in hf), spec.get("op") or "identity",
                        spec.get("scope", "any"), axes, bool(spec.get("vocab")),
                        bool(spec.get("export", True)) and not extra_axes, prefix))

    for spec in table["global"]:
        add(spec, spec["megatron"], "", "global")
    for pre in table["prefixes"]:
        for spec in table["layer"]:
            add(spec, pre["megatron"] + spec["megatron"], pre["hf"], pre["name"])
            if pre.get("stacked"):   # homogeneous models save all layers as one tensor, layer axis first
                add(spec, pre["stacked"] + spec["megatron"], pre["hf"], pre["name"], ("layer",))
    return out


class KeyMap:
    """The schema's rules bound to one HF config (layer counts, head sizes)."""

    def __init__(self, cfg: dict, table_name: str = TABLE, ops: dict | None = None):
        self.table = schemas.load(table_name)
        self.cfg = cfg
        self.arch = detect_architecture(cfg)
        self.mc = mc = ModelConfig.of(cfg)
        self.n_layers = mc.num_hidden_layers
        self.kinds = mc.layer_kinds
        self.counts = {"layer": self.n_layers, "expert": mc.num_experts, "mtp": mc.mtp_layers}
        self.ops = dict(self.table["ops"], **(ops or {}))
        self.rules = _rules(self.table)
        self.by_megatron: dict[str, Rule] = {}
        self.by_hf: dict[str, list[tuple[Rule, int, tuple[str, ...]]]] = {}   # + the pattern's placeholders
        self._mg_names: dict[str, tuple[str, ...]] = {}    # placeholders per pattern, not re-parsed per key
        for r in self.rules:
            key, self._mg_names[r.megatron] = segment_key(r.megatron)
            assert key not in self.by_megatron, f"two rules for {r.megatron}"   # a schema bug, not input
            self.by_megatron[key] = r
            if r.export:
                for i, h in enumerate(r.hf):
                    norm, names = segment_key(h)
                    self.by_hf.setdefault(norm, []).append((r, i, names))

    # -- names ----------------------------------------------------------------
    def dropped(self, key: str) -> bool:
        return any(s in key for s in self.table["drop"])

    def match_megatron(self, key: str) -> tuple[Rule, dict] | None:
        """(rule, placeholder values from the key) or None; values out of range count as unmapped."""
        norm, values = segment_key(key)
        r = self.by_megatron.get(norm)
        if r is None:
            return None
        vals = dict(zip(self._mg_names[r.megatron], (int(v) for v in values)))
        if any(not 0 <= v < self.counts.get(k, 0) for k, v in vals.items()):
            return None
        return r, self._derive(vals)

    def _derive(self, vals: dict) -> dict:
        if "mtp" in vals:
            vals["mtp_layer"] = self.n_layers + vals["mtp"]
        return vals

    def match_hf(self, name: str) -> tuple[Rule, int, dict] | None:
        """(export rule, output index, values) for a canonical HF name, or None."""
        norm, values = segment_key(name)
        for r, i, names in self.by_hf.get(norm, ()):
            vals = dict(zip(names, (int(v) for v in values)))
            if "mtp_layer" in vals:
                vals["mtp"] = vals["mtp_layer"] - self.n_layers
            if any(not 0 <= vals[k] < self.counts[k] for k in ("layer", "expert", "mtp") if k in vals):
                continue
            layer = vals.get("layer", vals.get("mtp_layer"))
            if r.scope != "any" and (layer is None or not _in_scope(r.scope, self.kinds.get(layer))):
                continue
            return r, i, vals
        return None

    # -- ops --------------------------------------------------------------------
    def op(self, rule: Rule) -> tuple[str, dict]:
        """(ops.OPS name, params with config values filled in) for a rule."""
        if rule.op == "identity":
            return "identity", {}
        spec = self.ops[rule.op]
        known = {**self.cfg, "head_dim": head_dim(self.cfg)}
        return spec["fn"], {k: (int(known[v]) if isinstance(v, str) else v) for k, v in spec["params"].items()}


def _in_scope(scope: str, kind: str | None) -> bool:
    return kind is not None and (scope == "dense") == (kind == "dense")
