"""`ling-convert quantize` (bf16 -> block FP8) and `ling-convert dequantize` (FP8 -> bf16)."""

from __future__ import annotations

import warnings
from typing import Annotated, Optional

import typer

from . import app
from .common import (api, DryRunOpt, ForceOpt, JsonOpt, MaxShardOpt, OutArg, ResumeOpt, SrcArg, WorkersOpt,
                     byte_progress, err, human_bytes, out, emit_json, workers_line)

SchemeOpt = Annotated[str, typer.Option("--scheme", help="Quantisation scheme (fp8-block).")]
BlockOpt = Annotated[int, typer.Option("--block-size", help="Square block edge for scales (vLLM/SGLang: 128).")]
ScaleFmtOpt = Annotated[str, typer.Option(
    "--scale-fmt", help="float: exact amax/448 scales; ue8m0: every scale a power of two (config scale_fmt); "
                        "ling: powers of two where Ling's recipe uses them (attention.dense, experts' gate/up).")]
TpOpt = Annotated[Optional[int], typer.Option("--tp", help="Target tensor-parallel degree to check shapes for.")]
DequantDtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", help="Output dtype: bfloat16, float16 or float32 (default: config torch_dtype).")]


def _run(fn, src, dst, label: str, *, as_json: bool, dry_run: bool, **kw):
    """Call the API once; show shape warnings (the quantize edge raises them) after the result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", api.FP8LoadWarning)
        with byte_progress(label, quiet=as_json or dry_run) as prog:
            r = fn(src, dst, dry_run=dry_run, progress=prog, **kw)
    notes = [str(w.message) for w in caught if issubclass(w.category, api.FP8LoadWarning)]
    if as_json:
        emit_json({**r.__dict__, "warnings": notes})
        return
    out.print(f"route: {' -> '.join([r.source_format, *r.route])} => {r.target_format}")
    out.print(f"{r.tensors} tensors, {human_bytes(r.bytes)}")
    out.print(workers_line(r))
    out.print("dry run: no tensor data read, nothing written" if r.dry_run else f"wrote {r.output}")
    for n in notes:
        err.print(f"warning: {n}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def quantize(src: SrcArg, dst: OutArg, scheme: SchemeOpt = "fp8-block", block_size: BlockOpt = 128,
             scale_fmt: ScaleFmtOpt = "float", tp: TpOpt = None, workers: WorkersOpt = None,
             max_shard_size: MaxShardOpt = "5GB", force: ForceOpt = False, resume: ResumeOpt = False,
             dry_run: DryRunOpt = False, as_json: JsonOpt = False):
    """bf16 checkpoint -> block-FP8 safetensors (e4m3 + weight_scale_inv) that vLLM/SGLang load as `fp8`."""
    opts = api.QuantizeOptions(scheme=scheme, block_size=block_size, scale_fmt=scale_fmt, tp=tp, workers=workers)
    _run(api.quantize_checkpoint, src, dst, "quantize", options=opts, max_shard_size=max_shard_size, force=force,
         resume=resume, dry_run=dry_run, as_json=as_json)


@app.command()
def dequantize(src: SrcArg, dst: OutArg, dtype: DequantDtypeOpt = None, workers: WorkersOpt = None,
               max_shard_size: MaxShardOpt = "5GB", force: ForceOpt = False, resume: ResumeOpt = False,
               dry_run: DryRunOpt = False, as_json: JsonOpt = False):
    """Block-FP8 checkpoint -> bf16 safetensors; removes quantization_config and every scale."""
    _run(api.dequantize_checkpoint, src, dst, "dequantize", options=api.DequantizeOptions(dtype=dtype, workers=workers),
         max_shard_size=max_shard_size, force=force, resume=resume, dry_run=dry_run, as_json=as_json)
