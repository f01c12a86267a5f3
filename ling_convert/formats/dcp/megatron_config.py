"""Megatron training args (common.pt) <-> HF config.json for Ling, and vocab/tokenizer facts.

The 1:1 field pairs and constants are data (`schemas/megatron/config.json`);
the few fields that need a rule (GQA groups, head_dim, dense-layer count,
shared experts, vocab) are the functions below.

    >>> cfg = hf_config_from_args(vars(args), "iter_0001000/common.pt")   # doctest: +SKIP
    >>> cfg["architectures"]
    ['BailingMoeV2ForCausalLM']
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from ...core import bounded, schemas
from ...model.config import ModelConfig
from ...core.errors import ConfigSchemaError, UnsupportedError

TABLE = "megatron/config.json"
_FIX_CFG = "pass --config-from DIR with the model's HF config.json"


def _is_v2(args: dict) -> bool:
    # Ling-2.0 trains with QK-norm, sigmoid routing and an expert bias; v1 has none of them.
    return bool(args.get("qk_layernorm") or args.get("moe_router_enable_expert_bias")
                or args.get("moe_router_score_function") == "sigmoid" or args.get("mtp_num_layers"))


def hf_config_from_args(args: dict, where) -> dict:
    """HF BailingMoeV2 config.json from Megatron args (Ling-V2 template, without its defects)."""
    if not _is_v2(args):
        raise ConfigSchemaError("common.pt args do not describe a Ling-2.0 (BailingMoeV2) model, and a v1 "
                                "config (norm_head etc.) cannot be derived from Megatron args", path=where,
                                fix=_FIX_CFG)
    t = schemas.load(TABLE)
    cfg = _thaw(t["hf_template"])
    for hf, a in t["same"].items():
        v = args.get(a)
        cfg[hf] = t["hf_defaults"].get(hf) if v is None else v
    if cfg.get("max_position_embeddings") is None:
        cfg["max_position_embeddings"] = args.get("seq_length")
    heads = _need(args, "num_attention_heads", where)
    gqa = args.get("group_query_attention", True) and args.get("num_query_groups")
    cfg["num_key_value_heads"] = int(args["num_query_groups"]) if gqa else int(heads)
    # NOTE: Ling-V2's converter assumes hidden/heads; kv_channels is the real head size.
    cfg["head_dim"] = int(args.get("kv_channels") or _need(args, "hidden_size", where) // heads)
    cfg["first_k_dense_replace"] = first_k_dense(args, where)
    cfg["num_shared_experts"] = _shared_experts(args, where)
    cfg["tie_word_embeddings"] = not args.get("untie_embeddings_and_output_weights", False)
    cfg["router_dtype"] = cfg.get("router_dtype") or "fp32"
    cfg["vocab_size"] = args_vocab(args)
    cfg["eos_token_id"] = cfg["pad_token_id"] = None   # filled from the tokenizer when one is given
    return cfg


# Megatron tensors that exist only when a setting is on, and the HF config values they imply.
# ref: tests/dcp_fixtures.py (the Megatron names of a Ling-2.0 layer).
IMPLIED = (
    ("mlp.router.expert_bias", {"moe_router_enable_expert_bias": True, "score_function": "sigmoid"}),
    ("self_attention.q_layernorm.", {"use_qk_norm": True}),
    ("self_attention.linear_qkv.bias", {"use_qkv_bias": True}),
)


def check_against_tensors(args: dict, names, where) -> None:
    """A config derived from args must agree with the tensors present: a tensor that needs a setting the
    args do not give (or contradict) is refused, never filled in with a default."""
    same = schemas.load(TABLE)["same"]
    names = list(names)
    for part, implied in IMPLIED:
        has = any(part in n for n in names)
        for field, want in implied.items():
            arg, given = same[field], args.get(same[field])
            if has and given is None:
                raise ConfigSchemaError(f"the checkpoint holds {part} tensors, which need {field}={want!r}, but "
                                        f"common.pt args lack {arg!r}", path=where, fix=_FIX_CFG)
            if (has and given != want) or (not has and want is True and given is True):
                raise ConfigSchemaError(f"common.pt args give {arg}={given!r} but the checkpoint "
                                        f"{'holds' if has else 'lacks'} {part} tensors", path=where, fix=_FIX_CFG)


def _thaw(obj):
    """A mutable deep copy of a frozen schema value (MappingProxyType/tuple -> dict/list)."""
    if hasattr(obj, "items"):
        return {k: _thaw(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return [_thaw(v) for v in obj]
    return obj


def _need(args: dict, key: str, where):
    if args.get(key) is None:
        raise ConfigSchemaError(f"common.pt args lack {key!r}", path=where, fix=_FIX_CFG)
    return args[key]


def first_k_dense(args: dict, where) -> int:
    """Leading dense layers, from Ling's own arg or Megatron's `moe_layer_freq` (never eval'd)."""
    for key in ("first_k_dense_replace", "first_k_dense"):
        if args.get(key) is not None:
            return int(args[key])
    freq = args.get("moe_layer_freq", 1)
    if isinstance(freq, str):                  # Megatron accepts "([0]*1+[1]*19)"; parse, do not eval
        m = re.fullmatch(r"\(?\[0\]\*(\d+)\+\[1\]\*(\d+)\)?", freq.replace(" ", ""))
        if not m:
            raise UnsupportedError(f"moe_layer_freq {freq!r} is not '[0]*k+[1]*n'", path=where, fix=_FIX_CFG)
        return int(m.group(1))
    if isinstance(freq, int):
        if freq != 1:
            raise UnsupportedError(f"moe_layer_freq={freq} interleaves dense layers; Ling has leading dense "
                                   "layers only", path=where, fix=_FIX_CFG)
        return 0
    freq = list(freq)
    k = freq.index(1) if 1 in freq else len(freq)
    if any(f != 1 for f in freq[k:]):
        raise UnsupportedError("moe_layer_freq has a dense layer after a MoE layer", path=where, fix=_FIX_CFG)
    return k


def _shared_experts(args: dict, where) -> int:
    shared, ffn = args.get("moe_shared_expert_intermediate_size"), args.get("moe_ffn_hidden_size")
    if not shared:
        return 0
    if not ffn or shared % ffn:
        # The HF model sizes the shared expert as moe_intermediate_size * num_shared_experts.
        raise UnsupportedError(f"shared-expert size {shared} is not a multiple of moe_ffn_hidden_size {ffn}",
                               path=where, fix=_FIX_CFG)
    return shared // ffn


def args_vocab(args: dict) -> int | None:
    """HF vocab_size as Ling's template computes it: vocab rounded up to the divisor (no TP factor)."""
    v = args.get("vocab_size")
    if not v:
        return args.get("padded_vocab_size")
    div = int(args.get("make_vocab_size_divisible_by") or 1)
    return math.ceil(int(v) / div) * div


def args_from_hf_config(cfg: dict, rows: int) -> dict:
    """Megatron args for common.pt from an HF config (`rows` = embedding rows written)."""
    t = schemas.load(TABLE)
    args = {a: cfg.get(hf) for hf, a in t["same"].items()}
    mc = ModelConfig.of(cfg)
    n, k = mc.num_hidden_layers, mc.first_k_dense_replace
    nkv, heads = mc.num_key_value_heads, mc.num_attention_heads
    args.update(dict(t["args_constants"]))
    args.update({
        "num_query_groups": nkv, "group_query_attention": nkv != heads, "kv_channels": mc.head_dim,
        "moe_layer_freq": [0] * k + [1] * (n - k), "first_k_dense_replace": k,
        "untie_embeddings_and_output_weights": not cfg.get("tie_word_embeddings", False),
        "vocab_size": mc.vocab_size, "padded_vocab_size": int(rows),
        "seq_length": cfg.get("max_position_embeddings"),
    })
    return args


# -- tokenizer facts -------------------------------------------------------------------

def _token_text(tok) -> str | None:
    return tok.get("content") if isinstance(tok, dict) else tok


def tokenizer_ids(tokdir: Path) -> dict:
    """{'eos_token_id', 'pad_token_id', 'tokens'} from tokenizer.json + tokenizer_config.json, if present."""
    tj, tc = tokdir / "tokenizer.json", tokdir / "tokenizer_config.json"
    if not tj.is_file():
        return {}
    try:
        tok = bounded.load_json(tj, "tokenizer.json", limit=bounded.MAX_INDEX)
        conf = bounded.load_json(tc, "tokenizer_config.json") if tc.is_file() else {}
    except (OSError, ValueError) as e:
        raise ConfigSchemaError(f"cannot read tokenizer files ({e})", path=tokdir,
                                fix="point --tokenizer-dir at an HF tokenizer directory") from None
    ids = dict(tok.get("model", {}).get("vocab", {}))
    ids.update({t["content"]: t["id"] for t in tok.get("added_tokens", [])})
    out = {"tokens": max(ids.values()) + 1 if ids else 0}
    for key in ("eos_token", "pad_token"):
        text = _token_text(conf.get(key))
        if text in ids:
            out[f"{key}_id"] = ids[text]
    return out
