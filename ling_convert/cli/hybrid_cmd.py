"""`to-hybrid-linear`: softmax Ling (v1 / v2) -> hybrid-linear Ring layout (an initialisation)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import app
from .common import DryRunOpt, api, flag, ForceOpt, JsonOpt, MaxShardOpt, OutArg, ResumeOpt, SrcArg, emit_json, human_bytes, out, print_shard_plan

LinearLayersOpt = flag("--linear-layers", help=("Comma list of layers to make linear, e.g. 0,1,2; must be a "
                                                "layer_group_size pattern."))
GroupOpt = flag("--layer-group-size", help=("Layer l stays softmax iff (l+1) % K == 0 (and the tail); 1 = no linear "
                                            "layer. Default: 7 for v1, 5 for v2, at most the layer count."), kind=Optional[int])
InitOpt = flag("--init", "New g_proj weights: normal[:SEED] (std = initializer_range), zeros, or a bare SEED.")
GroupNormOpt = flag("--group-norm-size", "v2 only: g_norm groups (default: one group per 4 heads).", Optional[int])
ModelingOpt = flag("--modeling-dir", help="Directory with the hybrid remote-code *.py files to ship (sets auto_map).",
                     kind=Optional[Path])


@app.command("to-hybrid-linear")
def to_hybrid_linear(src: SrcArg, dst: OutArg, linear_layers: LinearLayersOpt = None,
                     layer_group_size: GroupOpt = None, init: InitOpt = None, group_norm_size: GroupNormOpt = None,
                     modeling_dir: ModelingOpt = None, max_shard_size: MaxShardOpt = "5GB", force: ForceOpt = False,
                     resume: ResumeOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False):
    """Softmax Ling -> hybrid-linear: reuse weights, expand KV to MHA, seed the new gate (manifest says how)."""
    opts = api.HybridOptions(linear_layers=linear_layers, layer_group_size=layer_group_size, init=init,
                             group_norm_size=group_norm_size, modeling_dir=modeling_dir)
    r = api.to_hybrid_linear(src, dst, options=opts, max_shard_size=max_shard_size, force=force, resume=resume,
                             dry_run=dry_run)
    if as_json:
        emit_json(r.__dict__)
        return
    p = r.plan
    out.print(f"{p['base_architecture']} -> {p['target_architecture']}, layer_group_size {p['layer_group_size']}")
    out.print(f"linear layers: {p['linear_layers'] or 'none'}; softmax layers: {p['softmax_layers']}")
    out.print(f"{r.tensors} tensors, {human_bytes(r.bytes)}")
    if r.dry_run:
        print_shard_plan(r.shards)
        return
    out.print(f"wrote {r.output} (an initialisation: train before use; see ling-convert.json)")
