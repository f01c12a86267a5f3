"""`ling-convert dcp2st` (Megatron torch_dist DCP -> HF) and `ling-convert st2dcp` (HF -> DCP)."""

from __future__ import annotations

import json
import warnings
from typing import Optional

from . import app
from .common import (api, flag, ConfigFromOpt, DryRunOpt, ForceOpt, JsonOpt, MaxShardOpt, OutArg, ResumeOpt, SrcArg, TokDirOpt,
                     WorkersOpt, byte_progress, emit_json, err, human_bytes, out, workers_line)

Bf16Opt = flag("--force-bf16", "Cast floating tensors to bf16 (expert_bias stays fp32).", bool)
Fp8Opt = flag("--force-fp8", "Write block-FP8 (via the quantize edge) instead of bf16.", bool)
ScaleFmtOpt = flag("--scale-fmt", help=("With --force-fp8: ling (default): powers of two exactly where Ling-V2's "
                                        "converter uses them, byte-identical to its output; float: exact amax/448; "
                                        "ue8m0: all powers of two."))
VocabOpt = flag("--vocab-size", help=("Real vocabulary size; padding rows are removed (default: config, args or "
                                      "tokenizer)."), kind=Optional[int])
UnmappedOpt = flag("--allow-unmapped", help=("Skip keys no mapping rule covers (listed in the manifest) instead of "
                                             "failing."), kind=bool)
PadOpt = flag("--padded-vocab-size", help=("Zero-pad embedding/output rows to this many (Megatron pads to divisor x "
                                           "TP)."), kind=Optional[int])
StackOpt = flag("--stack-layers", help=("Write decoder layers as one tensor with a layer axis (homogeneous Megatron "
                                        "models)."), kind=bool)


def _report(r, as_json: bool) -> None:
    if api.world()[0] != 0:
        return          # under torchrun, rank 0 speaks for all
    if as_json:
        emit_json(r.__dict__)
        return
    out.print(f"route: {' -> '.join([r.source_format, *r.route])} => {r.target_format}")
    out.print(f"{r.tensors} tensors, {human_bytes(r.bytes)}")
    out.print(workers_line(r))
    if r.dry_run:
        for s in r.shards:
            out.print(f"  {s['file']}: {s['tensors']} tensors, {human_bytes(s['bytes'])}")
        if r.config is not None:       # derived from common.pt args unless --config-from: show what it says
            out.print("config.json:\n" + json.dumps(r.config, indent=2, sort_keys=True), markup=False,
                      highlight=False, soft_wrap=True)
    out.print("dry run: no tensor data read, nothing written" if r.dry_run else f"wrote {r.output}")


@app.command()
def dcp2st(src: SrcArg, dst: OutArg, force_bf16: Bf16Opt = False, force_fp8: Fp8Opt = False,
           scale_fmt: ScaleFmtOpt = None, workers: WorkersOpt = None, max_shard_size: MaxShardOpt = "5GB",
           vocab_size: VocabOpt = None, config_from: ConfigFromOpt = None, tokenizer_dir: TokDirOpt = None,
           allow_unmapped: UnmappedOpt = False,
           force: ForceOpt = False, resume: ResumeOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False):
    """Megatron torch_dist (DCP) checkpoint -> HF safetensors, streamed; works under torchrun (gloo)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opts = api.Dcp2stOptions(force_bf16=force_bf16, force_fp8=force_fp8, scale_fmt=scale_fmt, workers=workers,
                                 vocab_size=vocab_size, config_from=config_from, tokenizer_dir=tokenizer_dir,
                                 allow_unmapped=allow_unmapped)
        with byte_progress("dcp2st", quiet=as_json or dry_run or api.world()[0] != 0) as prog:
            r = api.dcp_to_hf(src, dst, options=opts, max_shard_size=max_shard_size, force=force, resume=resume,
                          dry_run=dry_run, progress=prog)
    _report(r, as_json)
    if api.world()[0] == 0:       # e.g. FP8 shapes off the 128 block grid; one line each, after the result
        for msg in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
            err.print(f"warning: {msg}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def st2dcp(src: SrcArg, dst: OutArg, max_shard_size: MaxShardOpt = "5GB", padded_vocab_size: PadOpt = None,
           stack_layers: StackOpt = False, allow_unmapped: UnmappedOpt = False, force: ForceOpt = False,
           resume: ResumeOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False):
    """HF checkpoint -> Megatron torch_dist DCP (loadable by torch.distributed.checkpoint.load)."""
    with byte_progress("st2dcp", quiet=as_json or dry_run) as prog:
        opts = api.HfToDcpOptions(padded_vocab_size=padded_vocab_size, stack_layers=stack_layers,
                                  allow_unmapped=allow_unmapped)
        r = api.hf_to_dcp(src, dst, options=opts, max_shard_size=max_shard_size, force=force, resume=resume,
                          dry_run=dry_run, progress=prog)
    _report(r, as_json)
