"""Pure config rewrites behind one normaliser: RoPE-scaling spellings in, YaRN on and off.

Every function returns a new dict and never mutates its argument. The reference forward
must build RoPE from the same normalised dict (`normalize_rope_scaling`), so what
`ling-convert yarn` writes is exactly what `verify` runs.

    >>> cfg = {"max_position_embeddings": 32768, "rope_scaling": None}
    >>> new = apply_yarn(cfg, 4)
    >>> new["max_position_embeddings"], new["rope_scaling"]["type"], new["rope_scaling"]["rope_type"]
    (131072, 'yarn', 'yarn')
    >>> remove_yarn(new) == cfg
    True
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ..core.errors import BadInputError, UnsupportedError

# Both spellings are written: Ling's v1 remote code reads `type`, transformers >= 4.40 reads
# `rope_type` (falling back to `type`), transformers 5 moved everything under `rope_parameters`.
SPELLINGS = ("type", "rope_type")
UNSCALED = (None, "default", "none")
_INT_KEYS = ("original_max_position_embeddings",)
_FLOAT_KEYS = ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor")


def _raw_scaling(config: dict) -> Any:
    raw = config.get("rope_scaling")
    if raw is None:
        raw = config.get("rope_parameters")  # transformers >= 5 spelling (carries rope_theta too)
    return raw


def _number(value: Any, field: str, *, integer: bool = False) -> float | int:
    # bool is an int subclass in Python; a `true` factor is a typo, not 1.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (integer and float(value) != int(value)):
        kind = "an integer" if integer else "a finite number"
        raise BadInputError(f"field {field!r}: expected {kind}, got {value!r}",
                            fix="repair config.json or rerun `ling-convert yarn`")
    return int(value) if integer else float(value)


def normalize_rope_scaling(config: dict) -> dict | None:
    """`rope_scaling` (or transformers-5 `rope_parameters`) as one spelling, or None when unscaled.

    The result has `rope_type` first, `factor` as float, `original_max_position_embeddings` as int,
    and no `type` or `rope_theta`. Other keys (beta_fast, mscale, ...) pass through.

    >>> normalize_rope_scaling({"rope_scaling": {"type": "yarn", "factor": 4}})
    {'rope_type': 'yarn', 'factor': 4.0}
    """
    raw = _raw_scaling(config)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadInputError(f"field 'rope_scaling': expected an object or null, got {raw!r}",
                            fix="set rope_scaling to null or to an object with rope_type and factor")
    kinds = {raw[k] for k in SPELLINGS if raw.get(k) is not None}
    if len(kinds) > 1:
        raise BadInputError(f"field 'rope_scaling': 'type' and 'rope_type' disagree ({sorted(kinds)})",
                            fix="make both spellings name the same scaling")
    kind = next(iter(kinds), None)
    rest = {k: v for k, v in raw.items() if k not in (*SPELLINGS, "rope_theta")}
    if kind in UNSCALED:
        if rest.get("factor") is not None:
            raise BadInputError("field 'rope_scaling.rope_type': missing, but a factor is set",
                                fix="add \"rope_type\": \"yarn\" (or linear/dynamic)")
        return None
    for key in _FLOAT_KEYS:
        if rest.get(key) is not None:
            rest[key] = _number(rest[key], f"rope_scaling.{key}")
    for key in _INT_KEYS:
        if rest.get(key) is not None:
            rest[key] = _number(rest[key], f"rope_scaling.{key}", integer=True)
    return {"rope_type": kind, **rest}


def spelled(scaling: dict | None) -> dict | None:
    """A normalised scaling dict with both `type` and `rope_type`, for writing back to config.json."""
    if scaling is None:
        return None
    kind = scaling["rope_type"]
    return {"type": kind, "rope_type": kind, **{k: v for k, v in scaling.items() if k != "rope_type"}}


def rope_theta(config: dict) -> float | None:
    """`rope_theta`, or transformers-5 `rope_parameters.rope_theta`; None when neither is set."""
    theta = config.get("rope_theta")
    if theta is None and isinstance(config.get("rope_parameters"), dict):
        theta = config["rope_parameters"].get("rope_theta")
    return None if theta is None else _number(theta, "rope_theta")


def normalize_config(config: dict) -> dict:
    """One canonical spelling of the RoPE fields: top-level `rope_theta`, `rope_scaling` with both
    spellings (or null), no `rope_parameters`. Used by `config show/diff --normalized`.

    >>> normalize_config({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    {'rope_theta': 1000000.0, 'rope_scaling': None}
    """
    out = copy.deepcopy(config)
    scaling = spelled(normalize_rope_scaling(config))
    theta = rope_theta(config)
    out.pop("rope_parameters", None)
    if theta is not None:
        out["rope_theta"] = theta
    out["rope_scaling"] = scaling
    return out


def check_factor(factor: Any) -> float:
    """A YaRN factor: a finite number > 1 (strings from the CLI are parsed here too)."""
    value = factor
    if isinstance(factor, str):
        try:
            value = float(factor)
        except ValueError:
            value = None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 1
    if not ok:
        raise BadInputError(f"--factor: expected a finite number > 1, got {factor!r}",
                            fix="e.g. --factor 4; use --remove to go back to the original context length")
    return float(value)


def check_positive_int(value: Any, field: str) -> int:
    """A positive integer (CLI strings accepted), naming `field` when it is not."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise BadInputError(f"{field}: expected a positive integer, got {value!r}") from None
    n = _number(value, field, integer=True)
    if n < 1:
        raise BadInputError(f"{field}: expected a positive integer, got {value!r}")
    return n


def _max_positions(config: dict) -> int:
    if config.get("max_position_embeddings") is None:
        raise BadInputError("field 'max_position_embeddings': missing; YaRN needs the trained context length",
                            fix="pass --original-max-position-embeddings N")
    return check_positive_int(config["max_position_embeddings"], "field 'max_position_embeddings'")


def apply_yarn(cfg: dict, factor: float, original_max_position_embeddings: int | None = None) -> dict:
    """New config with YaRN scaling by `factor`; idempotent (applying twice equals once).

    The original context defaults to an existing YaRN's `original_max_position_embeddings`, else to
    the current `max_position_embeddings`. `max_position_embeddings` becomes factor x original:
    NOTE: transformers' YaRN derives its attention factor from max_position_embeddings /
    original_max_position_embeddings when both are set, so the two must agree with `factor`.
    """
    factor = check_factor(factor)
    current = normalize_rope_scaling(cfg)
    if current is not None and current["rope_type"] != "yarn":
        raise UnsupportedError(f"config already has {current['rope_type']!r} RoPE scaling; YaRN would stack on it",
                               fix="remove that scaling from config.json first")
    if original_max_position_embeddings is not None:
        original = check_positive_int(original_max_position_embeddings, "--original-max-position-embeddings")
    else:
        original = (current or {}).get("original_max_position_embeddings") or _max_positions(cfg)
    extras = {k: v for k, v in (current or {}).items()
              if k not in ("rope_type", "factor", "original_max_position_embeddings")}
    scaling = {"type": "yarn", "rope_type": "yarn", "factor": factor,
               "original_max_position_embeddings": original, **extras}
    out = copy.deepcopy(cfg)
    out["rope_scaling"] = scaling
    out["max_position_embeddings"] = int(round(factor * original))
    if isinstance(cfg.get("rope_parameters"), dict):
        # transformers 5 reads only rope_parameters; keep its rope_theta and mirror the scaling there.
        theta = cfg["rope_parameters"].get("rope_theta")
        params = {k: v for k, v in scaling.items() if k != "type"}
        out["rope_parameters"] = {**params, **({"rope_theta": theta} if theta is not None else {})}
    return out


def remove_yarn(cfg: dict) -> dict:
    """New config without YaRN: `max_position_embeddings` back to the original; a no-op otherwise.

    `remove_yarn(apply_yarn(c, f)) == c` for configs in either the transformers-4 form
    (`rope_scaling: null`) or the transformers-5 form (`rope_parameters`, no `rope_scaling`).
    """
    current = normalize_rope_scaling(cfg)
    out = copy.deepcopy(cfg)
    if current is None or current["rope_type"] != "yarn":
        return out
    original = current.get("original_max_position_embeddings")
    if original is not None:
        out["max_position_embeddings"] = original
    if isinstance(cfg.get("rope_parameters"), dict):
        theta = cfg["rope_parameters"].get("rope_theta")
        out["rope_parameters"] = {"rope_type": "default", **({"rope_theta": theta} if theta is not None else {})}
        out.pop("rope_scaling", None)
    else:
        out["rope_scaling"] = None
    return out


def yarn_state(cfg: dict) -> dict | None:
    """`{"factor", "original_max_position_embeddings"}` when the config has YaRN, else None."""
    s = normalize_rope_scaling(cfg)
    if s is None or s["rope_type"] != "yarn":
        return None
    return {"factor": s["factor"], "original_max_position_embeddings": s.get("original_max_position_embeddings")}


def diff(a: Any, b: Any, prefix: str = "") -> list[dict]:
    """Changed fields from `a` to `b`, descending only where both sides are objects:
    [{"field": dotted path, "change": added|removed|changed, "a", "b"}]. 4 vs 4.0 counts as a change.

    >>> diff({"rope_scaling": None, "x": 1}, {"rope_scaling": {"factor": 4.0}, "x": 1})
    [{'field': 'rope_scaling', 'change': 'changed', 'a': None, 'b': {'factor': 4.0}}]
    """
    rows: list[dict] = []
    for key in list(a) + [k for k in b if k not in a]:
        name = f"{prefix}.{key}" if prefix else str(key)
        if key not in b:
            rows.append({"field": name, "change": "removed", "a": a[key], "b": None})
        elif key not in a:
            rows.append({"field": name, "change": "added", "a": None, "b": b[key]})
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            rows.extend(diff(a[key], b[key], name))
        elif a[key] != b[key] or type(a[key]) is not type(b[key]):
            rows.append({"field": name, "change": "changed", "a": a[key], "b": b[key]})
    return rows
