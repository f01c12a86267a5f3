"""`ling-convert to-gguf` (any checkpoint -> llama.cpp GGUF) and `ling-convert from-gguf` (GGUF -> HF)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import (api, DryRunOpt, ForceOpt, FromOpt, JsonOpt, MaxShardOpt, OutArg, ResumeOpt, SrcArg, TokDirOpt,
                     WorkersOpt, byte_progress, emit_json, human_bytes, out, workers_line)

OuttypeOpt = Annotated[str, typer.Option(
    "--outtype", help="auto (the source dtype), f32, f16, bf16, q8_0 or q4_0. Norms, router and biases stay F32; "
                      "a quantised tensor whose rows do not fit the block size falls back to F16 (reported).")]
SplitOpt = Annotated[Optional[str], typer.Option(
    "--split-max-size", help="Split into NAME-0000i-of-0000N.gguf files of at most this size (e.g. 50G); "
                             "llama.cpp loads the set from the first file.")]
NoMtpOpt = Annotated[bool, typer.Option(
    "--no-mtp", help="Drop the MTP layers (block_count = num_hidden_layers, nextn_predict_layers = 0).")]
GgufSrcArg = Annotated[Path, typer.Argument(help="GGUF file (for split files: any one of them).")]
GgufOutDtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="keep (F32/F16/BF16 as stored, quantised types as f32), f32, bf16 or f16.")]
LlamaDefaultsOpt = Annotated[bool, typer.Option(
    "--llama-defaults", help="Read keys/tensors the file lacks the way llama.cpp does (e.g. no expert bias) "
                             "instead of refusing; each one is listed in the manifest.")]


def _render(r, as_json: bool) -> None:
    if as_json:
        emit_json(r.__dict__)
        return
    out.print(f"route: {' -> '.join([r.source_format, *r.route])} => {r.target_format}")
    out.print(f"{r.tensors} tensors, {human_bytes(r.bytes)}")
    if not r.dry_run:
        out.print(workers_line(r))
    out.print("dry run: no tensor data read, nothing written" if r.dry_run else f"wrote {r.output}")


@app.command("to-gguf")
def to_gguf(src: SrcArg, dst: OutArg, outtype: OuttypeOpt = "auto", split_max_size: SplitOpt = None,
            no_mtp: NoMtpOpt = False, tokenizer_dir: TokDirOpt = None, from_format: FromOpt = None,
            llama_defaults: LlamaDefaultsOpt = False, force: ForceOpt = False, resume: ResumeOpt = False,
            dry_run: DryRunOpt = False, as_json: JsonOpt = False, workers: WorkersOpt = None):
    """Ling checkpoint (any format, or a GGUF to re-quantise) -> llama.cpp GGUF (bailingmoe / bailingmoe2)."""
    with byte_progress("to-gguf", quiet=as_json or dry_run) as prog:
        opts = api.GgufOptions(outtype=outtype, split_max_size=split_max_size, no_mtp=no_mtp,
                               llama_defaults=llama_defaults, tokenizer_dir=tokenizer_dir)
        r = api.to_gguf_file(src, dst, options=opts, from_format=from_format, force=force, resume=resume,
                             progress=prog, workers=workers, dry_run=dry_run)
    _render(r, as_json)


@app.command("from-gguf")
def from_gguf(src: GgufSrcArg, dst: OutArg, dtype: GgufOutDtypeOpt = "keep", tokenizer_dir: TokDirOpt = None,
              llama_defaults: LlamaDefaultsOpt = False, max_shard_size: MaxShardOpt = "5GB",
              force: ForceOpt = False, resume: ResumeOpt = False, as_json: JsonOpt = False):
    """llama.cpp GGUF -> HF safetensors: dequantised, experts unstacked, Q/K un-permuted."""
    with byte_progress("from-gguf", quiet=as_json) as prog:
        opts = api.FromGgufOptions(dtype=dtype, llama_defaults=llama_defaults, tokenizer_dir=tokenizer_dir)
        r = api.from_gguf_file(src, dst, options=opts, max_shard_size=max_shard_size, force=force, resume=resume,
                               progress=prog)
    _render(r, as_json)
