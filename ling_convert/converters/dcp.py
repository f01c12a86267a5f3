"""Edges dcp -> safetensors (`dcp2st`) and safetensors -> dcp (`st2dcp`), both lazy.

Both directions come from one table, `schemas/megatron/bailing_moe.json`: dcp2st
applies each rule's op forward, st2dcp its inverse. Nothing is read here; the
thunks read one Megatron tensor, or one expert/layer slice of it, when the writer
asks, and a multi-output op (fc1 -> gate, up) is computed once for its outputs.

    >>> api.convert("iter_0001000/", "out/", to="safetensors", options={"force_bf16": True})  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import CommonOptions, converter
from .fp8 import QuantizeOptions
from ..model import ops
from ..model.config import config_int
from ..core.errors import BadInputError, UnknownTensorError
from ..core.names import compile_pattern
from ..formats import aux_files
from ..formats.dcp.reader import reader_of
from ..formats.dcp.megatron_config import args_vocab, tokenizer_ids
from .dcp_keymap import TABLE, KeyMap, Rule
from ..core.source import Source, TensorInfo, ordered, torch_dtype


@dataclass(frozen=True)
class DcpToHfOptions:
    """dcp2st: what `ling-convert dcp2st` passes (see `api.dcp_to_hf`)."""
    force_bf16: bool = False
    vocab_size: int | None = None
    allow_unmapped: bool = False
    tokenizer_dir: str | None = None
    op_overrides: dict | None = None


@dataclass(frozen=True)
class Dcp2stOptions(DcpToHfOptions, QuantizeOptions, CommonOptions):
    """`dcp2st` (`api.dcp_to_hf`): the dcp2st edge's options, the quantize edge's for `force_fp8`, and
    the writer's `workers`."""
    force_fp8: bool = False
    scale_fmt: str | None = None     # with force_fp8; None: "ling" (Ling-V2's converter's scales)
    workers: int | None = None       # processes filling each shard (None: auto); torchrun ranks split shards


@dataclass(frozen=True)
class HfToDcpOptions:
    padded_vocab_size: int | None = None
    stack_layers: bool = False
    allow_unmapped: bool = False
    op_overrides: dict | None = None

_SCHEMA_FIX = f"add a rule to schemas/{TABLE}, or pass --allow-unmapped to skip these keys"
_CACHE_SIZE = 4     # multi-output op results kept (fc1 -> gate, up are read one after the other)


def _op_error(e: Exception, src: Source, name: str) -> BadInputError:
    return BadInputError(f"shape does not fit the config ({e})", path=src.path, tensor=name,
                         fix="the config (or --config-from) does not describe this checkpoint")


# -- dcp -> safetensors --------------------------------------------------------------

@dataclass(eq=False)
class _Instance:
    """One Megatron tensor (or one lead-indexed slice of it) and the op that maps it to HF."""

    load: Callable[[], torch.Tensor]
    fn: str
    params: dict
    rows: int | None             # keep only the first `rows` rows (vocab padding)
    cache: OrderedDict           # shared by one Source's instances: the last few results

    def outputs(self) -> list[torch.Tensor]:
        if self in self.cache:
            return self.cache[self]
        x = self.load()
        if self.rows is not None:
            x = ops.apply("trim_rows", [x], rows=self.rows)[0]
        out = ops.apply(self.fn, [x], **self.params)
        self.cache[self] = out
        while len(self.cache) > _CACHE_SIZE:    # bounded even if a reader skips some outputs
            self.cache.popitem(last=False)
        return out


