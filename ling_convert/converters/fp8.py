"""Edges safetensors -> fp8 (`quantize`) and fp8 -> safetensors (`dequantize`).

Both are lazy: tensor data is read only when the writer asks, and the quant kernel
runs in worker processes a few tensors ahead of it (core/pool.py). Metadata
problems (an FP8 weight without its scale, an orphan scale, a scale of the wrong
shape) are found here, before anything is written. config.json changes with the
tensors: quantize adds `quantization_config`, dequantize removes it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from ..core.errors import BadInputError, ScaleMissingError, UnsupportedError
from ..core.pool import Job, Prefetch, check_workers, default_workers
from ..core.source import Source, TensorInfo, ordered, torch_dtype
from ..model.arch import detect_architecture, head_dim
from ..model.config import config_int
from ..quant import get_scheme
from ..quant.fp8_block import as_block
from ..quant.policy import load_policy, module_of
from . import converter


@dataclass(frozen=True)
class QuantizeOptions:
    scheme: str = "fp8-block"
    block_size: int | None = None
    scale_fmt: str = "float"
    tp: int | None = None
    workers: int | None = None


@dataclass(frozen=True)
class DequantizeOptions:
    dtype: str | None = None            # default: the config's torch_dtype, else bfloat16
    workers: int | None = None

SCALE_FMTS = ("float", "ue8m0", "ling")   # exact / all powers of two / Ling's recipe (policy's ue8m0 list)
# dtypes as safetensors codes: planning (and --dry-run) never touches torch (core/deferred.py)
FLOAT8 = ("F8_E4M3", "F8_E5M2")
HIGH_PRECISION = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
# Below this many bytes to quantise, starting worker processes costs more than it saves.
AUTO_PARALLEL_BYTES = 64 << 20


class FP8LoadWarning(UserWarning):
    """A shape serving engines will refuse for block FP8 (e.g. a TP partition off the block grid)."""


# -- jobs (module level: they run in worker processes) ----------------------------

def _quantize_job(w, *, scheme: str, block, pow2: bool, name: str):
    return get_scheme(scheme).quantize(w, block, pow2=pow2, name=name)


def _dequantize_job(q, s, *, scheme: str, block, dtype, name: str):
    return (get_scheme(scheme).dequantize(q, s, block, dtype=torch_dtype(dtype), name=name),)


def _workers(opts, nbytes: int) -> int:
    n = check_workers(opts.workers)
    if n is not None:
        return n
    return default_workers() if nbytes >= AUTO_PARALLEL_BYTES else 1


# -- quantize ------------------------------------------------------------------------

def scale_format(fmt: str | None) -> str:
    fmt = fmt or "float"
    if fmt not in SCALE_FMTS:
        raise BadInputError(f"unknown scale format {fmt!r}", fix=f"use one of: {', '.join(SCALE_FMTS)}")
    return fmt


def _refuse_quantized(src: Source, suffix: str) -> None:
    qc = (src.config or {}).get("quantization_config")
    if qc:
        raise BadInputError(f"config.json already has a quantization_config ({qc.get('quant_method')!r})",
                            path=src.path, fix="dequantize it first, or convert the original bf16 checkpoint")
    for name, info in src.infos.items():
        if info.code in FLOAT8 or name.endswith(suffix):
            raise BadInputError("checkpoint is already FP8", path=src.path, tensor=name,
                                fix="use `ling-convert dequantize` first, or start from the bf16 checkpoint")


def _check_quantizable(src: Source, name: str, info: TensorInfo) -> None:
    if len(info.shape) != 2 or info.code not in HIGH_PRECISION.values():
        raise BadInputError(f"policy says quantise, but it is {list(info.shape)} {info.dtype}; "
                            "block FP8 needs a 2-D bf16/fp16/fp32 weight", path=src.path, tensor=name,
                            fix="check the checkpoint against its config.json")


@converter("safetensors", "fp8", lossless=False, name="quantize", demo_options={}, options=QuantizeOptions)
def quantize_edge(src: Source, opts: QuantizeOptions) -> Source:
    """bf16 safetensors -> block FP8 (e4m3 + float32 weight_scale_inv) per schemas/precision/."""
    scheme = get_scheme(opts.scheme or "fp8-block")
    # NOTE: 0 is not "default": as_block refuses it, as every command does (tests/test_small_things.py).
    block = as_block(scheme.default_block if opts.block_size is None else opts.block_size)
    scale_fmt = scale_format(opts.scale_fmt)
    _refuse_quantized(src, scheme.scale_suffix)
    policy = load_policy(detect_architecture(src.config, src.path).name)
    infos, thunks, jobs, kept, unlisted, pow2_count = {}, {}, {}, [], [], 0
    for name in ordered(src.infos):
        info, act = src.infos[name], policy.action(name)
        if act != "quantize":
            infos[name], thunks[name] = info, src.get(name)
            unlisted += [name] if act == "unlisted" else []
            kept += [module_of(name)] if len(info.shape) == 2 else []
            continue
        _check_quantizable(src, name, info)
        pow2 = scale_fmt == "ue8m0" or (scale_fmt == "ling" and policy.ue8m0(name))
        pow2_count += pow2
        jobs[name] = Job(_quantize_job, (src.get(name),),
                         (("scheme", scheme.name), ("block", block), ("pow2", pow2), ("name", name)))
        infos[name] = TensorInfo(info.shape, scheme.storage_dtype)
        infos[scheme.scale_name(name)] = TensorInfo(scheme.scale_shape(info.shape, block), "F32")
    nbytes = sum(src.infos[n].nbytes for n in jobs)
    pre = Prefetch(jobs, workers=_workers(opts, nbytes), parts=2)
    for name in jobs:
        thunks[name], thunks[scheme.scale_name(name)] = pre.thunk(name, 0), pre.thunk(name, 1)
    qc = scheme.config(block, kept, "ue8m0" if scale_fmt == "ue8m0" else None)
    cfg = {**(src.config or {}), "quantization_config": qc}
    problems = tp_warnings(cfg, block, int(opts.tp or 1))
    for msg in problems:
        warnings.warn(msg, FP8LoadWarning, stacklevel=2)
    notes = {**src.notes, "fp8": {"scheme": scheme.name, "block": list(block), "scale_fmt": scale_fmt,
                                  "quantized": len(jobs), "kept": len(src.infos) - len(jobs),
                                  "pow2_scales": pow2_count, "unlisted_kept": unlisted, "warnings": problems}}
    return src.derive(infos=infos, thunks=thunks, config=cfg, notes=notes)


# -- TP / block-grid check ---------------------------------------------------------

def _partitioned_sizes(cfg: dict) -> list[tuple[str, int, int]]:
    """(what, full size, smallest per-partition size) for every TP-split GEMM dimension."""
    d, nh, nkv = head_dim(cfg), config_int(cfg, "num_attention_heads"), config_int(cfg, "num_key_value_heads", 0)
    moe = config_int(cfg, "moe_intermediate_size", 0)
    shared = config_int(cfg, "moe_shared_expert_intermediate_size", 0) or moe * config_int(cfg, "num_shared_experts", 0)
    rows = [("moe_intermediate_size", moe, 1), ("shared-expert intermediate size", shared, 1),
            ("query width (heads x head_dim)", nh * d, d), ("key/value width (kv_heads x head_dim)", nkv * d, d)]
    if config_int(cfg, "first_k_dense_replace", 0) > 0:
        rows.append(("intermediate_size (dense MLP)", config_int(cfg, "intermediate_size", 0), 1))
    return [r for r in rows if r[1] > 0]


def tp_warnings(cfg: dict, block, tp: int = 1) -> list[str]:
    """Per-partition sizes off the block grid: vLLM/SGLang refuse these at load.

    Merged column-parallel and MoE layers need every output partition % block_n == 0 even at TP 1;
    with TP > 1 the row-parallel input partition must also be % block_k == 0."""
    if tp < 1:
        raise BadInputError(f"--tp {tp} must be at least 1", fix="pass the tensor-parallel degree, e.g. --tp 8")
    bm, bn = as_block(block)
    out = []
    for what, size, floor in _partitioned_sizes(cfg):
        if size % tp:
            out.append(f"{what} {size} does not split evenly over tp {tp}")
            continue
        per = max(size // tp, floor)     # KV heads fewer than tp are replicated, not split
        if per % bn or (tp > 1 and per % bm):
            out.append(f"{what} {size} / tp {tp} = {per} per partition is not a multiple of the FP8 block "
                       f"{bn}: vLLM/SGLang refuse to load it (vllm#17569); use expert parallelism, "
                       "another --tp, or a smaller --block-size")
    return out


# -- dequantize ----------------------------------------------------------------------

def _pairs(src: Source, scheme, block) -> dict[str, str]:
    """weight -> scale for every FP8 weight; refuses orphans either way and misshapen scales."""
    pairs = {}
    for name in ordered(src.infos):
        info = src.infos[name]
        weight = scheme.weight_name(name)
        if weight is not None:
            if weight not in src.infos or src.infos[weight].code not in FLOAT8:
                found = "absent" if weight not in src.infos else f"stored as {src.infos[weight].dtype}"
                raise ScaleMissingError(f"scale without its FP8 weight {weight!r} ({found})", path=src.path,
                                        tensor=name, fix="remove the stray scale or restore the weight's shard")
            scheme.check_scale(src.infos[weight].shape, info.shape, block, name)
        elif info.code in FLOAT8:
            if scheme.scale_name(name) not in src.infos:
                raise ScaleMissingError(f"FP8 weight has no {scheme.scale_name(name)!r}", path=src.path,
                                        tensor=name, fix="restore the missing scale (its shard?); "
                                        "without it the weight cannot be dequantised")
            pairs[name] = scheme.scale_name(name)
    if not pairs:
        raise BadInputError("no FP8 weights found", path=src.path, fix="this checkpoint is not block FP8")
    return pairs


def _out_dtype(opts: DequantizeOptions, cfg: dict) -> str:
    """The output dtype's name ("bfloat16")."""
    want = opts.dtype or cfg.get("torch_dtype") or "bfloat16"
    if want not in HIGH_PRECISION:
        raise BadInputError(f"cannot dequantise to {want!r}", fix=f"use one of: {', '.join(HIGH_PRECISION)}")
    return want


