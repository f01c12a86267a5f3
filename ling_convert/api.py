"""The Python API: every public entry point. The CLI is a thin shell over these functions.

    >>> from ling_convert import api
    >>> api.convert("Ling-lite/", "Ling-lite-st/", to="safetensors")      # doctest: +SKIP
    >>> api.inspect_checkpoint("Ling-lite-st/")["architecture"]           # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .converters import all_edges
from .converters import fp8 as fp8_edges
from .converters.fp8 import FP8LoadWarning, tp_warnings
from .converters.config_ops import diff_paths as config_diff
from .converters.config_ops import show as config_show
from .converters.config_ops import validate_path as config_validate
from .converters.config_ops import yarn as config_yarn
from .converters.gguf import OUT_DTYPES
from .core.errors import BadInputError, RouteNotFoundError, UnsupportedError
from .core.output import parse_size
from .core.pool import check_workers
from .formats import all_formats, detect_format, open_source
from .formats.dcp.writer import plan_files, plan_items
from .formats.gguf.meta import refuse_if_unsupported
from .formats.mindie import compat_notes as mindie_notes
from .formats.mindie import layout as mindie_layout
from .formats.mindie import validate_mindie_dir
from .formats.writer import DEFAULT_SHARD
from .hub import quiet_clients
from .hub.sync import pull, push
from .pipeline import HF_NAMED, ConvertResult, check_complete, convert, execute, open_checkpoint, prepare, with_config_from
from .pipeline.demo import run_demo
from .pipeline.parallel import HF_TARGETS, convert_parallel, world
from .verify import VerifyReport, verify

__all__ = ["HF_NAMED", "ConvertResult", "FP8LoadWarning", "HybridResult", "VerifyReport", "check_complete", "config_diff",
           "config_show", "config_validate", "config_yarn", "convert", "graph", "mindie_layout", "mindie_notes",
           "pull", "push", "quiet_clients", "validate_mindie_dir",
           "dcp_to_hf", "dequantize_checkpoint", "from_gguf_file", "hf_to_dcp", "inspect_checkpoint",
           "open_checkpoint", "prepare", "quantize_checkpoint", "run_demo", "to_gguf_file", "to_hybrid_linear",
           "tp_warnings", "verify", "with_config_from", "world"]


def graph() -> dict:
    """The format nodes and converter edges: {"formats": {name: {...}}, "edges": [{...}]}."""
    fm = {n: {"summary": f.summary, "writable": f.write is not None} for n, f in all_formats().items()}
    ed = [{"edge": e.name, "from": e.src, "to": e.dst, "lossless": e.lossless} for e in all_edges()]
    return {"formats": fm, "edges": ed}


def inspect_checkpoint(path: str | Path, fmt: str | None = None) -> dict:
    """Format, architecture, layer/expert counts, parameters, dtypes (tensors and bytes), files."""
    from .pipeline.checkpoint_info import inspect_checkpoint as info
    return info(path, fmt)


# -- DCP (dcp2st / st2dcp) ---------------------------------------------------------------

def dcp_to_hf(src, out, *, force_bf16: bool = False, force_fp8: bool = False, scale_fmt: str | None = None,
              workers: int | None = None, max_shard_size="5GB", vocab_size: int | None = None, config_from=None,
              tokenizer_dir=None, allow_unmapped: bool = False, force: bool = False, resume: bool = False,
              dry_run: bool = False, progress=None, fp8_options: dict | None = None) -> ConvertResult:
    """Megatron torch_dist DCP -> HF safetensors (bf16 or, with `force_fp8`, block FP8).

    FP8 scales default to `scale_fmt="ling"`: weights and scales byte-identical to Ling-V2's
    tools/convert_dcp_to_safetensors.py --force-fp8 (tests/test_ling_fp8_compat.py)."""
    if force_bf16 and force_fp8:
        raise BadInputError("--force-bf16 and --force-fp8 exclude each other", fix="pass one of them")
    if scale_fmt and not force_fp8:
        raise BadInputError("--scale-fmt applies to FP8 output only", fix="add --force-fp8, or drop --scale-fmt")
    check_workers(workers)
    to = "fp8" if force_fp8 else "safetensors"
    # FP8 output keeps unquantised tensors in bf16 (norms, router, embeddings), expert_bias in fp32.
    options = {"force_bf16": force_bf16 or force_fp8, "vocab_size": vocab_size, "allow_unmapped": allow_unmapped,
               "config_from": str(config_from) if config_from else None,
               "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir else None,
               "scale_fmt": (scale_fmt or "ling") if force_fp8 else None, **(fp8_options or {})}
    options = {k: v for k, v in options.items() if v not in (None, False)}
    _, size = world()
    try:        # the route is planned once, inside the pipeline; a missing fp8 edge surfaces there
        if dry_run or size <= 1 or to not in HF_TARGETS:     # one process: its writer fills shards with `workers`
            return convert(src, out, to=to, from_format="dcp", max_shard_size=max_shard_size, force=force,
                           resume=resume, dry_run=dry_run, options=options, progress=progress, workers=workers)
        return convert_parallel(src, out, to=to, options=options, from_format="dcp", workers=workers or 1,
                                max_shard_size=max_shard_size, force=force, resume=resume, progress=progress)
    except RouteNotFoundError:
        if not force_fp8:
            raise
        raise UnsupportedError("--force-fp8 needs the safetensors -> fp8 edge, which is not installed",
                               fix="convert to bf16 first, then run `ling-convert quantize`") from None


def hf_to_dcp(src, out, *, max_shard_size="5GB", padded_vocab_size: int | None = None,
              stack_layers: bool = False, allow_unmapped: bool = False, force: bool = False,
              resume: bool = False, dry_run: bool = False, progress=None) -> ConvertResult:
    """HF checkpoint (safetensors or .bin) -> Megatron torch_dist DCP loadable by `dcp.load`."""
    options = {"padded_vocab_size": padded_vocab_size, "stack_layers": stack_layers,
               "allow_unmapped": allow_unmapped}
    options = {k: v for k, v in options.items() if v not in (None, False)}
    if dry_run:
        return _dcp_plan(src, max_shard_size, options)
    return convert(Path(src), out, to="dcp", max_shard_size=max_shard_size, force=force, resume=resume,
                       options=options, progress=progress)


def _dcp_plan(src, max_shard_size, options: dict) -> ConvertResult:
    """--dry-run for st2dcp: the .distcp files the writer would produce (no tensor data read)."""
    lazy, route = prepare(src, "dcp", options=options)
    files = plan_files(plan_items(lazy), parse_size(max_shard_size))
    shards = [{"file": f"__0_{i}.distcp", "tensors": len({it.fqn for it in items}),
               "bytes": sum(it.nbytes for it in items)} for i, items in enumerate(files)]
    return ConvertResult(None, [e.name for e in route], lazy.source_format, "dcp", len(lazy.infos),
                             lazy.total_bytes, shards=shards, dry_run=True)


# -- FP8 (quantize / dequantize) ---------------------------------------------------------

def quantize_checkpoint(src, out, *, scheme: str = "fp8-block", block_size: int = 128, scale_fmt: str = "float",
                        tp: int | None = None, workers: int | None = None, **convert_kw):
    """Any supported bf16 checkpoint -> block FP8: `quantize_checkpoint("Ling-mini-2.0/", "out/", tp=4)`."""
    if not convert_kw.get("from_format") and detect_format(src).name == "fp8":
        raise BadInputError("checkpoint is already block FP8", path=src,
                            fix="quantise the bf16 original, or run `ling-convert dequantize` first")
    opts = {"scheme": scheme, "block_size": block_size, "scale_fmt": fp8_edges.scale_format({"scale_fmt": scale_fmt}),
            "tp": tp, "workers": workers}
    return convert(src, out, to="fp8", options=opts, **convert_kw)


def dequantize_checkpoint(src, out, *, dtype: str | None = None, workers: int | None = None, **convert_kw):
    """Block FP8 -> bf16 safetensors: `dequantize_checkpoint("Ling-1T-FP8/", "out/")`."""
    return convert(src, out, to="safetensors", from_format="fp8",
                   options={"dequant_dtype": dtype, "workers": workers}, **convert_kw)


# -- GGUF -------------------------------------------------------------------------------

def to_gguf_file(src: str | Path, out: str | Path, *, outtype: str = "auto", split_max_size: str | int | None = None,
                 no_mtp: bool = False, tokenizer_dir: str | Path | None = None, force: bool = False,
                 from_format: str | None = None, llama_defaults: bool = False, resume: bool = False,
                 progress: Callable[[int], None] | None = None, workers: int | None = None, dry_run: bool = False):
    """Any supported checkpoint -> one GGUF file (or split files) for llama.cpp; a GGUF is re-quantised.
    `dry_run` plans the route and the tensors and reads no tensor data."""
    # NOTE: refuse llama.cpp-less architectures before anything else reads the checkpoint.
    if Path(src).exists():
        refuse_if_unsupported(open_source(src, from_format).config, src)
    opts = {"outtype": outtype, "split_max_size": split_max_size, "no_mtp": no_mtp, "llama_defaults": llama_defaults,
            "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir else None}
    opts = {k: v for k, v in opts.items() if v is not None}
    if dry_run:
        lazy, route = prepare(src, "gguf", from_format=from_format, options=opts)
        plan = [{"file": Path(out).name, "tensors": len(lazy.infos), "bytes": lazy.total_bytes}]
        return ConvertResult(None, [e.name for e in route], lazy.source_format, "gguf", len(lazy.infos),
                             lazy.total_bytes, shards=plan, dry_run=True)
    return convert(src, out, to="gguf", from_format=from_format, force=force, resume=resume, progress=progress,
                   options=opts, workers=workers)


def from_gguf_file(src: str | Path, out: str | Path, *, dtype: str = "keep", tokenizer_dir: str | Path | None = None,
                   llama_defaults: bool = False, max_shard_size: str | int = "5GB", force: bool = False,
                   resume: bool = False, progress: Callable[[int], None] | None = None):
    """GGUF -> HF safetensors directory (dequantised, experts unstacked, Q/K un-permuted)."""
    if dtype not in OUT_DTYPES:
        raise BadInputError(f"unknown --dtype {dtype!r}", fix=f"use one of: {', '.join(OUT_DTYPES)}")
    opts = {"dtype": dtype, "llama_defaults": llama_defaults,
            "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir else None}
    return convert(src, out, to="safetensors", from_format="gguf", force=force, resume=resume,
                       max_shard_size=max_shard_size, progress=progress, options={k: v for k, v in opts.items() if v is not None})


# -- hybrid-linear ------------------------------------------------------------------------

@dataclass
class HybridResult:
    output: Path | None
    plan: dict
    tensors: int
    bytes: int
    shards: list[dict]
    dry_run: bool = False


def to_hybrid_linear(src: str | Path, out: str | Path, *, linear_layers: str | None = None,
                     layer_group_size: int | None = None, init: str | None = None,
                     group_norm_size: int | None = None, modeling_dir: str | Path | None = None,
                     max_shard_size: str | int = DEFAULT_SHARD, force: bool = False, resume: bool = False,
                     dry_run: bool = False) -> HybridResult:
    """Convert a softmax Ling checkpoint (any readable format) into the hybrid-linear layout at OUT."""
    opts = {"linear_layers": linear_layers, "layer_group_size": layer_group_size, "init": init,
            "group_norm_size": group_norm_size, "modeling_dir": str(modeling_dir) if modeling_dir else None}
    opts = {k: v for k, v in opts.items() if v is not None}
    lazy, route = prepare(src, "hybrid-linear", options=opts)      # the route ends with the to-hybrid-linear edge
    r = execute(lazy, route, out, to="hybrid-linear", max_shard_size=max_shard_size, force=force, resume=resume,
                dry_run=dry_run, options=opts)
    return HybridResult(r.output, lazy.notes["hybrid_linear"], r.tensors, r.bytes, r.shards, dry_run)
