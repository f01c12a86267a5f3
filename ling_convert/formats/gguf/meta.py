"""GGUF metadata for the Ling family: config <-> llama.cpp keys, and the tokenizer.

Both directions read the same table (`schemas/gguf/<arch>.json`, "metadata"): each
entry names a key, its GGUF type and where the value comes from (config fields, a
named derivation, or a constant). Export writes every entry; import sets the config
fields back from the keys, so the recovered config is what llama.cpp computes with.

    >>> cfg = tiny_config("ling-mini-2")
    >>> [k for k, _, _ in metadata_values(cfg, table_for_config(cfg))][:2]     # doctest: +SKIP
    ['bailingmoe2.context_length', 'bailingmoe2.embedding_length']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from ...core import bounded, schemas
from ...model.config import config_int, derived_head_dim, head_dim
from ...core.errors import BadInputError, ConfigSchemaError, UnknownArchitectureError, UnsupportedError

HF_CONFIG_KEY = "ling_convert.hf_config"   # the HF config.json the file was made from (llama.cpp ignores it)
QUANTIZATION_VERSION = 2                    # ref: gguf.GGML_QUANT_VERSION
VT = gguf.GGUFValueType


# -- tables ----------------------------------------------------------------------------

def tables() -> dict[str, Any]:
    """gguf arch name -> frozen table from schemas/gguf/."""
    out = {}
    for fname in schemas.listing("gguf"):
        t = schemas.load(f"gguf/{fname}")
        if "gguf_arch" in t:
            out[t["gguf_arch"]] = t
    return out


def refuse_if_unsupported(cfg: dict | None, where=None) -> None:
    """Raise UnsupportedError for architectures llama.cpp cannot run (hybrid linear, MLA...)."""
    arch = ((cfg or {}).get("architectures") or [None])[0]
    why = schemas.load("gguf/refused.json")["architectures"].get(arch)
    if why:
        raise UnsupportedError(f"{arch} is not supported by llama.cpp: {why}", path=where,
                               fix="GGUF export covers BailingMoeForCausalLM and BailingMoeV2ForCausalLM only")


def table_for_config(cfg: dict | None, where=None):
    refuse_if_unsupported(cfg, where)
    arch = ((cfg or {}).get("architectures") or [None])[0]
    for t in tables().values():
        if arch in t["hf_architectures"]:
            return t
    known = sorted(a for t in tables().values() for a in t["hf_architectures"])
    raise UnsupportedError(f"architecture {arch!r} has no llama.cpp GGUF mapping", path=where,
                           fix=f"GGUF export supports: {', '.join(known)}")


def table_for_arch(gguf_arch: str, where=None):
    t = tables().get(gguf_arch)
    if t is None:
        raise UnknownArchitectureError(f"GGUF architecture {gguf_arch!r} is not a Ling architecture", path=where,
                                       fix=f"ling-convert reads: {', '.join(sorted(tables()))}")
    return t


# -- derivations: config -> value, and value -> config ------------------------------------

def rope_theta(cfg: dict) -> float:
    return float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0)


def rope_dim_partial(cfg: dict) -> int:
    """v2 rotated dims: rotary_dim, else head_dim * partial_rotary_factor, else head_dim.

    NOTE: the HF v2 code's default factor is 1.0; llama.cpp's converter assumes 0.5. We follow HF so the GGUF computes what the checkpoint's own code computes.
    """
    d = head_dim(cfg)
    if cfg.get("rotary_dim"):
        return config_int(cfg, "rotary_dim")
    f = cfg.get("partial_rotary_factor", (cfg.get("rope_parameters") or {}).get("partial_rotary_factor"))
    return int(d * float(f)) if f is not None else d


def _set_rope_partial(v, cfg, kv):
    if cfg.get("rotary_dim"):   # Ling-1T's spelling; it wins over the factor
        cfg["rotary_dim"] = int(v)
    else:
        cfg["partial_rotary_factor"] = int(v) / head_dim(cfg)


def _check_rope_full(v, cfg, kv):
    if int(v) != head_dim(cfg):
        raise UnsupportedError(f"rope.dimension_count {v} != head_dim {head_dim(cfg)}; BailingMoe v1 rotates the "
                               "whole head", fix="this file was not made from a BailingMoe v1 checkpoint")


def _set_block_count(v, cfg, kv):
    cfg["num_hidden_layers"] = int(v) - int(kv.get("nextn_predict_layers") or 0)


def _set_head_dim(v, cfg, kv):
    # absent/0 head_dim means hidden/heads: only spell it out when the config did or it differs
    if cfg.get("head_dim") or int(v) != derived_head_dim(cfg):
        cfg["head_dim"] = int(v)


def _set_shexp(v, cfg, kv):
    # the loader multiplies the per-expert width by expert_shared_count
    cfg["moe_shared_expert_intermediate_size"] = int(v) * config_int(cfg, "num_shared_experts", 1)


DERIVE: dict[str, tuple[Callable[[dict], Any], Callable[[Any, dict, dict], None]]] = {
    "block_count": (lambda c: int(c["num_hidden_layers"]) + int(c.get("num_nextn_predict_layers") or 0),
                    _set_block_count),
    "rope_theta": (rope_theta, lambda v, c, kv: _set_float(c, "rope_theta", v)),
    "head_dim": (head_dim, _set_head_dim),
    "rope_dim_partial": (rope_dim_partial, _set_rope_partial),
    "rope_dim_full": (head_dim, _check_rope_full),
    "shexp_ff": (lambda c: int(c["moe_intermediate_size"]), _set_shexp),
}


def _set_float(cfg: dict, field: str, v) -> None:
    # Keep the config's own spelling when it is the same float32 (1e-06 stays 1e-06).
    old = cfg.get(field)
    if not (isinstance(old, (int, float)) and np.float32(old) == np.float32(v)):
        cfg[field] = float(np.float32(v).item()) if not isinstance(v, bool) else v


# -- export -------------------------------------------------------------------------------

def _config_value(entry, cfg: dict, where):
    for fld in entry["config"]:
        if cfg.get(fld) is not None:
            return cfg[fld]
    if "default" in entry:
        return entry["default"]
    if entry.get("optional"):
        return None
    raise ConfigSchemaError(f"config.json lacks {entry['config'][0]!r}, needed for GGUF key "
                            f"{entry['key']!r}", path=where, fix=f"add {entry['config'][0]!r} to config.json")


def _cast(value, vtype: str):
    return {"UINT32": int, "FLOAT32": float, "BOOL": bool, "STRING": str}[vtype](value)


def metadata_values(cfg: dict, table, where=None) -> list[tuple[str, Any, str]]:
    """(key, value, GGUF type) for every architecture key the table lists, plus rope scaling."""
    arch = table["gguf_arch"]
    out = []
    for e in table["metadata"]:
        if "const" in e:
            v = e["const"]
        elif "derive" in e:
            v = DERIVE[e["derive"]][0](cfg)
        else:
            v = _config_value(e, cfg, where)
        if v is not None:
            out.append((e["key"].format(arch=arch), _cast(v, e["type"]), e["type"]))
    return out + rope_scaling_values(cfg, arch, where)


def rope_scaling_values(cfg: dict, arch: str, where=None) -> list[tuple[str, Any, str]]:
    """YaRN or linear rope-scaling keys; nothing for unscaled RoPE."""
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if not isinstance(rs, dict):
        raise ConfigSchemaError(f"rope_scaling is {bounded.short(rs)}, not an object", path=where,
                                fix="set rope_scaling to null or to an object with rope_type and factor")
    bad = [k for k in ("factor", "beta_fast", "beta_slow", "attention_factor", "attn_factor",
                       "original_max_position_embeddings")
           if rs.get(k) is not None and (isinstance(rs[k], bool) or not isinstance(rs[k], (int, float)))]
    if bad:
        raise ConfigSchemaError(f"rope_scaling.{bad[0]} is {bounded.short(rs[bad[0]])}, not a number", path=where,
                                fix="repair config.json or rerun `ling-convert yarn`")
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return []
    if kind not in ("yarn", "linear") or rs.get("factor") is None:
        raise UnsupportedError(f"rope_scaling {dict(rs)!r} has no GGUF form here", path=where,
                               fix="supported: yarn and linear with a 'factor'")
    k = f"{arch}.rope.scaling."
    out = [(k + "type", kind, "STRING"), (k + "factor", float(rs["factor"]), "FLOAT32")]
    if kind == "yarn":
        orig = rs.get("original_max_position_embeddings")
        if orig is None:
            raise ConfigSchemaError("rope_scaling is yarn but lacks 'original_max_position_embeddings'",
                                    path=where, fix="add it to rope_scaling (llama.cpp requires it for yarn)")
        out.append((k + "original_context_length", int(orig), "UINT32"))
        for src_key, dst in (("beta_fast", "yarn_beta_fast"), ("beta_slow", "yarn_beta_slow"),
                             ("attention_factor", "yarn_attn_factor"), ("attn_factor", "yarn_attn_factor")):
            if rs.get(src_key) is not None:
                out.append((k + dst, float(rs[src_key]), "FLOAT32"))
    return out


def general_values(cfg: dict, name: str, file_type: int) -> list[tuple[str, Any, str]]:
    return [("general.type", "model", "STRING"), ("general.name", name, "STRING"),
            ("general.quantization_version", QUANTIZATION_VERSION, "UINT32"),
            ("general.file_type", int(file_type), "UINT32"),
            (HF_CONFIG_KEY, json.dumps(cfg, sort_keys=True), "STRING")]


def add_values(writer: gguf.GGUFWriter, values: list[tuple[str, Any, str]]) -> None:
    for key, value, vtype in values:
        writer.add_key_value(key, value, VT[vtype])


# -- import ---------------------------------------------------------------------------------

def recover_config(kv: dict[str, Any], table, where=None) -> tuple[dict, list[dict], dict]:
    """HF config from GGUF keys: the embedded config (if any), overridden by every key llama.cpp reads.

    Returns (config, issues, embedded config). A key whose absence (or value) makes llama.cpp compute something the
    HF model does not is read the way llama.cpp reads it and reported in `issues`; `from-gguf`
    refuses such a file unless asked to reproduce llama.cpp (--llama-defaults).
    """
    arch = table["gguf_arch"]
    if HF_CONFIG_KEY in kv:
        base = bounded.parse_json(kv[HF_CONFIG_KEY], f"{where}: {HF_CONFIG_KEY}")
        if not isinstance(base, dict):
            raise BadInputError(f"{HF_CONFIG_KEY} is not a JSON object", path=where, fix="re-export the file")
    else:  # a file from another converter: fill what GGUF keys do not carry
        base = {"architectures": [table["hf_architectures"][0]],
                **{k: v for k, v in table["config_defaults"].items() if k != "comment"}}
    cfg, issues = dict(base), []
    short = {e["key"].format(arch=arch): e["key"].split(".", 1)[1] for e in table["metadata"]}
    kv_short = {short[k]: v for k, v in kv.items() if k in short}
    for e in table["metadata"]:
        key = e["key"].format(arch=arch)
        if key in kv:
            _apply(e, kv[key], cfg, kv_short, key, issues, where)
        elif not e.get("optional"):
            why = e.get("silent_if_missing")
            if "llama_default" not in e:
                raise BadInputError(f"GGUF lacks metadata key {key!r}, which llama.cpp requires", path=where,
                                    fix="re-export the file with `ling-convert to-gguf`")
            issues.append({"key": key, "problem": f"missing: {why or 'llama.cpp uses a default'}",
                           "llama_default": e["llama_default"]})
            _apply(e, e["llama_default"], cfg, kv_short, key, None, where)
    _recover_rope_scaling(kv, arch, cfg)
    if any(e.get("op") == "bake_norm_head" for e in table["tensors"]) and cfg.get("norm_head"):
        cfg["norm_head"] = False   # `output` holds the normalised head already
    return cfg, issues, base


def refuse_llama_defaults(src, allowed: bool) -> None:
    """Fail closed on a GGUF that llama.cpp would run differently from the HF model (unless `allowed`)."""
    issues = (src.notes.get("gguf") or {}).get("llama_defaults") or []
    if issues and not allowed:
        more = f" (+{len(issues) - 1} more)" if len(issues) > 1 else ""
        raise BadInputError(f"{issues[0]['key']} {issues[0]['problem']}{more}", path=src.path,
                            fix="re-export with `ling-convert to-gguf`, or pass --llama-defaults to read it the way "
                                "llama.cpp does")


def _apply(e, v, cfg: dict, kv_short: dict, key: str, issues: list | None, where) -> None:
    if "const" in e:
        if issues is not None and _cast(v, e["type"]) != e["const"]:
            issues.append({"key": key, "problem": f"is {v!r}; the HF model computes as if it were "
                           f"{e['const']!r} ({e.get('comment', '')})"})
        return
    if "derive" in e:
        DERIVE[e["derive"]][1](v, cfg, kv_short)
        return
    fld = next((f for f in e["config"] if f in cfg), e["config"][-1])
    if e["type"] == "FLOAT32":
        _set_float(cfg, fld, v)
    else:
        cfg[fld] = _cast(v, e["type"])


def _recover_rope_scaling(kv: dict, arch: str, cfg: dict) -> None:
    k = f"{arch}.rope.scaling."
    kind = kv.get(k + "type")
    if kind in (None, "none"):
        if (cfg.get("rope_scaling") or {}).get("factor") is not None:
            cfg["rope_scaling"] = None  # the file says unscaled: that is what llama.cpp runs
        return
    rs = dict(cfg.get("rope_scaling") or {})
    rs["rope_type" if "rope_type" in rs or "type" not in rs else "type"] = kind
    for gkey, field in (("factor", "factor"), ("original_context_length", "original_max_position_embeddings"),
                        ("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
        if k + gkey in kv:
            _set_float(rs, field, kv[k + gkey]) if gkey != "original_context_length" else \
                rs.__setitem__(field, int(kv[k + gkey]))
    cfg["rope_scaling"] = rs


def read_kv(reader: gguf.GGUFReader, *, skip_arrays: bool = True) -> dict[str, Any]:
    """Scalar and string fields as Python values (token arrays skipped: they are large)."""
    out = {}
    for key, f in reader.fields.items():
        if skip_arrays and f.types and f.types[0] == VT.ARRAY:
            continue
        out[key] = f.contents()
    return out


# -- tokenizer ----------------------------------------------------------------------------

TT = gguf.TokenType


def tokenizer_dir(aux: dict[str, Path], option: str | Path | None, where=None) -> Path:
    """Where the tokenizer files are: --tokenizer-dir, else beside the source checkpoint."""
    if option:
        d = Path(option)
        if not (d / "tokenizer.json").is_file():
            raise BadInputError("no tokenizer.json in --tokenizer-dir", path=d,
                                fix="point --tokenizer-dir at the directory holding the model's tokenizer.json")
        return d
    if "tokenizer.json" in aux:
        return Path(aux["tokenizer.json"]).parent
    raise BadInputError("GGUF needs the tokenizer, but there is no tokenizer.json beside the checkpoint",
                        path=where, fix="pass --tokenizer-dir DIR (the directory with the model's tokenizer.json)")


def _looks_special(text: str) -> bool:
    # llama.cpp marks <|...|> (and full-width <｜...｜>) added tokens CONTROL even when not flagged special
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>"))


def vocab_tokens(tok: dict, vocab_size: int, where=None) -> tuple[list[str], list[int]]:
    """Token strings and types by id, padded to vocab_size with [PAD{i}] (UNUSED), as llama.cpp does."""
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedError(f"tokenizer.json model type {model.get('type')!r}; llama.cpp's Ling vocab is "
                               "byte-level BPE", path=where, fix="use the model's own tokenizer.json")
    by_id = {int(i): s for s, i in model.get("vocab", {}).items()}
    added = {int(t["id"]): t for t in tok.get("added_tokens", [])}
    by_id.update({i: t["content"] for i, t in added.items()})
    if by_id and max(by_id) >= vocab_size:
        raise BadInputError(f"tokenizer has token id {max(by_id)} but config vocab_size is {vocab_size}",
                            path=where, fix="the tokenizer does not belong to this checkpoint")
    if "Ċ" not in model.get("vocab", {}):  # byte-level "\n"; llama.cpp refuses a vocab that cannot encode it
        raise BadInputError("tokenizer cannot encode '\\n' (no byte token 'Ċ')", path=where,
                            fix="use the model's own byte-level BPE tokenizer.json")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(TT.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            special = added[i].get("special") or _looks_special(by_id[i])
            types.append(int(TT.CONTROL if special else TT.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(TT.NORMAL))
    return tokens, types


def add_tokenizer(writer: gguf.GGUFWriter, tok_dir: Path, table, vocab_size: int) -> dict:
    """Write the gpt2 vocabulary, merges, special ids and chat template; returns a manifest summary."""
    path = tok_dir / "tokenizer.json"
    try:
        tok = bounded.load_json(path, "tokenizer.json", limit=bounded.MAX_INDEX)
    except BadInputError as e:
        raise BadInputError(f"cannot read tokenizer.json ({e.message})", path=path, fix="repair or replace it") from None
    tokens, types = vocab_tokens(tok, vocab_size, path)
    writer.add_tokenizer_model("gpt2")
    # NOTE: bailingmoe and bailingmoe2 map to the same llama.cpp regex; pin by arch.
    writer.add_tokenizer_pre(table["pre_tokenizer"])
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tok_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise BadInputError("tokenizer.json has no BPE merges; llama.cpp refuses a BPE vocab without them",
                            path=path, fix="use the model's own tokenizer.json")
    special.add_to_gguf(writer, quiet=True)
    return {"dir": str(tok_dir), "tokens": len(tokens), "padded": types.count(int(TT.UNUSED)),
            "merges": len(special.merges), "special_ids": dict(special.special_token_ids),
            "chat_template": special.chat_template is not None}


def copy_tokenizer(writer: gguf.GGUFWriter, gguf_path: Path) -> dict:
    """Re-quantising a GGUF: carry its tokenizer.* keys over unchanged."""
    r = gguf.GGUFReader(gguf_path)
    keys = [k for k in r.fields if k.startswith("tokenizer.")]
    for k in keys:
        f = r.fields[k]
        writer.add_key_value(k, f.contents(), f.types[0], sub_type=f.types[-1] if f.types[0] == VT.ARRAY else None)
    return {"copied_from": str(gguf_path), "keys": len(keys)}