@converter("fp8", "safetensors", lossless=False, name="dequantize", demo_options={}, options=DequantizeOptions)
def dequantize_edge(src: Source, opts: DequantizeOptions) -> Source:
    """block FP8 -> bf16 safetensors: w = fp8 * scale_inv per block; drops scales and quantization_config."""
    scheme = get_scheme("fp8-block")
    cfg = dict(src.config or {})
    qc = cfg.pop("quantization_config", None)
    if qc is not None and not scheme.owns(qc):
        raise UnsupportedError(f"quant_method {qc.get('quant_method')!r} is not block FP8", path=src.path,
                               fix="only DeepSeek-style `fp8` checkpoints with weight_scale_inv are supported")
    block = scheme.block_of(qc)
    dtype = _out_dtype(opts, cfg)
    pairs = _pairs(src, scheme, block)
    scales = set(pairs.values())
    infos, thunks, jobs = {}, {}, {}
    for name in ordered(src.infos):
        if name in scales:
            continue
        if name in pairs:
            infos[name] = TensorInfo(src.infos[name].shape, HIGH_PRECISION[dtype])
            jobs[name] = Job(_dequantize_job, (src.get(name), src.get(pairs[name])),
                             (("scheme", scheme.name), ("block", block), ("dtype", HIGH_PRECISION[dtype]),
                              ("name", name)))
        else:
            infos[name], thunks[name] = src.infos[name], src.get(name)
    pre = Prefetch(jobs, workers=_workers(opts, sum(src.infos[n].nbytes for n in jobs) * 2), parts=1)
    thunks.update({name: pre.thunk(name, 0) for name in jobs})
    cfg["torch_dtype"] = dtype
    notes = {**src.notes, "fp8": {"dequantized": len(jobs), "block": list(block), "dtype": cfg["torch_dtype"]}}
    return src.derive(infos=infos, thunks=thunks, config=cfg, notes=notes)
