"""The Python API: every public entry point. The CLI is a thin shell over these functions.

    >>> from ling_convert import api
    >>> api.convert("Ling-lite/", "Ling-lite-st/", to="safetensors")      # doctest: +SKIP
    >>> api.inspect_checkpoint("Ling-lite-st/")["architecture"]           # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .converters import CommonOptions, all_edges
from .converters import fp8 as fp8_edges
from .converters.fp8 import DequantizeOptions, FP8LoadWarning, QuantizeOptions, tp_warnings
from .converters.config_ops import diff_paths as config_diff
from .converters.config_ops import show as config_show
from .converters.config_ops import validate_path as config_validate
from .converters.config_ops import yarn as config_yarn
# after config_ops, which imports formats.safetensors before formats.writer (their import order matters)
from .converters.dcp import Dcp2stOptions, DcpToHfOptions, HfToDcpOptions
from .converters.gguf import OUT_DTYPES, FromGgufOptions
from .converters.hybrid import HybridOptions
from .core.errors import BadInputError, RouteNotFoundError, UnsupportedError
from .core.options import build, changed, takes_options
from .core.output import parse_size
from .core.pool import check_workers
from .formats import all_formats, detect_format, open_source, read_config
from .formats.dcp.writer import plan_files, plan_items
from .formats.gguf.meta import refuse_if_unsupported
from .formats.gguf.writer import GgufOptions
from .formats.mindie import compat_notes as mindie_notes
from .formats.mindie import layout as mindie_layout
from .formats.mindie import validate_mindie_dir
from .formats.mindie.deploy import MindieOptions
from .formats.writer import DEFAULT_SHARD
from .hub import quiet_clients
from .hub.sync import pull, push
from .pipeline import HF_NAMED, ConvertResult, check_complete, convert, execute, open_checkpoint, prepare, with_config_from
from .pipeline.demo import run_demo
from .pipeline.parallel import HF_TARGETS, convert_parallel, world
from .verify import VerifyReport, verify

__all__ = ["HF_NAMED", "CommonOptions", "ConvertResult", "Dcp2stOptions", "DcpToHfOptions", "DequantizeOptions",
           "FromGgufOptions", "GgufOptions", "HfToDcpOptions", "HybridOptions", "MindieOptions", "QuantizeOptions", "FP8LoadWarning", "HybridResult", "VerifyReport", "check_complete", "config_diff",
           "config_show", "config_validate", "config_yarn", "convert", "graph", "mindie_layout", "mindie_notes",
           "pull", "push", "quiet_clients", "validate_mindie_dir",
           "dcp_to_hf", "dequantize_checkpoint", "from_gguf_file", "hf_to_dcp", "inspect_checkpoint",
           "open_checkpoint", "prepare", "quantize_checkpoint", "run_demo", "to_gguf_file", "to_hybrid_linear",
           "tp_warnings", "verify", "with_config_from", "world", "read_config"]


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
# Each entry point takes its options as one frozen object (`options=`) or as keywords of the same
# names (`takes_options`); a keyword it does not know raises OptionError, a TypeError.

@takes_options(Dcp2stOptions)
def dcp_to_hf(src, out, *, options: Dcp2stOptions, max_shard_size="5GB", force: bool = False, resume: bool = False,
              dry_run: bool = False, progress=None, fp8_options: dict | None = None) -> ConvertResult:
    """Megatron torch_dist DCP -> HF safetensors (bf16 or, with `force_fp8`, block FP8).

    FP8 scales default to `scale_fmt="ling"`: weights and scales byte-identical to Ling-V2's
    tools/convert_dcp_to_safetensors.py --force-fp8 (tests/test_ling_fp8_compat.py)."""
    o = build(Dcp2stOptions, options, **(fp8_options or {}))
    if o.force_bf16 and o.force_fp8:
        raise BadInputError("--force-bf16 and --force-fp8 exclude each other", fix="pass one of them")
    if o.scale_fmt and not o.force_fp8:
        raise BadInputError("--scale-fmt applies to FP8 output only", fix="add --force-fp8, or drop --scale-fmt")
    check_workers(o.workers)
    to = "fp8" if o.force_fp8 else "safetensors"
    edge_opts = {k: v for k, v in changed(o).items() if k not in ("force_fp8", "workers")}
    if o.force_fp8:   # unquantised tensors stay bf16 (norms, router, embeddings), expert_bias fp32
        edge_opts.update(force_bf16=True, scale_fmt=o.scale_fmt or "ling")
    _, size = world()
    try:        # the route is planned once, inside the pipeline; a missing fp8 edge surfaces there
        if dry_run or size <= 1 or to not in HF_TARGETS:     # one process: its writer fills shards with `workers`
            return convert(src, out, to=to, from_format="dcp", max_shard_size=max_shard_size, force=force,
                           resume=resume, dry_run=dry_run, options=edge_opts, progress=progress, workers=o.workers)
        return convert_parallel(src, out, to=to, options=edge_opts, from_format="dcp", workers=o.workers or 1,
                                max_shard_size=max_shard_size, force=force, resume=resume, progress=progress)
    except RouteNotFoundError:
        if not o.force_fp8:
            raise
        raise UnsupportedError("--force-fp8 needs the safetensors -> fp8 edge, which is not installed",
                               fix="convert to bf16 first, then run `ling-convert quantize`") from None


@takes_options(HfToDcpOptions)
def hf_to_dcp(src, out, *, options: HfToDcpOptions, max_shard_size="5GB", force: bool = False, resume: bool = False,
              dry_run: bool = False, progress=None) -> ConvertResult:
    """HF checkpoint (safetensors or .bin) -> Megatron torch_dist DCP loadable by `dcp.load`."""
    if dry_run:
        return _dcp_plan(src, max_shard_size, options)
    return convert(Path(src), out, to="dcp", max_shard_size=max_shard_size, force=force, resume=resume,
                   options=options, progress=progress)


def _dcp_plan(src, max_shard_size, options: HfToDcpOptions) -> ConvertResult:
    """--dry-run for st2dcp: the .distcp files the writer would produce (no tensor data read)."""
    lazy, route = prepare(src, "dcp", options=options)
    files = plan_files(plan_items(lazy), parse_size(max_shard_size))
    shards = [{"file": f"__0_{i}.distcp", "tensors": len({it.fqn for it in items}),
               "bytes": sum(it.nbytes for it in items)} for i, items in enumerate(files)]
    return ConvertResult(None, [e.name for e in route], lazy.source_format, "dcp", len(lazy.infos),
                             lazy.total_bytes, shards=shards, dry_run=True)


# -- FP8 (quantize / dequantize) ---------------------------------------------------------

@takes_options(QuantizeOptions)
def quantize_checkpoint(src, out, *, options: QuantizeOptions, from_format: str | None = None,
                        max_shard_size: str | int = DEFAULT_SHARD, force: bool = False, resume: bool = False,
                        dry_run: bool = False, progress: Callable[[int], None] | None = None) -> ConvertResult:
    """Any supported bf16 checkpoint -> block FP8: `quantize_checkpoint("Ling-mini-2.0/", "out/", tp=4)`."""
    if not from_format and detect_format(src).name == "fp8":
        raise BadInputError("checkpoint is already block FP8", path=src,
                            fix="quantise the bf16 original, or run `ling-convert dequantize` first")
    fp8_edges.scale_format(options.scale_fmt)
    return convert(src, out, to="fp8", from_format=from_format, max_shard_size=max_shard_size, force=force,
                   resume=resume, dry_run=dry_run, options=options, progress=progress)


@takes_options(DequantizeOptions)
def dequantize_checkpoint(src, out, *, options: DequantizeOptions, max_shard_size: str | int = DEFAULT_SHARD,
                          force: bool = False, resume: bool = False, dry_run: bool = False,
                          progress: Callable[[int], None] | None = None) -> ConvertResult:
    """Block FP8 -> bf16 safetensors: `dequantize_checkpoint("Ling-1T-FP8/", "out/")`."""
    return convert(src, out, to="safetensors", from_format="fp8", max_shard_size=max_shard_size, force=force,
                   resume=resume, dry_run=dry_run, options=options, progress=progress)


# -- GGUF -------------------------------------------------------------------------------

@takes_options(GgufOptions)
def to_gguf_file(src: str | Path, out: str | Path, *, options: GgufOptions, force: bool = False,
                 from_format: str | None = None, resume: bool = False,
                 progress: Callable[[int], None] | None = None, workers: int | None = None, dry_run: bool = False):
    """Any supported checkpoint -> one GGUF file (or split files) for llama.cpp; a GGUF is re-quantised.
    `dry_run` plans the route and the tensors and reads no tensor data."""
    # NOTE: refuse llama.cpp-less architectures before anything else reads the checkpoint.
    if Path(src).exists():
        refuse_if_unsupported(open_source(src, from_format).config, src)
    if dry_run:
        lazy, route = prepare(src, "gguf", from_format=from_format, options=options)
        plan = [{"file": Path(out).name, "tensors": len(lazy.infos), "bytes": lazy.total_bytes}]
        return ConvertResult(None, [e.name for e in route], lazy.source_format, "gguf", len(lazy.infos),
                             lazy.total_bytes, shards=plan, dry_run=True)
    return convert(src, out, to="gguf", from_format=from_format, force=force, resume=resume, progress=progress,
                   options=options, workers=workers)


@takes_options(FromGgufOptions)
def from_gguf_file(src: str | Path, out: str | Path, *, options: FromGgufOptions, max_shard_size: str | int = "5GB",
                   force: bool = False, resume: bool = False, progress: Callable[[int], None] | None = None):
    """GGUF -> HF safetensors directory (dequantised, experts unstacked, Q/K un-permuted)."""
    if options.dtype not in OUT_DTYPES:
        raise BadInputError(f"unknown --dtype {options.dtype!r}", fix=f"use one of: {', '.join(OUT_DTYPES)}")
    return convert(src, out, to="safetensors", from_format="gguf", force=force, resume=resume,
                   max_shard_size=max_shard_size, progress=progress, options=options)


# -- hybrid-linear ------------------------------------------------------------------------

@dataclass
class HybridResult:
    output: Path | None
    plan: dict
    tensors: int
    bytes: int
    shards: list[dict]
    dry_run: bool = False


@takes_options(HybridOptions)
def to_hybrid_linear(src: str | Path, out: str | Path, *, options: HybridOptions,
                     max_shard_size: str | int = DEFAULT_SHARD, force: bool = False, resume: bool = False,
                     dry_run: bool = False) -> HybridResult:
    """Convert a softmax Ling checkpoint (any readable format) into the hybrid-linear layout at OUT."""
    lazy, route = prepare(src, "hybrid-linear", options=options)   # the route ends with the to-hybrid-linear edge
    r = execute(lazy, route, out, to="hybrid-linear", max_shard_size=max_shard_size, force=force, resume=resume,
                dry_run=dry_run, options=options)
    return HybridResult(r.output, lazy.notes["hybrid_linear"], r.tensors, r.bytes, r.shards, dry_run)
