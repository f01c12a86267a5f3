"""Validate an HF config.json against `schemas/config/*.json`, plus a few cross-field rules.

Each problem names the field (dotted path), the expected value and what was found:

    >>> cfg = tiny_config("ling-lite", hidden_size="64")                      # doctest: +SKIP
    >>> validate_config(cfg)[0].line()                                      # doctest: +SKIP
    "field 'hidden_size': expected integer >= 1, got \\"64\\""

The schema is picked by `architectures[0]` from each schema's `x-architectures` list, so a new
architecture needs only a new JSON file. Shared pieces are referenced by `urn:ling-convert:config:*`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..core.errors import ConfigSchemaError, UnknownArchitectureError
from ..core.schemas import schemas_dir

MISSING = object()
SUBDIR = "config"


@dataclass(frozen=True)
class Problem:
    field: str
    expected: str
    got: Any = MISSING

    def line(self) -> str:
        got = "missing" if self.got is MISSING else f"got {_short(self.got)}"
        return f"field {self.field!r}: expected {self.expected}, {got}"


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@lru_cache(maxsize=None)
def _all_schemas(root: str) -> dict[str, dict]:
    out = {}
    for p in sorted(Path(root, SUBDIR).glob("*.json")):
        doc = json.loads(p.read_text())
        out[doc.get("$id", p.stem)] = doc
    return out


def all_schemas() -> dict[str, dict]:
    """Every schema in `schemas/config/`, keyed by `$id`."""
    return _all_schemas(str(schemas_dir()))


def _registry():
    from referencing import Registry, Resource
    return Registry().with_resources((sid, Resource.from_contents(doc)) for sid, doc in all_schemas().items())


def architecture_schemas() -> dict[str, str]:
    """`architectures[0]` string -> schema `$id`."""
    return {a: sid for sid, doc in all_schemas().items() for a in doc.get("x-architectures", ())}


def schema_for(cfg: dict, where: str | Path | None = None) -> str:
    """The `$id` of the schema for this config; unknown architectures get a one-line error."""
    archs = cfg.get("architectures")
    known = architecture_schemas()
    name = archs[0] if isinstance(archs, list) and archs else None
    if name not in known:
        raise UnknownArchitectureError(f"field 'architectures': expected a list starting with one of "
                                       f"{sorted(known)}, got {_short(archs)}", path=where,
                                       fix="check config.json; only BailingMoe v1/v2 configs have schemas")
    return known[name]


# ---------------------------------------------------------------- describing errors


def expected_of(schema: Any) -> str:
    """Human text for what a (sub)schema accepts, e.g. 'integer >= 1', 'one of "fp8"'."""
    if not isinstance(schema, dict):
        return "a valid value"
    if "$ref" in schema:
        return expected_of(all_schemas().get(schema["$ref"], {}))
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    types = schema.get("type")
    text = " or ".join(types) if isinstance(types, list) else (types or "")
    bounds = [f"{op} {schema[k]}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                ("maximum", "<="), ("exclusiveMaximum", "<")) if k in schema]
    if bounds:
        text = f"{text} {' and '.join(bounds)}".strip()
    if schema.get("minItems") is not None and schema.get("minItems") == schema.get("maxItems"):
        text += f" of {schema['minItems']} items"
    elif "minItems" in schema:
        text += f" of at least {schema['minItems']} items"
    if isinstance(schema.get("items"), dict):
        text += f" ({expected_of(schema['items'])} each)"
    return text or "a valid value"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _property_schema(field: str, error) -> Any:
    # `required` may sit in a different sub-schema than the property (allOf/$ref): search all.
    props = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    if field in props:
        return props[field]
    for doc in all_schemas().values():
        if field in doc.get("properties", {}) and doc["properties"][field].get("type"):
            return doc["properties"][field]
    return {}


def _describe(error) -> list[Problem]:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        return [Problem(_join(path, r), expected_of(_property_schema(r, error))) for r in missing]
    return [Problem(path or "(config)", expected_of(error.schema), error.instance)]


# ---------------------------------------------------------------- cross-field rules


def _ints(cfg: dict, *keys: str) -> list[int] | None:
    vals = [cfg.get(k) for k in keys]
    ok = all(isinstance(v, int) and not isinstance(v, bool) for v in vals)
    return vals if ok else None


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rope_rules(cfg: dict) -> list[Problem]:
    rs = cfg.get("rope_scaling")
    if not isinstance(rs, dict):
        return []
    out = []
    if rs.get("type") is not None and rs.get("rope_type") is not None and rs["type"] != rs["rope_type"]:
        out.append(Problem("rope_scaling.rope_type", f"{json.dumps(rs['type'])} (same as rope_scaling.type)",
                           rs["rope_type"]))
    kind = rs.get("rope_type", rs.get("type"))
    factor, orig, mpe = rs.get("factor"), rs.get("original_max_position_embeddings"), cfg.get("max_position_embeddings")
    if kind == "yarn" and _num(factor) and _num(orig) and _num(mpe) and mpe != round(factor * orig):
        # transformers recomputes the YaRN factor as max_position_embeddings / original when both exist.
        out.append(Problem("max_position_embeddings",
                           f"{round(factor * orig)} (= rope_scaling.factor {factor} x "
                           f"original_max_position_embeddings {orig})", mpe))
    return out


def _shape_rules(cfg: dict) -> list[Problem]:
    out = []
    if (v := _ints(cfg, "num_attention_heads", "num_key_value_heads")) and v[1] and v[0] % v[1]:
        out.append(Problem("num_key_value_heads", f"a divisor of num_attention_heads ({v[0]})", v[1]))
    if (v := _ints(cfg, "num_experts", "num_experts_per_tok")) and v[1] > v[0]:
        out.append(Problem("num_experts_per_tok", f"<= num_experts ({v[0]})", v[1]))
    if (v := _ints(cfg, "num_hidden_layers", "first_k_dense_replace")) and v[1] > v[0]:
        out.append(Problem("first_k_dense_replace", f"<= num_hidden_layers ({v[0]})", v[1]))
    if (v := _ints(cfg, "num_experts", "n_group")) and v[1] and v[0] % v[1]:
        out.append(Problem("n_group", f"a divisor of num_experts ({v[0]})", v[1]))
    if (v := _ints(cfg, "n_group", "topk_group")) and v[1] > v[0]:
        out.append(Problem("topk_group", f"<= n_group ({v[0]})", v[1]))
    return out


# ---------------------------------------------------------------- entry points


def validate_config(cfg: Any, where: str | Path | None = None) -> list[Problem]:
    """Every problem with `cfg`, schema errors first (sorted by field), then cross-field rules."""
    from jsonschema import Draft202012Validator
    if not isinstance(cfg, dict):
        return [Problem("(config)", "a JSON object", cfg)]
    schema = all_schemas()[schema_for(cfg, where)]
    validator = Draft202012Validator(schema, registry=_registry())
    problems: list[Problem] = []
    for err in sorted(validator.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path]):
        problems.extend(p for p in _describe(err) if p not in problems)
    problems.extend(p for p in _rope_rules(cfg) + _shape_rules(cfg) if p not in problems)
    return problems


def check_config(cfg: Any, where: str | Path | None = None) -> str:
    """Raise one ConfigSchemaError listing every problem; return the schema `$id` when valid."""
    problems = validate_config(cfg, where)
    if problems:
        n = len(problems)
        head = f"{n} problem{'s' if n > 1 else ''}: " if n > 1 else ""
        raise ConfigSchemaError(head + "; ".join(p.line() for p in problems), path=where,
                                fix="edit config.json to match, or regenerate it from the source checkpoint")
    return schema_for(cfg, where)
