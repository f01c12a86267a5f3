"""Write a `Source` as an HF directory: shards, index, config, aux files, manifest.

Shared by every target whose on-disk form is HF-style safetensors (plain, FP8,
MindIE). Order: shards (each fsynced and recorded), config and aux files, the
index, then the manifest, then one rename.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import CONFIG
from ..core.options import changed
from ..core.output import MANIFEST, StagedOutput, parse_size
from ..core.source import Source
from .safetensors.writer import write_index, write_tensors

DEFAULT_SHARD = "5GB"


@dataclass(frozen=True)
class WriteOptions:
    max_shard_size: str | int = DEFAULT_SHARD
    force: bool = False
    resume: bool = False
    progress: Callable[[int], None] | None = field(default=None, compare=False)
    workers: int = field(default=1, compare=False)     # processes filling each file; bytes do not depend on it
    options: object = field(default=None, compare=False)   # the route's options object (pipeline.route_options)


def plan_id(src: Source, opts: WriteOptions, target: str) -> str:
    """Identity of a run for --resume: same inputs, names, shapes, dtypes and options."""
    h = hashlib.sha256()
    h.update(json.dumps([target, str(src.path), src.route, str(opts.max_shard_size),
                         sorted((k, repr(v)) for k, v in changed(opts.options).items())]).encode())
    for name, info in sorted(src.infos.items()):
        h.update(f"{name}|{info.shape}|torch.{info.dtype_name}\n".encode())   # torch-free, same text
    h.update(json.dumps(src.config, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def config_diff(before: dict | None, after: dict | None) -> dict:
    before, after = before or {}, after or {}
    keys = sorted(set(before) | set(after))
    return {k: {"from": before.get(k), "to": after.get(k)} for k in keys if before.get(k) != after.get(k)}


def manifest_for(src: Source, target: str, extra: dict | None = None) -> dict:
    return {
        "source": {"path": str(src.path), "format": src.source_format},
        "target_format": target,
        "route": src.route,
        "config_changes": config_diff(src.original_config, src.config),
        "notes": src.notes,
        **(extra or {}),
    }


def write_aux(staged: StagedOutput, src: Source, skip: set[str] = frozenset()) -> list[str]:
    copied = []
    for name, path in sorted(src.aux.items()):
        if name in skip or name == MANIFEST:
            continue
        if not staged.reusable(name):
            staged.copy(name, path)
        copied.append(name)
    return copied


def write_hf_dir(src: Source, out: str | Path, opts: WriteOptions, *, target: str = "safetensors",
                 config_name: str = CONFIG, extra_manifest: dict | None = None,
                 before_commit: Callable[[StagedOutput], dict | None] | None = None) -> Path:
    """Stream `src` into OUT as HF safetensors; atomic, resumable."""
    max_bytes = parse_size(opts.max_shard_size)
    with StagedOutput(out, sources=src.inputs(), force=opts.force, resume=opts.resume,
                      plan_id=plan_id(src, opts, target)) as staged:
        files = write_tensors(staged, src, max_bytes, opts.progress, opts.workers)
        return finish_hf_dir(staged, src, files, target, config_name=config_name, extra_manifest=extra_manifest,
                             before_commit=before_commit)


def finish_hf_dir(staged: StagedOutput, src: Source, files: dict[str, list[str]], target: str, *,
                  config_name: str = CONFIG, extra_manifest: dict | None = None,
                  before_commit: Callable[[StagedOutput], dict | None] | None = None) -> Path:
    """After the shards: config, aux files, index, manifest, commit (serial and parallel writers alike)."""
    if src.config is not None:
        staged.write_json(config_name, src.config)
    copied = write_aux(staged, src, skip={config_name})
    more = before_commit(staged) if before_commit else None
    if len(files) > 1:
        write_index(staged, files, src.infos)  # index last: its presence means the shards are done
    man = manifest_for(src, target, {"shards": {f: len(t) for f, t in files.items()},
                                     "aux_copied": copied, **(extra_manifest or {}), **(more or {})})
    return staged.commit(man)
