"""Header-true, data-sparse checkpoints at real published Ling shapes (tests and benchmarks).

Each safetensors shard has the real tensor names, shapes and dtypes in its header;
the data region is a file hole (`truncate`), so Ling-1T's 2 TB cost a few MB of
headers. Only metadata paths (inspect, every --dry-run, config checks, route
planning) may run on them: every tensor reads as zeros. Configs are the published
values; shard counts are the published
ones where known (Ling-mini-2.0: 7, Ling-flash-2.0: 22, Ling-1T: 421).

    >>> p = write_sparse("/tmp/ling-1t", "ling-1t")                       # doctest: +SKIP
    >>> published_tensor_count("ling-mini-2.0"), published_tensor_count("ling-1t")
    (15596, 62336)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .core.source import TensorInfo
from .formats.safetensors import header_bytes, shard_names
from .model.arch import detect_architecture
from .model.config import ModelConfig
from .testing import tensor_shapes

_V1 = {"architectures": ["BailingMoeForCausalLM"], "model_type": "bailing_moe",
       "auto_map": {"AutoConfig": "configuration_bailing_moe.BailingMoeConfig",
                    "AutoModel": "modeling_bailing_moe.BailingMoeModel",
                    "AutoModelForCausalLM": "modeling_bailing_moe.BailingMoeForCausalLM"},
       "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0, "hidden_act": "silu",
       "initializer_range": 0.006, "first_k_dense_replace": 0, "norm_topk_prob": True, "rope_theta": 600000,
       "rope_scaling": None, "vocab_size": 126464, "eos_token_id": 126081, "pad_token_id": 126081,
       "tie_word_embeddings": False, "norm_softmax": False, "use_bias": False, "use_qkv_bias": False,
       "pretraining_tp": 1, "output_router_logits": False, "use_cache": True, "torch_dtype": "bfloat16"}
# Ling-lite-1.5 config.json as published on the Hub.
LING_LITE = {**_V1, "hidden_size": 2048, "intermediate_size": 1408, "max_position_embeddings": 32768,
             "moe_intermediate_size": 1408, "num_experts": 64, "num_shared_experts": 2, "num_experts_per_tok": 6,
             "num_attention_heads": 16, "num_key_value_heads": 4, "num_hidden_layers": 28, "rms_norm_eps": 1e-06,
             "norm_head": False, "transformers_version": "4.40.0"}
# Ling-plus, new head layout with explicit head_dim (HF Ling-plus-base refs/pr/2).
LING_PLUS = {**_V1, "hidden_size": 5376, "intermediate_size": 12288, "max_position_embeddings": 16384,
             "moe_intermediate_size": 3072, "num_experts": 64, "num_shared_experts": 1, "num_experts_per_tok": 4,
             "num_attention_heads": 56, "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 88,
             "rms_norm_eps": 1e-05, "norm_head": True, "transformers_version": "4.36.0"}

_V2 = {"architectures": ["BailingMoeV2ForCausalLM"], "model_type": "bailing_moe",
       "auto_map": {"AutoConfig": "configuration_bailing_moe_v2.BailingMoeV2Config",
                    "AutoModel": "modeling_bailing_moe_v2.BailingMoeV2Model",
                    "AutoModelForCausalLM": "modeling_bailing_moe_v2.BailingMoeV2ForCausalLM"},
       "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0, "hidden_act": "silu",
       "eos_token_id": 156892, "pad_token_id": 156892, "first_k_dense_replace": 1, "max_position_embeddings": 32768,
       "norm_topk_prob": True, "num_experts": 256, "num_shared_experts": 1, "num_experts_per_tok": 8,
       "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
       "moe_router_enable_expert_bias": True, "router_dtype": "fp32", "head_dim": 128, "use_qk_norm": True,
       "partial_rotary_factor": 0.5, "rope_theta": 600000, "rope_scaling": None, "rms_norm_eps": 1e-06,
       "use_rmsnorm": True, "vocab_size": 157184, "tie_word_embeddings": False, "use_bias": False,
       "use_qkv_bias": False, "use_cache": True, "torch_dtype": "bfloat16", "transformers_version": "4.52.3"}
# Ling-mini-2.0 with its MTP layer (15,596 tensors).
LING_MINI_2 = {**_V2, "num_hidden_layers": 20, "hidden_size": 2048, "intermediate_size": 5120,
               "moe_intermediate_size": 512, "moe_shared_expert_intermediate_size": 512,
               "num_attention_heads": 16, "num_key_value_heads": 4, "num_nextn_predict_layers": 1}
# Ling-flash-2.0: Megatron-Bridge LingFlash2ModelProvider; the chat checkpoint has no MTP layer.
LING_FLASH_2 = {**_V2, "num_hidden_layers": 32, "hidden_size": 4096, "intermediate_size": 9216,
                "moe_intermediate_size": 1024, "moe_shared_expert_intermediate_size": 1024,
                "num_attention_heads": 32, "num_key_value_heads": 4, "num_nextn_predict_layers": 0}
# Ling-1T: Megatron-Bridge Ling1TModelProvider; one dense layer and one MTP layer give its 62,336 tensors.
LING_1T = {**_V2, "num_hidden_layers": 80, "hidden_size": 8192, "intermediate_size": 18432,
           "moe_intermediate_size": 2048, "moe_shared_expert_intermediate_size": 2048,
           "num_attention_heads": 64, "num_key_value_heads": 8, "num_nextn_predict_layers": 1}
# Ring-mini-linear-2.0: 16 linear-attention layers, 4 softmax.
RING_MINI_LINEAR_2 = {**LING_MINI_2, "architectures": ["BailingMoeLinearV2ForCausalLM"],
                      "model_type": "bailing_moe_linear",
                      "auto_map": {"AutoConfig": "configuration_bailing_moe_linear_v2.BailingMoeLinearV2Config"},
                      "layer_group_size": 5, "group_norm_size": 4, "linear_silu": False, "rope_theta": 1000000,
                      "max_position_embeddings": 131072, "num_nextn_predict_layers": 0,
                      "transformers_version": "4.56.1"}

# model -> (config, published shard count or None for 5 GB shards)
PUBLISHED: dict[str, tuple[dict, int | None]] = {
    "ling-lite": (LING_LITE, None), "ling-plus": (LING_PLUS, None), "ling-mini-2.0": (LING_MINI_2, 7),
    "ling-flash-2.0": (LING_FLASH_2, 22), "ling-1t": (LING_1T, 421), "ring-mini-linear-2.0": (RING_MINI_LINEAR_2, None),
}
SHARD_BYTES = 5 * 10**9


def published_config(model: str, scale: int = 1) -> dict:
    """The published config of `model`; `scale` multiplies the layer count (and so the tensor count)."""
    if model not in PUBLISHED:
        raise KeyError(f"unknown model {model!r}; choose from {sorted(PUBLISHED)}")
    cfg = json.loads(json.dumps(PUBLISHED[model][0]))
    cfg["num_hidden_layers"] *= scale
    return cfg


def published_infos(cfg: dict) -> dict[str, TensorInfo]:
    """Name -> shape/dtype of every tensor, in save_pretrained order (layer-major)."""
    shapes = tensor_shapes(cfg)
    a = detect_architecture(cfg)
    mc = ModelConfig.of(cfg)
    H, nh, d = mc.hidden_size, mc.num_attention_heads, mc.head_dim
    for layer in a.linear_layers(cfg):     # linear-attention layers: MHA-wide QKV (schemas/arch/bailing_moe_linear_v2.json)
        shapes[f"model.layers.{layer}.attention.query_key_value.weight"] = (3 * nh * d, H)
    fp32 = {n for n in shapes if n.endswith("expert_bias")}   # a persistent fp32 buffer in v2 checkpoints
    return {n: TensorInfo(tuple(shapes[n]), torch.float32 if n in fp32 else torch.bfloat16)
            for n in save_order(shapes)}


def published_tensor_count(model: str, scale: int = 1) -> int:
    return len(tensor_shapes(published_config(model, scale)))


def save_order(names) -> list[str]:
    """Layer-major, as `save_pretrained` writes a model: embeddings, layer 0's tensors, layer 1's, ...,
    final norm and lm_head; module order inside a layer."""
    names = list(names)

    def key(i: int) -> tuple[int, int]:
        m = re.search(r"\.layers\.(\d+)\.", names[i])
        if m:
            return int(m.group(1)), i
        return (-1 if "embed" in names[i] else 1 << 30), i
    return [names[i] for i in sorted(range(len(names)), key=key)]


def split_shards(infos: dict[str, TensorInfo], shards: int | None) -> list[list[str]]:
    """Consecutive groups: `shards` of about equal bytes, or 5 GB groups when no count is published."""
    total = sum(i.nbytes for i in infos.values())
    shards = shards or max(1, -(-total // SHARD_BYTES))
    out: list[list[str]] = [[]]
    done = 0
    for name, info in infos.items():
        if out[-1] and done >= total * len(out) / shards and len(out) < shards:
            out.append([])
        out[-1].append(name)
        done += info.nbytes
    return out


def write_sparse(out: str | Path, model: str, *, scale: int = 1) -> Path:
    """Write `model` at its published shapes: real headers, index and config.json, data as holes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = published_config(model, scale)
    infos = published_infos(cfg)
    count = PUBLISHED[model][1]
    groups = split_shards(infos, count * scale if count else None)
    files = shard_names(len(groups))
    for fname, names in zip(files, groups):
        head = header_bytes(infos, names)
        with open(out / fname, "wb") as f:
            f.write(head)
            f.truncate(len(head) + sum(infos[n].nbytes for n in names))   # a hole, not zeros on disk
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(i.nbytes for i in infos.values())},
                 "weight_map": {n: f for f, g in zip(files, groups) for n in g}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out
