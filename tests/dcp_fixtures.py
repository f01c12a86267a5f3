"""Megatron-style torch_dist checkpoints for the tiny Ling models, written by hand for tests.

The Megatron tensors are built here from the HF tiny model with explicit loops
(per-group QKV, [gate; up] fc1, experts stacked on a leading axis), independently
of ling_convert's key map, so a bug there cannot cancel out. The DCP files are
written as torch's FileSystemWriter lays them out: torch.save
blobs appended to `__{rank}_0.distcp`, chunk geometry in `.metadata`.
"""

from __future__ import annotations

import argparse
import enum
import io
import json
import pickle
import sys
import types
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, TensorProperties, TensorStorageMetadata)

from ling_convert.model.arch import head_dim
from ling_convert.testing import tiny_config, tiny_state, tokenizer_json


def _qkv_grouped(w: torch.Tensor, nh: int, nkv: int, d: int) -> torch.Tensor:
    q, k, v = w.split([nh * d, nkv * d, nkv * d])
    qpg, blocks = nh // nkv, []
    for g in range(nkv):          # Megatron: per query group [its q heads | one k head | one v head]
        blocks += [q[g * qpg * d:(g + 1) * qpg * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
    return torch.cat(blocks)


def megatron_state(model: str, *, rows: int | None = None, per_expert_keys: bool = False,
                   stack_layers: bool = False, seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """Megatron names -> tensors for tiny `model` (vocab padded to `rows` with random rows)."""
    cfg = tiny_config(model, **overrides)
    hf = dict(tiny_state(cfg, seed))
    n, k, E = cfg["num_hidden_layers"], cfg.get("first_k_dense_replace") or 0, cfg["num_experts"]
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    g = torch.Generator().manual_seed(123)
    pad = lambda t: torch.cat([t, torch.randn(((rows or len(t)) - len(t), t.shape[1]), generator=g).to(t.dtype)])
    out = {"embedding.word_embeddings.weight": pad(hf["model.word_embeddings.weight"]),
           "output_layer.weight": pad(hf["lm_head.weight"]),
           "decoder.final_layernorm.weight": hf["model.norm.weight"]}
    layers = []
    for L in range(n + (cfg.get("num_nextn_predict_layers") or 0)):
        h, m = f"model.layers.{L}.", {}
        m["self_attention.linear_qkv.layer_norm_weight"] = hf[h + "input_layernorm.weight"]
        m["self_attention.linear_qkv.weight"] = _qkv_grouped(hf[h + "attention.query_key_value.weight"], nh, nkv, d)
        m["self_attention.linear_proj.weight"] = hf[h + "attention.dense.weight"]
        if cfg.get("use_qk_norm"):
            m["self_attention.q_layernorm.weight"] = hf[h + "attention.query_layernorm.weight"]
            m["self_attention.k_layernorm.weight"] = hf[h + "attention.key_layernorm.weight"]
        if L < k:
            m["mlp.linear_fc1.layer_norm_weight"] = hf[h + "post_attention_layernorm.weight"]
            m["mlp.linear_fc1.weight"] = torch.cat([hf[h + "mlp.gate_proj.weight"], hf[h + "mlp.up_proj.weight"]])
            m["mlp.linear_fc2.weight"] = hf[h + "mlp.down_proj.weight"]
        else:
            _moe(m, hf, h, cfg, E, per_expert_keys)
        if L < n:
            layers.append(m)
            continue
        i = L - n
        out.update({f"mtp.layers.{i}.transformer_layer.{s}": t for s, t in m.items()})
        for s in ("enorm", "hnorm", "eh_proj", "final_layernorm"):
            out[f"mtp.layers.{i}.{s}.weight"] = hf[h + f"{s}.weight"]
    if stack_layers:       # homogeneous Megatron models: one tensor per name, layer axis first
        out.update({f"decoder.layers.{s}": torch.stack([m[s] for m in layers]) for s in layers[0]})
    else:
        out.update({f"decoder.layers.{L}.{s}": t for L, m in enumerate(layers) for s, t in m.items()})
    return out


def _moe(m: dict, hf: dict, h: str, cfg: dict, E: int, per_expert_keys: bool) -> None:
    m["pre_mlp_layernorm.weight"] = hf[h + "post_attention_layernorm.weight"]
    m["mlp.router.weight"] = hf[h + "mlp.gate.weight"]
    if h + "mlp.gate.expert_bias" in hf:
        m["mlp.router.expert_bias"] = hf[h + "mlp.gate.expert_bias"]
    s = h + "mlp.shared_experts."
    m["mlp.shared_experts.linear_fc1.weight"] = torch.cat([hf[s + "gate_proj.weight"], hf[s + "up_proj.weight"]])
    m["mlp.shared_experts.linear_fc2.weight"] = hf[s + "down_proj.weight"]
    fc1 = [torch.cat([hf[h + f"mlp.experts.{e}.gate_proj.weight"], hf[h + f"mlp.experts.{e}.up_proj.weight"]])
           for e in range(E)]
    fc2 = [hf[h + f"mlp.experts.{e}.down_proj.weight"] for e in range(E)]
    if per_expert_keys:
        for e in range(E):
            m[f"mlp.experts.experts.{e}.linear_fc1.weight"], m[f"mlp.experts.experts.{e}.linear_fc2.weight"] = \
                fc1[e], fc2[e]
    else:
        m["mlp.experts.experts.linear_fc1.weight"] = torch.stack(fc1)    # [E, 2F, H]
        m["mlp.experts.experts.linear_fc2.weight"] = torch.stack(fc2)    # [E, H, F]


# -- chunking: which rank stores which part of each tensor -------------------------

def _halves(n: int) -> list[tuple[int, int]]:
    return [(0, n // 2), (n // 2, n - n // 2)]


def single(key: str, t: torch.Tensor) -> list[tuple[int, tuple, tuple]]:
    return [(0, (0,) * t.dim(), tuple(t.shape))]


def expert_parallel(key: str, t: torch.Tensor):
    """EP=2: stacked experts split along the expert axis over ranks 0 and 1."""
    if "experts.experts." in key and key.endswith(("fc1.weight", "fc2.weight")) and t.dim() == 3:
        return [(r, (o, 0, 0), (s, *t.shape[1:])) for r, (o, s) in enumerate(_halves(t.shape[0]))]
    return single(key, t)


def tensor_parallel(key: str, t: torch.Tensor):
    """TP=2 as Megatron shards it: fc1 as [gate_r0, gate_r1, up_r0, up_r1] rows, qkv by groups,
    row-parallel weights along the input dim, vocab rows; expert fc1 also along dim 1 (ETP)."""
    def along(dim, parts, ranks):
        n = t.shape[dim] // parts
        return [(ranks[i], tuple(i * n if a == dim else 0 for a in range(t.dim())),
                 tuple(n if a == dim else s for a, s in enumerate(t.shape))) for i in range(parts)]
    if key.endswith("linear_fc1.weight"):
        return along(t.dim() - 2, 4, [0, 1, 0, 1])
    if key.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return along(t.dim() - 1, 2, [0, 1])
    if key.endswith(("linear_qkv.weight", "word_embeddings.weight", "output_layer.weight")):
        return along(0, 2, [0, 1])
    return single(key, t)


def pipeline_layers(key: str, t: torch.Tensor):
    """PP=2 on the layer-stacked form: each rank holds half of the layer axis."""
    if key.startswith("decoder.layers.") and not key.split(".")[2].isdigit():
        return [(r, (o, *([0] * (t.dim() - 1))), (s, *t.shape[1:])) for r, (o, s) in enumerate(_halves(t.shape[0]))]
    return single(key, t)


# -- writing ------------------------------------------------------------------------

def write_dcp(root: Path, state: dict[str, torch.Tensor], chunking=single, *, extras: bool = True) -> Path:
    """Write `state` as a DCP dir by hand; `extras` adds optimizer/_extra_state/rng items to drop."""
    root.mkdir(parents=True, exist_ok=True)
    if extras:
        state = {**state, "optimizer.state.exp_avg.decoder.final_layernorm.weight": torch.zeros(4)}
    files: dict[int, io.BytesIO] = {}
    sdm, storage = {}, {}
    for key, t in state.items():
        chunks = []
        for rank, offsets, sizes in chunking(key, t):
            part = t[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))].clone()
            f = files.setdefault(rank, io.BytesIO())
            start = f.tell()
            torch.save(part, f)
            storage[MetadataIndex(key, torch.Size(offsets), len(chunks))] = \
                _StorageInfo(f"__{rank}_0.distcp", start, f.tell() - start)
            chunks.append(ChunkStorageMetadata(torch.Size(offsets), torch.Size(sizes)))
        sdm[key] = TensorStorageMetadata(TensorProperties(dtype=t.dtype), torch.Size(t.shape), chunks)
    if extras:
        for key in ("decoder.layers.0.self_attention.core_attention._extra_state", "rng_state"):
            f = files.setdefault(0, io.BytesIO())
            start = f.tell()
            f.write(b"\x00opaque bytes")
            storage[MetadataIndex(key)] = _StorageInfo("__0_0.distcp", start, f.tell() - start)
            sdm[key] = BytesStorageMetadata()
    for rank, f in files.items():
        (root / f"__{rank}_0.distcp").write_bytes(f.getvalue())
    md = Metadata(state_dict_metadata=sdm, planner_data={k: (k,) for k in sdm}, storage_data=storage)
    (root / ".metadata").write_bytes(pickle.dumps(md))
    (root / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    return root


def write_stock_dcp(root: Path, state: dict[str, torch.Tensor]) -> Path:
    """The same through torch's own writer (no process group), 2 writer threads -> 2 files."""
    import torch.distributed.checkpoint as dcp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(dict(state), storage_writer=dcp.FileSystemWriter(str(root), thread_count=2))
    (root / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    return root


def megatron_args(model: str, **overrides) -> dict:
    """Megatron training args as a Ling-V2 run would record them (common.pt)."""
    cfg = tiny_config(model, **overrides)
    n, k = cfg["num_hidden_layers"], cfg.get("first_k_dense_replace") or 0
    return dict(
        num_layers=n, hidden_size=cfg["hidden_size"], ffn_hidden_size=cfg["intermediate_size"],
        num_attention_heads=cfg["num_attention_heads"], group_query_attention=True,
        num_query_groups=cfg["num_key_value_heads"], kv_channels=head_dim(cfg), seq_length=256,
        max_position_embeddings=cfg["max_position_embeddings"], rotary_base=cfg["rope_theta"],
        rotary_percent=cfg.get("partial_rotary_factor", 1.0), norm_epsilon=cfg["rms_norm_eps"],
        vocab_size=len(tokenizer_json()["model"]["vocab"]), make_vocab_size_divisible_by=64,
        num_experts=cfg["num_experts"], moe_ffn_hidden_size=cfg["moe_intermediate_size"],
        moe_router_topk=cfg["num_experts_per_tok"],
        moe_shared_expert_intermediate_size=cfg.get("moe_shared_expert_intermediate_size"),
        moe_layer_freq=[0] * k + [1] * (n - k), moe_router_score_function=cfg.get("score_function"),
        moe_router_enable_expert_bias=cfg.get("moe_router_enable_expert_bias"),
        moe_router_topk_scaling_factor=cfg.get("routed_scaling_factor"),
        moe_router_num_groups=cfg.get("n_group"), moe_router_group_topk=cfg.get("topk_group"),
        moe_router_dtype=cfg.get("router_dtype"), qk_layernorm=cfg.get("use_qk_norm", False),
        mtp_num_layers=cfg.get("num_nextn_predict_layers"), untie_embeddings_and_output_weights=True,
        add_qkv_bias=False, add_bias_linear=False, params_dtype=torch.bfloat16)


def write_common(root: Path, args: dict) -> None:
    """common.pt with a Namespace holding a `megatron.*` enum, pickled from a stand-in module."""
    mod = types.ModuleType("megatron.core.enums")

    class ModelType(enum.Enum):
        encoder_or_decoder = 1
    ModelType.__module__, ModelType.__qualname__ = "megatron.core.enums", "ModelType"
    mod.ModelType = ModelType
    saved = {k: sys.modules.get(k) for k in ("megatron", "megatron.core", "megatron.core.enums")}
    sys.modules.update({"megatron": types.ModuleType("megatron"), "megatron.core": types.ModuleType("megatron.core"),
                        "megatron.core.enums": mod})
    try:
        ns = argparse.Namespace(**args, model_type=ModelType.encoder_or_decoder)
        torch.save({"args": ns, "checkpoint_version": 3.0, "iteration": 1000}, root / "common.pt")
    finally:
        for k, v in saved.items():     # the reader must cope without megatron installed
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
