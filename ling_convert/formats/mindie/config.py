"""HF config.json <-> MindIE model config.json, by the declared rewrites in
`schemas/mindie/model_config_rewrites.json` (pure functions; inputs are never mutated).

    >>> mindie_cfg, applied = to_mindie_config(hf_cfg)          # doctest: +SKIP
    >>> restore_hf_config(mindie_cfg, bak=None) == hf_cfg        # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from ...core import schemas
from ...core.errors import BadInputError, ConfigSchemaError, UnsupportedError
from ...model.config import head_dim_is_derived

REWRITES = "mindie/model_config_rewrites.json"
VARIANTS = ("lite", "plus")


def table():
    return schemas.load(REWRITES)


def check_supported(cfg: dict | None, where: str | Path | None = None) -> None:
    """Refuse configs that have no MindIE variant (anything but BailingMoe v1)."""
    t = table()
    archs = (cfg or {}).get("architectures") or ["<none>"]
    if archs[0] not in t["architectures"]:
        raise UnsupportedError(
            f"no MindIE layout exists for {archs[0]!r}: the Ling MindIE recipe covers only "
            f"{', '.join(t['architectures'])} ({t['supported_models']}), variants {' and '.join(VARIANTS)}",
            path=where, fix="serve Ling 2.0 (BailingMoeV2) models on Ascend with vllm-ascend instead")


def check_variant(variant: str | None) -> str:
    if variant not in VARIANTS:
        raise BadInputError(f"unknown MindIE variant {variant!r}", fix=f"use one of: {', '.join(VARIANTS)}")
    return variant


def infer_variant(cfg: dict) -> str:
    """'plus' for an 88-layer model, 'lite' for 28 layers and for anything else (the tiny models)."""
    t = table()
    return t["variant_by_layers"].get(str(cfg.get("num_hidden_layers")), t["default_variant"])


def check_requirements(cfg: dict, where=None, *, fold_norm_head: bool = False) -> None:
    """Fields MindIE cannot honour (it always normalises lm_head and never ties it)."""
    for req in table()["requires"]:
        value = cfg.get(req["key"], req["hf_default"])
        if value == req["equals"] or (req.get("unless_option") == "fold_norm_head" and fold_norm_head):
            continue
        fix = ("pass --fold-norm-head to fold the lm_head column norms into model.norm.weight"
               if req.get("unless_option") else f"set {req['key']} to {req['equals']} in a re-exported checkpoint")
        raise UnsupportedError(f"MindIE needs {req['key']}={str(req['equals']).lower()}, this checkpoint has "
                               f"{value!r}: {req['why']}", path=where, fix=fix)


def to_mindie_config(hf: dict) -> tuple[dict, list[str]]:
    """Apply the declared rewrites; returns (new config, one line per change applied)."""
    cfg, applied = copy.deepcopy(hf), []
    for rw in table()["rewrites"]:
        op = rw["op"]
        if op == "rename" and rw["from"] in cfg:
            if rw["to"] in cfg and cfg[rw["to"]] != cfg[rw["from"]]:
                raise ConfigSchemaError(f"both {rw['from']!r} and {rw['to']!r} are set and disagree",
                                        fix=f"keep only {rw['to']!r}")
            cfg[rw["to"]] = cfg.pop(rw["from"])
            applied.append(f"renamed {rw['from']} -> {rw['to']}")
        elif op == "drop_if_derivable" and rw["key"] in cfg and head_dim_is_derived(cfg):
            applied.append(f"dropped {rw['key']}={cfg.pop(rw['key'])!r}")
        elif op == "materialise_default" and rw["key"] not in cfg:
            cfg[rw["key"]] = rw["hf_default"]
            applied.append(f"set {rw['key']}={rw['hf_default']!r} (HF default; MindIE's default differs)")
    return cfg, applied


def normalise_spelling(cfg: dict) -> tuple[dict, list[str]]:
    """Only the renames (for reading dirs made by the public recipe, e.g. plus-base's n_routed_experts)."""
    out, applied = copy.deepcopy(cfg), []
    for rw in table()["rewrites"]:
        if rw["op"] == "rename" and rw["from"] in out and rw["to"] not in out:
            out[rw["to"]] = out.pop(rw["from"])
            applied.append(f"renamed {rw['from']} -> {rw['to']}")
    return out, applied


def restore_hf_config(mindie: dict, bak: dict | None, where=None) -> tuple[dict, str]:
    """The HF config: the `.bak` when it agrees with the MindIE config on every size field,
    otherwise the MindIE config with its renames undone (dropped/derivable keys stay absent)."""
    current, _ = normalise_spelling(mindie)
    if bak is None:
        return current, "inverted the declared rewrites (no config.json.bak)"
    check_supported(bak, where)
    bak_n, _ = normalise_spelling(bak)
    for key in table()["size_fields"]:
        if key in current and key in bak_n and current[key] != bak_n[key]:
            raise ConfigSchemaError(
                f"config.json.bak says {key}={bak_n[key]!r} but config.json says {current[key]!r}", path=where,
                fix="the backup belongs to another model; delete config.json.bak to restore by inverting the rewrites")
    if (current.get("head_dim") or 0) != (bak_n.get("head_dim") or 0) and not head_dim_is_derived(bak_n):
        raise ConfigSchemaError(f"config.json.bak head_dim {bak_n.get('head_dim')!r} disagrees with config.json",
                                path=where, fix="delete config.json.bak to restore by inverting the rewrites")
    return copy.deepcopy(bak), "restored from config.json.bak"


def recipe_config(variant: str, base: bool) -> dict:
    """The public file's field values for one variant (facts table; used by tests and docs)."""
    pub = table()["published"]
    return {**thaw(pub["common"]), **thaw(pub[f"{check_variant(variant)}-{'base' if base else 'chat'}"])}


def thaw(obj):
    """A plain, mutable copy of a frozen schemas table."""
    if isinstance(obj, tuple):
        return [thaw(v) for v in obj]
    if hasattr(obj, "items"):
        return {k: thaw(v) for k, v in obj.items()}
    return obj


# -- schemas of the files a MindIE dir holds --------------------------------------------

LAYOUT = "mindie/layout.json"


def layout():
    return schemas.load(LAYOUT)


@lru_cache(maxsize=None)
def _schema(name: str) -> dict:
    # Raw (unfrozen) dict: jsonschema walks plain dicts.
    return json.loads((schemas.schemas_dir() / "mindie" / f"{name}.schema.json").read_text())


def schema_problems(obj, name: str) -> list[str]:
    """One line per JSON Schema violation of `schemas/mindie/<name>.schema.json`."""
    import jsonschema
    v = jsonschema.Draft202012Validator(_schema(name))
    out = []
    for e in sorted(v.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = "/".join(map(str, e.absolute_path)) or "(top level)"
        out.append(f"{where}: {e.message[:200]}")
    return out
