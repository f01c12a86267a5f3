"""MindIE commands: `to-mindie {lite|plus}` and `from-mindie`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import api, DryRunOpt, ForceOpt, FromOpt, JsonOpt, MaxShardOpt, OutArg, ResumeOpt, SrcArg, WorkersOpt, err, out
from .core import _run_convert

VariantArg = Annotated[str, typer.Argument(help="MindIE variant: lite (Ling-lite, 1 node) or plus (Ling-plus, multi-node).")]
BaseOpt = Annotated[bool, typer.Option("--base", help="Base (completion) model: the recipe's config.base.json.")]
WorldOpt = Annotated[Optional[int], typer.Option("--world-size", help="Total NPUs (default: lite 8, plus 16).")]
NpuOpt = Annotated[Optional[str], typer.Option("--npu-ids", help="NPU ids per node, e.g. 0,1,2,3 (default 0..7).")]
SeqOpt = Annotated[Optional[int], typer.Option("--max-seq-len", help="maxSeqLen (default min(14000, max_position_embeddings)).")]
PortOpt = Annotated[Optional[int], typer.Option("--port", help="Service port (default 1025; +1 management, +2 metrics).")]
ServersOpt = Annotated[Optional[str], typer.Option(
    "--servers", help="Nodes for rank_table.json, primary first: IP[:CONTAINER_IP],...")]
DevIpsOpt = Annotated[Optional[str], typer.Option(
    "--device-ips", help="Per-node NPU IPs (hccn_tool -i N -ip -g): 'a,b,..;c,d,..' in --servers order.")]
RankTableOpt = Annotated[Optional[Path], typer.Option("--rank-table", help="Use this rank_table.json (checked) instead of building one.")]
TargetOpt = Annotated[Optional[str], typer.Option("--target-dir", help="Path OUT will have inside the container (modelWeightPath).")]
FoldOpt = Annotated[bool, typer.Option("--fold-norm-head", help="Allow norm_head=false models: fold lm_head column norms into model.norm.weight (bf16 rounding).")]


@app.command("to-mindie")
def to_mindie(variant: VariantArg, src: SrcArg, dst: OutArg, base: BaseOpt = False, world_size: WorldOpt = None,
              npu_ids: NpuOpt = None, max_seq_len: SeqOpt = None, port: PortOpt = None, servers: ServersOpt = None,
              device_ips: DevIpsOpt = None, rank_table: RankTableOpt = None, target_dir: TargetOpt = None,
              fold_norm_head: FoldOpt = False, from_format: FromOpt = None, max_shard_size: MaxShardOpt = "5GB",
              force: ForceOpt = False, resume: ResumeOpt = False, dry_run: DryRunOpt = False,
              as_json: JsonOpt = False, workers: WorkersOpt = None):
    """Any Ling v1 checkpoint -> MindIE model dir + service config (+ rank table), in one step."""
    options = api.MindieOptions(variant=variant, base=base, world_size=world_size, npu_ids=npu_ids,
                            max_seq_len=max_seq_len, port=port, servers=servers, device_ips=device_ips,
                            rank_table=rank_table, target_dir=target_dir, fold_norm_head=fold_norm_head)
    r = _run_convert(src, dst, "mindie", from_format=from_format, max_shard_size=max_shard_size, force=force,
                     resume=resume, dry_run=dry_run, as_json=as_json, options=options, workers=workers)
    if not dry_run and not as_json:
        _print_notes(Path(r.output))


def _print_notes(root: Path) -> None:
    from ..api import mindie_layout as layout
    from ..api import mindie_notes as compat_notes
    from ..api import validate_mindie_dir
    cfg = api.read_config(root) or {}
    out.print(f"service config: {root / layout()['service_config']}  (copy to mindie-service/conf/config.json)",
              soft_wrap=True, markup=False, highlight=False)
    for note in compat_notes(cfg) + validate_mindie_dir(root):
        err.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)


@app.command("from-mindie")
def from_mindie(src: SrcArg, dst: OutArg, max_shard_size: MaxShardOpt = "5GB", force: ForceOpt = False,
                resume: ResumeOpt = False, dry_run: DryRunOpt = False, as_json: JsonOpt = False):
    """MindIE model dir -> plain HF safetensors (HF config from config.json.bak, or rewrites inverted)."""
    _run_convert(src, dst, "safetensors", from_format="mindie", max_shard_size=max_shard_size, force=force,
                 resume=resume, dry_run=dry_run, as_json=as_json)
