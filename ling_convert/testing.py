"""Tiny Ling-shaped checkpoints: same config keys and tensor names as the real models.

Deterministic (seeded) so tests and the demo can compare bytes across runs.

    >>> from ling_convert.testing import write_tiny
    >>> write_tiny("/tmp/lite", "ling-lite", fmt="bin", shards=2)   # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .model.arch import detect_architecture, head_dim

_AUTO_MAP_V1 = {"AutoConfig": "configuration_bailing_moe.BailingMoeConfig",
                "AutoModel": "modeling_bailing_moe.BailingMoeModel",
                "AutoModelForCausalLM": "modeling_bailing_moe.BailingMoeForCausalLM"}
_AUTO_MAP_V2 = {"AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
                "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
                "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM"}

VOCAB = 320  # padded embedding rows; the tokenizer itself has fewer (as in the real models)

# Keys and tiny sizes both generations share (each generation's own keys below).
_SHARED = {
    "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0,
    "eos_token_id": None, "pad_token_id": None, "hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128,
    "max_position_embeddings": 512, "moe_intermediate_size": 32, "num_shared_experts": 1, "num_experts_per_tok": 2,
    "norm_topk_prob": True, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
    "rope_theta": 600000, "rope_scaling": None, "vocab_size": VOCAB, "tie_word_embeddings": False,
    "use_bias": False, "use_qkv_bias": False, "use_cache": True, "torch_dtype": "bfloat16",
}

# Ling-lite-shaped v1 (keys as the published Ling-lite-1.5 / MindIE configs).
LING_LITE = {
    "architectures": ["BailingMoeForCausalLM"], "model_type": "bailing_moe", "auto_map": _AUTO_MAP_V1, **_SHARED,
    "first_k_dense_replace": 0, "initializer_range": 0.006, "num_experts": 4, "num_hidden_layers": 2,
    "norm_head": True, "norm_softmax": False, "pretraining_tp": 1, "output_router_logits": False,
    "transformers_version": "4.40.0",
}

# Ling-plus-shaped v1: explicit head_dim with heads*head_dim != hidden (the new Ling-plus layout).
LING_PLUS = {**LING_LITE, "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 16,
             "num_shared_experts": 1, "num_experts_per_tok": 2, "num_hidden_layers": 2, "rms_norm_eps": 1e-05}

# Ling-mini-2.0-shaped v2 with one MTP layer (keys as the Ling-V2 converter's gen_config).
LING_MINI_2 = {
    "architectures": ["BailingMoeV2ForCausalLM"], "model_type": "bailing_moe", "auto_map": _AUTO_MAP_V2, **_SHARED,
    "first_k_dense_replace": 1, "moe_shared_expert_intermediate_size": 32, "num_experts": 8,
    "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
    "moe_router_enable_expert_bias": True, "router_dtype": "fp32", "head_dim": 16, "num_hidden_layers": 3,
    "num_nextn_predict_layers": 1, "partial_rotary_factor": 0.5, "use_qk_norm": True, "use_rmsnorm": True,
    "transformers_version": "4.52.3",
}

TINY_MODELS = {"ling-lite": LING_LITE, "ling-plus": LING_PLUS, "ling-mini-2": LING_MINI_2}


def tiny_config(model: str = "ling-lite", **overrides) -> dict:
    if model not in TINY_MODELS:
        raise KeyError(f"unknown tiny model {model!r}; choose from {sorted(TINY_MODELS)}")
    cfg = json.loads(json.dumps(TINY_MODELS[model]))
    # Special-token ids point into the tiny tokenizer, as the real configs do into theirs.
    eos = next(t["id"] for t in tokenizer_json()["added_tokens"] if t["content"] == "<|endoftext|>")
    cfg["eos_token_id"] = cfg["pad_token_id"] = eos
    return {**cfg, **overrides}


def _init(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    # Norm weights near 1 and biases small but non-zero, so every tensor affects the logits.
    if name.endswith("expert_bias"):
        return torch.randn(shape, generator=g) * 0.5
    if len(shape) == 1:
        return 1.0 + 0.2 * torch.randn(shape, generator=g)
    fan_in = shape[-1]
    return torch.randn(shape, generator=g) / fan_in ** 0.5


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Canonical HF names and shapes for a config (the same table `inspect` checks against)."""
    a = detect_architecture(cfg)
    H, V, d = cfg["hidden_size"], cfg["vocab_size"], head_dim(cfg)
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    F, I, E = cfg["moe_intermediate_size"], cfg["intermediate_size"], cfg["num_experts"]
    S = F * int(cfg.get("num_shared_experts") or 0)
    by_suffix = {
        "word_embeddings.weight": (V, H), "lm_head.weight": (V, H), "norm.weight": (H,),
        "input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,),
        "query_key_value.weight": ((nh + 2 * nkv) * d, H), "query_key_value.bias": ((nh + 2 * nkv) * d,),
        "query_layernorm.weight": (d,), "key_layernorm.weight": (d,),
        "dense.weight": (H, nh * d), "dense.bias": (H,),
        "mlp.gate.weight": (E, H), "mlp.gate.expert_bias": (E,),
        "shared_experts.gate_proj.weight": (S, H), "shared_experts.up_proj.weight": (S, H),
        "shared_experts.down_proj.weight": (H, S),
        "enorm.weight": (H,), "hnorm.weight": (H,), "eh_proj.weight": (H, 2 * H), "final_layernorm.weight": (H,),
        "g_proj.weight": (nh * d, H), "g_norm.weight": (nh * d,),   # hybrid-linear layers only
    }
    out = {}
    for name in a.expected_names(cfg):
        if ".experts." in name and "shared" not in name:
            shape = (F, H) if not name.endswith("down_proj.weight") else (H, F)
        elif ".mlp." in name and name.endswith(("gate_proj.weight", "up_proj.weight", "down_proj.weight")) \
                and "shared" not in name:
            shape = (I, H) if not name.endswith("down_proj.weight") else (H, I)
        else:
            # Longest suffix wins: "query_layernorm.weight" before "norm.weight".
            shape = by_suffix[max((k for k in by_suffix if name.endswith("." + k) or name == k), key=len)]
        out[name] = shape
    return out