def _output(inst: _Instance, i: int, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    def thunk():
        t = inst.outputs()[i]
        return t if t.dtype == dtype else t.to(dtype)
    thunk.group = id(inst)      # a parallel writer gives one worker all outputs of one read (Source.group)
    return thunk


def _slice_loader(thunk, lead: tuple[int, ...]) -> Callable[[], torch.Tensor]:
    if not lead:
        return thunk
    if hasattr(thunk, "read"):
        return lambda: thunk.read(lead)           # reads only this slice from disk
    return lambda: thunk()[lead].clone()


def _forced_dtypes(km: KeyMap) -> list[tuple[re.Pattern, torch.dtype]]:
    """Precision policy from the arch table (`force_dtype`, e.g. expert_bias stays float32)."""
    out = []
    for spec in km.arch.table["tensors"]:
        if spec.get("force_dtype"):
            out.append((compile_pattern(spec["name"]), getattr(torch, spec["force_dtype"])))
    return out


def _target_dtype(name: str, dtype: torch.dtype, force_bf16: bool, forced) -> torch.dtype:
    for pat, dt in forced:
        if pat.match(name):
            return dt
    return torch.bfloat16 if force_bf16 and dtype.is_floating_point else dtype


def _vocab(src: Source, rows: int, opts: DcpToHfOptions, tok: dict) -> tuple[int, str]:
    """Real vocabulary size: --vocab-size, a given config, Megatron args, the tokenizer, or the rows."""
    reader, cfg = reader_of(src), src.config
    if opts.vocab_size:
        return int(opts.vocab_size), "--vocab-size"
    if src.config_from or src.config_origin == "config.json":
        return config_int(cfg, "vocab_size"), "config.json"
    args = reader.args if reader else None
    if args and args_vocab(args):
        return min(args_vocab(args), rows), "common.pt args"
    if tok.get("tokens"):
        div = int((args or {}).get("make_vocab_size_divisible_by") or 1)
        return min(math.ceil(tok["tokens"] / div) * div, rows), "tokenizer"
    return rows, "embedding rows"


@converter("dcp", "safetensors", lossless=True, name="dcp2st", demo_options={}, options=DcpToHfOptions)
def dcp2st(src: Source, opts: DcpToHfOptions) -> Source:
    """Megatron torch_dist DCP -> HF safetensors names (QKV per group, experts split, vocab trimmed)."""
    reader = reader_of(src)
    if reader is None:
        raise BadInputError("not opened by the DCP reader", path=src.path, fix="open it with --from dcp")
    cfg = dict(src.config)
    km = KeyMap(cfg, ops=opts.op_overrides)
    used, unmapped, dropped = _classify(km, [*src.infos, *reader.others], set(src.infos))
    if unmapped and not opts.allow_unmapped:
        raise UnknownTensorError(f"{len(unmapped)} key(s) match no rule: {', '.join(unmapped[:5])}"
                                 + (" ..." if len(unmapped) > 5 else ""), path=src.path, fix=_SCHEMA_FIX)
    reader.validate(used)
    tokdir = Path(opts.tokenizer_dir) if opts.tokenizer_dir else None
    tok = tokenizer_ids(tokdir or src.path)
    rows = src.infos["embedding.word_embeddings.weight"].shape[0] \
        if "embedding.word_embeddings.weight" in src.infos else km.mc.vocab_size
    vocab, how = _vocab(src, rows, opts, tok)
    if not 0 < vocab <= rows:
        raise BadInputError(f"vocab size {vocab} ({how}) must be in 1..{rows} (the embedding's rows)",
                            path=src.path, tensor="embedding.word_embeddings.weight", fix="pass --vocab-size N")
    cfg["vocab_size"] = vocab
    infos, thunks = _map_forward(src, km, used, vocab, bool(opts.force_bf16))
    _check_complete(src, km, infos)
    for key in ("eos_token_id", "pad_token_id"):
        if cfg.get(key) is None and f"{key[:-3]}_id" in tok:
            cfg[key] = tok[f"{key[:-3]}_id"]
    aux = dict(src.aux)
    if tokdir:
        aux.update(aux_files(tokdir))
    notes = {**src.notes, "vocab": {"rows_in_source": rows, "vocab_size": vocab, "trimmed_rows": rows - vocab,
                                    "from": how},
             "dropped_keys": len(dropped), "unmapped_skipped": unmapped}
    return src.derive(config=cfg, infos=infos, thunks=thunks, aux=aux, notes=notes)


def _classify(km: KeyMap, keys, tensors: set[str]) -> tuple[list[str], list[str], list[str]]:
    used, unmapped, dropped = [], [], []
    for k in ordered(keys):
        if km.dropped(k):
            dropped.append(k)
        elif k in tensors and km.match_megatron(k) is not None:
            used.append(k)
        else:
            unmapped.append(k)
    return used, unmapped, dropped


def _map_forward(src: Source, km: KeyMap, used: list[str], vocab: int, force_bf16: bool):
    forced, cache = _forced_dtypes(km), OrderedDict()
    infos: dict[str, TensorInfo] = {}
    thunks: dict[str, Callable] = {}
    origin: dict[str, str] = {}
    for key in used:
        rule, vals = km.match_megatron(key)
        info = src.infos[key]
        fn, params = km.op(rule)
        shape = list(info.shape[len(rule.axes):])
        if len(info.shape) < len(rule.axes) or any(info.shape[i] != km.counts[a] for i, a in enumerate(rule.axes)):
            raise BadInputError(f"leading axes {info.shape[:len(rule.axes)]} should be {rule.axes} = "
                                f"{[km.counts[a] for a in rule.axes]}", path=src.path, tensor=key,
                                fix="the config does not describe this checkpoint; pass --config-from")
        rows = vocab if rule.vocab else None
        if rows is not None:
            shape[0] = rows
        try:
            shapes = ops.out_shapes(fn, [tuple(shape)], info.dtype, **params)
        except (ValueError, RuntimeError) as e:
            raise _op_error(e, src, key) from None
        for lead in itertools.product(*(range(km.counts[a]) for a in rule.axes)):
            v = {**vals, **dict(zip(rule.axes, lead))}
            inst = _Instance(_slice_loader(src.get(key), lead), fn, params, rows, cache)
            for i, (pat, shp) in enumerate(zip(rule.hf, shapes)):
                name = pat.format(**v)
                if name in infos:
                    raise BadInputError(f"both {origin[name]!r} and {key!r} map to {name!r}", path=src.path,
                                        tensor=name, fix="remove one spelling from the checkpoint")
                dt = _target_dtype(name, info.dtype, force_bf16, forced)
                infos[name], thunks[name], origin[name] = TensorInfo(shp, dt), _output(inst, i, dt), key
    return infos, thunks


def _check_complete(src: Source, km: KeyMap, infos: dict) -> None:
    missing = [n for n in km.arch.expected_names(km.cfg) if n not in infos]
    if missing:
        raise UnknownTensorError(f"the checkpoint yields no {missing[0]!r} ({len(missing)} HF tensor(s) missing)",
                                 path=src.path, tensor=missing[0],
                                 fix="the DCP lacks these keys or the config does not describe it")


# -- safetensors -> dcp --------------------------------------------------------------

class ChunkedThunk:
    """A Megatron tensor written as chunks (one per stacked expert/layer); `chunks` feeds the DCP writer."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, chunks: list[tuple[tuple, tuple, Callable]]):
        self.shape, self.dtype, self.chunks = shape, dtype, chunks

    def __call__(self) -> torch.Tensor:
        out = torch.empty(self.shape, dtype=torch_dtype(self.dtype))
        for offsets, sizes, load in self.chunks:
            out[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))] = load()
        return out


@dataclass
class _Group:
    rule: Rule
    axes: tuple[str, ...]
    slots: dict = field(default_factory=dict)     # lead -> [hf name per op input]


def _export_key(rule: Rule, km: KeyMap, stack_layers: bool) -> tuple[str, tuple[str, ...]]:
    if stack_layers and rule.prefix != "global":
        pre = next(p for p in km.table["prefixes"] if p["name"] == rule.prefix)
        if pre.get("stacked"):
            return rule.megatron.replace(pre["megatron"], pre["stacked"], 1), ("layer",) + rule.axes
    return rule.megatron, rule.axes


def _inverse_groups(src: Source, km: KeyMap, stack_layers: bool) -> tuple[dict[str, _Group], list[str]]:
    groups: dict[str, _Group] = {}
    unmapped = []
    for name in ordered(src.infos):
        m = km.match_hf(name)
        if m is None:
            unmapped.append(name)
            continue
        rule, i, vals = m
        pattern, axes = _export_key(rule, km, stack_layers)
        key = pattern.format(**vals)
        g = groups.setdefault(key, _Group(rule, axes))
        g.slots.setdefault(tuple(vals[a] for a in axes), [None] * len(rule.hf))[i] = name
    return groups, unmapped


@converter("safetensors", "dcp", lossless=True, name="st2dcp", demo_options={}, options=HfToDcpOptions)
def st2dcp(src: Source, opts: HfToDcpOptions) -> Source:
    """HF safetensors -> Megatron torch_dist names (the inverse of every dcp2st rule)."""
    cfg = dict(src.config)
    km = KeyMap(cfg, ops=opts.op_overrides)
    groups, unmapped = _inverse_groups(src, km, bool(opts.stack_layers))
    if unmapped and not opts.allow_unmapped:
        raise UnknownTensorError(f"{len(unmapped)} tensor(s) match no rule: {', '.join(unmapped[:5])}",
                                 path=src.path, fix=_SCHEMA_FIX)
    vocab = km.mc.vocab_size
    rows = int(opts.padded_vocab_size or vocab)
    if rows < vocab:
        raise BadInputError(f"padded vocab {rows} is smaller than vocab_size {vocab}", path=src.path,
                            fix="pass --padded-vocab-size >= vocab_size")
    infos, thunks = {}, {}
    for key, g in groups.items():
        infos[key], thunks[key] = _inverse_one(src, km, key, g, rows)
    notes = {**src.notes, "vocab": {"vocab_size": vocab, "padded_rows": rows, "stack_layers":
                                    bool(opts.stack_layers)}, "unmapped_skipped": unmapped}
    return src.derive(infos=infos, thunks=thunks, config=cfg, notes=notes)


def _inverse_one(src: Source, km: KeyMap, key: str, g: _Group, rows: int):
    want = set(itertools.product(*(range(km.counts[a]) for a in g.axes)))
    names = [n for slot in g.slots.values() for n in slot if n]
    holes = sorted(want - set(g.slots)) or [lead for lead, s in g.slots.items() if None in s]
    if holes:
        raise UnknownTensorError(f"cannot build {key!r}: inputs for {dict(zip(g.axes, holes[0]))} are missing",
                                 path=src.path, tensor=names[0], fix="the checkpoint is incomplete")
    dtypes = {src.infos[n].code for n in names}     # codes: planning (--dry-run) needs no torch
    if len(dtypes) != 1:
        mixed = sorted({f"torch.{src.infos[n].dtype_name}" for n in names})
        raise BadInputError(f"inputs of {key!r} mix dtypes {mixed}", path=src.path,
                            tensor=names[0], fix="cast the checkpoint to one dtype first")
    dtype, (fn, params) = dtypes.pop(), km.op(g.rule)
    first = g.slots[min(g.slots)]
    try:
        (shape,) = ops.out_shapes(fn, [src.infos[n].shape for n in first], dtype, inverse=True, **params)
    except (ValueError, RuntimeError) as e:
        raise _op_error(e, src, first[0]) from None
    pad = rows if g.rule.vocab else None
    if pad is not None:
        shape = (pad, *shape[1:])
    k = len(g.axes)
    chunks = [((*lead, *([0] * len(shape))), (1,) * k + tuple(shape), _inverse_loader(src, slot, fn, params, pad, k))
              for lead, slot in sorted(g.slots.items())]
    full = tuple(km.counts[a] for a in g.axes) + tuple(shape)
    return TensorInfo(full, dtype), ChunkedThunk(full, dtype, chunks)   # dtype: a code until it is read


def _inverse_loader(src: Source, names: list[str], fn: str, params: dict, pad: int | None, k: int):
    def load():
        (t,) = ops.apply(fn, [src.load(n) for n in names], inverse=True, **params)
        if pad is not None:
            (t,) = ops.apply("trim_rows", [t], inverse=True, rows=pad)
        return t.reshape((1,) * k + tuple(t.shape))
    return load
