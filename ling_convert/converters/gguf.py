"""Edges `safetensors -> gguf` (to-gguf) and `gguf -> safetensors` (from-gguf).

Both read one table per llama.cpp architecture (`schemas/gguf/<arch>.json`, "tensors"):
an entry maps an HF name pattern to GGUF name pattern(s) through a named op of
`gguf_ops.OPS`; to-gguf runs the op forward, from-gguf its inverse. Both are lazy:
thunks are wrapped, nothing is read until the writer asks.

    >>> from ling_convert.api import to_gguf_file
    >>> to_gguf_file("Ling-mini-2.0/", "ling-mini.gguf", outtype="q8_0")      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BadInputError, UnknownTensorError, UnsupportedError
from ..core.source import PartedSource, Source, TensorInfo, Thunk, as_parted, torch_dtype
from ..formats import aux_files
from ..formats.gguf.meta import refuse_llama_defaults, table_for_config
from ..formats.gguf.table import Group, group_names, rules
from ..formats.gguf.writer import GgufOptions
from ..model.config import ModelConfig
from ..model.gguf_ops import output_thunks, qkv_rows, slice_thunks
from . import converter


@dataclass(frozen=True)
class FromGgufOptions:
    dtype: str = "keep"
    llama_defaults: bool = False
    tokenizer_dir: str | None = None

OUT_DTYPES = {"keep": None, "f32": "F32", "bf16": "BF16", "f16": "F16"}   # safetensors codes: no torch to plan


# -- checks before export -------------------------------------------------------------

def _check(name: str, cfg: dict, names: list[str]) -> bool:
    mc = ModelConfig.of(cfg)
    return {
        "qkv_width_is_hidden": lambda: mc.num_attention_heads * mc.head_dim == mc.hidden_size,
        "sigmoid_router": lambda: cfg.get("score_function") in (None, "sigmoid"),
        "no_attention_bias": lambda: not any(n.endswith(("attention.query_key_value.bias", "attention.dense.bias"))
                                             for n in names),
        "no_dense_lead": lambda: not mc.first_k_dense_replace,
        "no_mtp": lambda: not mc.mtp_layers,
    }[name]()


def run_checks(table, cfg: dict, names: list[str], where) -> None:
    for c in table["checks"]:
        if not _check(c["check"], cfg, names):
            raise UnsupportedError(f"cannot export to llama.cpp {table['gguf_arch']!r}: {c['why']}", path=where,
                                   fix="llama.cpp cannot run this checkpoint as is")


# -- to-gguf --------------------------------------------------------------------------------

def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit() else None


def drop_mtp(src: Source, cfg: dict) -> tuple[list[str], int]:
    """Names without the MTP layers (index >= num_hidden_layers), and how many layers were dropped."""
    mc = ModelConfig.of(cfg)
    keep = [k for k in src.keys() if (_layer_of(k) if _layer_of(k) is not None else -1) < mc.num_hidden_layers]
    return keep, mc.mtp_layers


def _checked_load(src: Source, name: str) -> Thunk:
    return lambda: src.load(name)


def _stack_inputs(g: Group, cfg: dict, where) -> list[str]:
    n = ModelConfig.of(cfg).num_experts
    if sorted(g.slots) != list(range(n)):
        missing = [e for e in range(n) if e not in g.slots]
        raise UnknownTensorError(f"layer {g.layer} has experts {sorted(g.slots)[:4]}..., config num_experts is {n}",
                                 path=where, tensor=g.rule.hf.format(layer=g.layer, expert=(missing or [n])[0]),
                                 fix="the checkpoint is incomplete or num_experts is wrong")
    return [g.slots[e] for e in range(n)]


def _check_vocab_rows(src: Source, cfg: dict) -> None:
    # llama.cpp sizes token_embd/output by the token list, which has vocab_size entries.
    name = "model.word_embeddings.weight"
    rows = src.info(name).shape[0] if name in src.infos else None
    if rows is not None and rows != ModelConfig.of(cfg).vocab_size:
        raise BadInputError(f"{rows} embedding rows but config vocab_size is {cfg['vocab_size']}", path=src.path,
                            tensor=name, fix="correct vocab_size in config.json; llama.cpp needs one token per row")


@converter("safetensors", "gguf", lossless=False, name="to-gguf", demo_options={}, options=GgufOptions)
def to_gguf(src: Source, opts: GgufOptions) -> PartedSource:
    """HF names -> llama.cpp GGUF names and layouts (split/permute QKV, stack experts, bake norm_head)."""
    cfg = dict(src.config or {})
    table = table_for_config(cfg, src.path)
    arch = table["gguf_arch"]
    names, notes = src.keys(), {"arch": arch}
    if opts.no_mtp and ModelConfig.of(cfg).mtp_layers:
        names, dropped = drop_mtp(src, cfg)
        notes["mtp_dropped_layers"] = dropped
        cfg["num_nextn_predict_layers"] = 0
    run_checks(table, cfg, names, src.path)
    _check_vocab_rows(src, cfg)
    infos, thunks, parts = {}, {}, {}
    for g in group_names(names, rules(table), "hf", arch, src.path):
        stacked = g.rule.op.name == "stack_experts"
        ins = _stack_inputs(g, cfg, src.path) if stacked else [g.slots[0]]
        shapes = g.rule.op.forward_shapes(src.config, [src.info(n).shape for n in ins])
        outs = [g.fmt(p) for p in g.rule.gguf]
        baked = g.rule.op.float_out and bool(src.config.get("norm_head"))
        dtype = "F32" if baked else src.info(ins[0]).code
        ths = output_thunks(g.rule.op.forward, src.config, [_checked_load(src, n) for n in ins], len(outs))
        for o, shape, th in zip(outs, shapes, ths):
            infos[o], thunks[o] = TensorInfo(tuple(shape), dtype), th
        if stacked:
            parts[outs[0]] = [_checked_load(src, n) for n in ins]
        if baked:
            cfg["norm_head"] = False
            notes["norm_head"] = "baked into output.weight (column L2-normalised, +1e-7); config now norm_head=false"
    return as_parted(src, parts, infos=infos, thunks=thunks, config=cfg, route=list(src.route),
                     notes={**src.notes, "gguf": notes})


# -- from-gguf ------------------------------------------------------------------------------

def _cast(th: Thunk, dtype: str | None) -> Thunk:
    return th if dtype is None else (lambda: th().to(torch_dtype(dtype)))


@converter("gguf", "safetensors", lossless=False, name="from-gguf", demo_options={}, options=FromGgufOptions)
def from_gguf(src: Source, opts: FromGgufOptions) -> Source:
    """llama.cpp GGUF names -> HF names (unstack experts, merge and un-permute QKV); dequantised."""
    refuse_llama_defaults(src, opts.llama_defaults)
    cfg = dict(src.config or {})
    table = table_for_config(cfg, src.path)
    cast = OUT_DTYPES[opts.dtype or "keep"]
    infos, thunks = {}, {}
    for g in group_names(src.keys(), rules(table), "gguf", table["gguf_arch"], src.path):
        missing = [g.fmt(p) for i, p in enumerate(g.rule.gguf) if i not in g.slots]
        if missing:
            raise UnknownTensorError("GGUF lacks a tensor of a group", path=src.path, tensor=missing[0],
                                     fix="the file is incomplete; re-export it")
        ins = [g.slots[i] for i in range(len(g.rule.gguf))]
        kinds = {src.info(n).code for n in ins}
        # q, k, v stored as different types (an F16 fallback beside Q8_0): merge them in float32
        group_cast = cast or (None if len(kinds) == 1 else "F32")
        dtype = group_cast or kinds.pop()
        shapes = g.rule.op.inverse_shapes(cfg, [src.info(n).shape for n in ins])
        if g.rule.op.name == "stack_experts":
            _check_expert_count(cfg, len(shapes), src.path, ins[0])
            outs = [g.fmt(g.rule.hf, expert=e) for e in range(len(shapes))]
            ths = slice_thunks(src, ins[0], len(shapes))
            ths = [_cast(t, cast) for t in ths]
        else:
            outs = [g.fmt(g.rule.hf)]
            ths = output_thunks(g.rule.op.inverse, cfg, [_checked_load(src, n) for n in ins], 1, group_cast)
        for o, shape, th in zip(outs, shapes, ths):
            infos[o], thunks[o] = TensorInfo(tuple(shape), dtype), th
    aux = dict(src.aux)
    if opts.tokenizer_dir:
        aux.update(aux_files(Path(opts.tokenizer_dir)))
    extra = {"parts": {}} if isinstance(src, PartedSource) else {}
    return src.derive(infos=infos, thunks=thunks, config=cfg, aux=aux, **extra)


def _check_expert_count(cfg: dict, n: int, where, name: str) -> None:
    if n != ModelConfig.of(cfg).num_experts:
        raise BadInputError(f"stacked experts hold {n} experts; expert_count says {cfg['num_experts']}",
                            path=where, tensor=name, fix="the file is inconsistent; re-export it")


__all__ = ["from_gguf", "group_names", "qkv_rows", "rules", "to_gguf"]
