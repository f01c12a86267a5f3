"""The Python API. The CLI is a thin shell over these functions.

    >>> from ling_convert import api
    >>> api.convert("Ling-lite/", "Ling-lite-st/", to="safetensors")      # doctest: +SKIP
    >>> api.inspect_checkpoint("Ling-lite-st/")["architecture"]           # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import arch as arch_mod
from .converters import apply_route, plan_route
from .errors import UnknownTensorError
from .formats import detect_format, get_format, open_source
from .formats import safetensors as st
from .hub.sync import resolve_source
from .source import Source, ordered
from .writer import DEFAULT_SHARD, WriteOptions

# Formats whose tensor names are the canonical HF names (others map to them by an edge).
HF_NAMED = ("bin", "safetensors")


@dataclass
class ConvertResult:
    output: Path | None
    route: list[str]
    source_format: str
    target_format: str
    tensors: int
    bytes: int
    shards: list[dict] = field(default_factory=list)
    dry_run: bool = False


def open_checkpoint(path: str | Path, fmt: str | None = None) -> Source:
    """Open any supported checkpoint lazily and check its config names a known architecture."""
    return open_source(path, fmt)


def check_complete(src: Source) -> None:
    """Fail early, naming the tensor, when an HF-named source lacks a tensor its config requires."""
    a = arch_mod.detect_architecture(src.config, src.path)
    missing = [n for n in a.expected_names(src.config) if n not in src.infos]
    if missing:
        raise UnknownTensorError(f"checkpoint lacks {len(missing)} tensor(s) its config requires",
                                 path=src.path, tensor=missing[0],
                                 fix="the checkpoint is incomplete (missing shard?) or config.json does not match it")


def with_config_from(src: Source, cfg_dir: str | Path) -> Source:
    """Use config.json and the tokenizer/aux files of HF dir `cfg_dir` (sources without a usable config)."""
    from .errors import ConfigSchemaError
    from .formats import aux_files, read_config
    cfg = read_config(Path(cfg_dir))
    if cfg is None:
        raise ConfigSchemaError("no config.json here", path=cfg_dir, fix="point --config-from at an HF model directory")
    return src.derive(config=cfg, aux={**src.aux, **aux_files(Path(cfg_dir))},
                      notes={**src.notes, "config_from": str(cfg_dir)})


def prepare(src_path: str | Path, to: str, *, from_format: str | None = None,
            options: dict | None = None) -> tuple[Source, list]:
    """Open the source and apply the route to `to` lazily (no tensor data is read)."""
    src = open_checkpoint(src_path, from_format)
    if (options or {}).get("config_from"):
        src = with_config_from(src, options["config_from"])
    if src.format in HF_NAMED:
        check_complete(src)
    else:
        arch_mod.detect_architecture(src.config, src.path)
    route = plan_route(src.format, to)
    out = apply_route(src, route, options or {})
    return out, route


def convert(src: str | Path, out: str | Path, *, to: str = "safetensors", from_format: str | None = None,
            max_shard_size: str | int = DEFAULT_SHARD, force: bool = False, resume: bool = False,
            dry_run: bool = False, options: dict | None = None,
            progress: Callable[[int], None] | None = None) -> ConvertResult:
    """Convert any supported checkpoint to format `to` (route found by the planner)."""
    src, hub_source = resolve_source(src)   # hf://org/name[@rev], ms://...: pulled and verified first
    source_format = (get_format(from_format) if from_format else detect_format(src)).name
    lazy, route = prepare(src, to, from_format=from_format, options=options)
    if hub_source:
        lazy.notes["hub_source"] = hub_source   # repo, revision and commit go into the manifest
    result = ConvertResult(None, [e.name for e in route], source_format, to, len(lazy.infos), lazy.total_bytes,
                           dry_run=dry_run)
    if dry_run:
        result.shards = [{"file": f, "tensors": len(t), "bytes": b}
                         for f, t, b in st.iter_shard_plan(lazy, st.parse_size(max_shard_size))]
        return result
    target = get_format(to)
    if target.write is None:
        from .errors import UnsupportedError
        raise UnsupportedError(f"format {to!r} can be read but not written", fix="pick another --to")
    if progress is not None and hasattr(progress, "start"):
        progress.start(lazy.total_bytes)
    opts = WriteOptions(max_shard_size=max_shard_size, force=force, resume=resume, progress=progress,
                        extra=dict(options or {}))
    result.output = Path(target.write(lazy, Path(out), opts))
    return result


def inspect_checkpoint(path: str | Path, fmt: str | None = None) -> dict:
    """Format, architecture, layer/expert counts, parameter counts, dtypes, shards, bytes."""
    src = open_checkpoint(path, fmt)
    cfg = src.config or {}
    info: dict = {"path": str(src.path), "format": src.format, "tensors": len(src.infos),
                  "bytes": src.total_bytes}
    dtypes: dict[str, int] = {}
    for i in src.infos.values():
        key = str(i.dtype).replace("torch.", "")
        dtypes[key] = dtypes.get(key, 0) + i.numel
    info["dtypes"] = dict(sorted(dtypes.items()))
    try:
        a = arch_mod.detect_architecture(cfg, src.path)
    except Exception as e:  # inspect still reports what it can about the files
        info["architecture"] = None
        info["architecture_error"] = str(e)
        return info
    kinds = a.layer_kinds(cfg)
    info.update({
        "architecture": cfg["architectures"][0], "arch_family": a.name,
        "layers": int(cfg["num_hidden_layers"]),
        "dense_layers": sum(1 for k in kinds.values() if k == "dense"),
        "moe_layers": sum(1 for k in kinds.values() if k == "moe"),
        "mtp_layers": sum(1 for k in kinds.values() if k == "mtp"),
        "experts": int(cfg.get("num_experts") or 0), "experts_per_token": int(cfg.get("num_experts_per_tok") or 0),
        "shared_experts": int(cfg.get("num_shared_experts") or 0),
        "hidden_size": int(cfg["hidden_size"]), "head_dim": arch_mod.head_dim(cfg),
        "vocab_size": int(cfg["vocab_size"]),
        "parameters": arch_mod.param_counts(a, cfg, src.infos) if src.format in HF_NAMED else None,
    })
    if src.format in HF_NAMED:
        missing = [n for n in a.expected_names(cfg) if n not in src.infos]
        extra = [n for n in ordered(src.infos) if n not in set(a.expected_names(cfg))]
        info["missing_tensors"] = missing[:20]
        info["extra_tensors"] = extra[:20]
    info["files"] = sorted(p.name for p in Path(src.path).glob("*") if p.is_file()) if Path(src.path).is_dir() else [Path(src.path).name]
    return info