def tiny_state(cfg: dict, seed: int = 0, dtype: torch.dtype | None = None):
    """Yield (name, tensor) one at a time, deterministic for (cfg, seed); bf16 unless `dtype`."""
    dtype = torch.bfloat16 if dtype is None else dtype
    g = torch.Generator().manual_seed(seed)
    for name, shape in tensor_shapes(cfg).items():
        t = _init(name, shape, g)
        # expert_bias is a persistent fp32 buffer in the real checkpoints.
        yield name, (t.float() if name.endswith("expert_bias") else t.to(dtype))


def write_tiny(out: str | Path, model: str = "ling-lite", *, fmt: str = "safetensors", shards: int = 1,
               seed: int = 0, tokenizer: bool = True, **overrides) -> Path:
    """Write a tiny checkpoint as `safetensors` or `bin`, optionally split into `shards` files."""
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(model, **overrides)
    state = dict(tiny_state(cfg, seed))
    names = list(state)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    ext, stem = ("safetensors", "model") if fmt == "safetensors" else ("bin", "pytorch_model")
    files = ([f"{stem}.{ext}"] if shards == 1 else
             [f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}" for i in range(shards)])
    for fname, group in zip(files, groups):
        part = {n: state[n].contiguous() for n in group}
        if fmt == "safetensors":
            save_file(part, str(out / fname), metadata={"format": "pt"})
        else:
            torch.save(part, out / fname)
    if shards > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        wm = {n: f for f, g in zip(files, groups) for n in g}
        (out / f"{stem}.{ext}.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": wm}, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer:
        write_tokenizer(out, cfg)
    return out


# -- tokenizer -------------------------------------------------------------------

def _byte_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode table used by byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<role>", "</role>", "<|role_end|>"]
_MERGE_TEXT = "the ling model converts the checkpoint"
CHAT_TEMPLATE = ("{% for message in messages %}<role>{{ message['role'] | upper }}</role>{{ message['content'] }}"
                 "{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}")


def tokenizer_json() -> dict:
    """A small byte-level BPE tokenizer.json (256 bytes + a few merges + Ling's special tokens)."""
    bu = _byte_unicode()
    vocab = {bu[b]: i for i, b in enumerate(range(256))}
    merges: list[list[str]] = []
    for word in _MERGE_TEXT.split():
        w = "Ġ" + word
        acc = w[0]
        for ch in w[1:]:
            if acc + ch not in vocab:
                merges.append([acc, ch])
                vocab[acc + ch] = len(vocab)
            acc += ch
    added = []
    for s in SPECIALS:
        added.append({"id": len(vocab), "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
        vocab[s] = len(vocab)
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def write_tokenizer(out: Path, cfg: dict) -> None:
    tok = tokenizer_json()
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert len(tok["model"]["vocab"]) <= cfg["vocab_size"], "tokenizer larger than the embedding"
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "fast_tokenizer": True, "add_bos_token": False,
        "add_eos_token": False, "clean_up_tokenization_spaces": False, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE,
        "model_max_length": cfg["max_position_embeddings"]}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|startoftext|>"], "eos_token_id": [ids["<|endoftext|>"], ids["<|role_end|>"]],
         "pad_token_id": ids["<|endoftext|>"]}, indent=2))
