"""User-facing DCP conversions (the CLI's `dcp2st` / `st2dcp` call these).

    >>> dcp_to_hf("iter_0001000/", "Ling-mini-2.0/", force_bf16=True, workers=4)    # doctest: +SKIP
    >>> hf_to_dcp("Ling-mini-2.0/", "iter_0000001/")                                # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from .. import api
from ..converters import plan_route
from ..errors import BadInputError, RouteNotFoundError, UnsupportedError
from .parallel import HF_TARGETS, convert_parallel, world


def dcp_to_hf(src, out, *, force_bf16: bool = False, force_fp8: bool = False, workers: int = 1,
              max_shard_size="5GB", vocab_size: int | None = None, config_from=None, tokenizer_dir=None,
              allow_unmapped: bool = False, force: bool = False, resume: bool = False, dry_run: bool = False,
              progress=None, fp8_options: dict | None = None) -> api.ConvertResult:
    """Megatron torch_dist DCP -> HF safetensors (bf16 or, with `force_fp8`, block FP8)."""
    if force_bf16 and force_fp8:
        raise BadInputError("--force-bf16 and --force-fp8 exclude each other", fix="pass one of them")
    if workers < 1:
        raise BadInputError(f"--workers {workers} must be at least 1", fix="pass --workers 1 or more")
    to = "fp8" if force_fp8 else "safetensors"
    if force_fp8:
        try:
            plan_route("dcp", "fp8")
        except RouteNotFoundError:
            raise UnsupportedError("--force-fp8 needs the safetensors -> fp8 edge, which is not installed",
                                   fix="convert to bf16 first, then run `ling-convert quantize`") from None
    # FP8 output keeps unquantised tensors in bf16 (norms, router, embeddings), expert_bias in fp32.
    options = {"force_bf16": force_bf16 or force_fp8, "vocab_size": vocab_size, "allow_unmapped": allow_unmapped,
               "config_from": str(config_from) if config_from else None,
               "tokenizer_dir": str(tokenizer_dir) if tokenizer_dir else None, **(fp8_options or {})}
    options = {k: v for k, v in options.items() if v not in (None, False)}
    _, size = world()
    if dry_run or (workers <= 1 and size <= 1) or to not in HF_TARGETS:
        if force_fp8:
            options["workers"] = workers      # the quantize edge runs its kernel in a pool of its own
        return api.convert(src, out, to=to, from_format="dcp", max_shard_size=max_shard_size, force=force,
                           resume=resume, dry_run=dry_run, options=options, progress=progress)
    return convert_parallel(src, out, to=to, options=options, from_format="dcp", workers=workers,
                            max_shard_size=max_shard_size, force=force, resume=resume, progress=progress)


def hf_to_dcp(src, out, *, max_shard_size="5GB", padded_vocab_size: int | None = None,
              stack_layers: bool = False, allow_unmapped: bool = False, force: bool = False,
              resume: bool = False, dry_run: bool = False, progress=None) -> api.ConvertResult:
    """HF checkpoint (safetensors or .bin) -> Megatron torch_dist DCP loadable by `dcp.load`."""
    options = {"padded_vocab_size": padded_vocab_size, "stack_layers": stack_layers,
               "allow_unmapped": allow_unmapped}
    options = {k: v for k, v in options.items() if v not in (None, False)}
    if dry_run:
        return _dcp_plan(src, max_shard_size, options)
    return api.convert(Path(src), out, to="dcp", max_shard_size=max_shard_size, force=force, resume=resume,
                       options=options, progress=progress)


def _dcp_plan(src, max_shard_size, options: dict) -> api.ConvertResult:
    """--dry-run for st2dcp: the .distcp files the writer would produce (no tensor data read)."""
    from ..formats.dcp_write import plan_files, plan_items
    from ..formats.safetensors import parse_size
    lazy, route = api.prepare(src, "dcp", options=options)
    files = plan_files(plan_items(lazy), parse_size(max_shard_size))
    shards = [{"file": f"__0_{i}.distcp", "tensors": len({it.fqn for it in items}),
               "bytes": sum(it.nbytes for it in items)} for i, items in enumerate(files)]
    return api.ConvertResult(None, [e.name for e in route], lazy.source_format, "dcp", len(lazy.infos),
                             lazy.total_bytes, shards=shards, dry_run=True)
