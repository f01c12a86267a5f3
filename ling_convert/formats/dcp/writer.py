"""Write a Source with Megatron names as a torch DCP directory Megatron can load (`torch_dist`).

Layout is what torch's FileSystemWriter produces: `torch.save` blobs appended to
`__0_{n}.distcp` files (split by --max-shard-size), a pickled `Metadata` in
`.metadata` (written after the data), plus Megatron's `common.pt` (args
Namespace) and `metadata.json`. A thunk with `.chunks` (stacked experts) is
written chunk by chunk, so the [E, 2F, H] tensor is never built.
The stock `torch.distributed.checkpoint.load` reads the result.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...core.errors import BadInputError, VerificationError
from ...core.source import Source, TensorInfo, dtype_code, dtype_size, ordered, pack_by_budget
from ..writer import manifest_for, plan_id, write_aux
from .. import CONFIG
from .reader import COMMON, MEGATRON_META, METADATA, read_metadata
from ..safetensors import parse_size

# torch.save adds a small zip wrapper (~1.5 KB) around each chunk's bytes.
_BLOB_OVERHEAD = 2048
CHECKPOINT_VERSION = 3.0   # Megatron's current value


@dataclass(frozen=True)
class Item:
    fqn: str
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    load: Callable[[], torch.Tensor]
    dtype: str          # safetensors code: planning (st2dcp --dry-run) needs no torch

    @property
    def nbytes(self) -> int:
        n = dtype_size(self.dtype)
        for s in self.sizes:
            n *= s
        return n


def plan_items(src: Source) -> list[Item]:
    """Every chunk of every tensor, tensors in natural layer order."""
    items = []
    for name in ordered(src.infos):
        info, th = src.infos[name], src.get(name)
        chunks = getattr(th, "chunks", None) or [((0,) * len(info.shape), info.shape, th)]
        items += [Item(name, tuple(o), tuple(s), load, info.code) for o, s, load in chunks]
    return items


def plan_files(items: list[Item], max_bytes: int) -> list[list[Item]]:
    return pack_by_budget(items, lambda it: it.nbytes + _BLOB_OVERHEAD, max_bytes)


class _HashingFile:
    """File wrapper that hashes and counts bytes as torch.save writes them."""

    def __init__(self, f):
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0
        self.error: OSError | None = None

    def write(self, b) -> int:
        self.sha.update(b)
        self.pos += len(b)
        try:
            return self.f.write(b)
        except OSError as e:     # torch.save turns it into "unexpected pos"; keep it for write_file
            self.error = e
            raise

    def flush(self):
        self.f.flush()


def _owned(t: torch.Tensor) -> torch.Tensor:
    # torch.save writes a view's whole storage; give each chunk exactly its own bytes.
    t = t.detach().contiguous()
    if t.storage_offset() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def write_file(path: Path, items: list[Item], progress=None) -> tuple[str, list[tuple[Item, int, int]]]:
    """Append one torch.save blob per item; -> (sha256, [(item, offset, length)])."""
    placed = []
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        f = _HashingFile(raw)
        for it in items:
            t = _owned(it.load())
            if tuple(t.shape) != it.sizes or dtype_code(t.dtype) != it.dtype:
                raise BadInputError(f"chunk at {it.offsets} is {t.dtype} {tuple(t.shape)}, planned {it.dtype} "
                                    f"{it.sizes}", tensor=it.fqn, fix="the source is inconsistent")
            start = f.pos
            try:
                torch.save(t, f)
            except RuntimeError:
                if f.error is not None:      # disk full / file-size limit: the OSError, not torch's wrapper
                    raise f.error from None
                raise
            placed.append((it, start, f.pos - start))
            if progress:
                progress(it.nbytes)
            del t
        raw.flush()
        os.fsync(raw.fileno())
    tmp.replace(path)
    return f.sha.hexdigest(), placed


def build_metadata(src: Source, placed: list[tuple[str, Item, int, int]]) -> "torch.distributed.checkpoint.Metadata":
    """torch's own Metadata record for what was written (flat Megatron state dict)."""
    # NOTE: imported here: torch.distributed.checkpoint costs seconds of start-up that only st2dcp needs.
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)
    chunks: dict[str, list] = {n: [] for n in ordered(src.infos)}
    storage = {}
    for fname, it, off, length in placed:
        idx = len(chunks[it.fqn])
        chunks[it.fqn].append(ChunkStorageMetadata(offsets=torch.Size(it.offsets), sizes=torch.Size(it.sizes)))
        storage[MetadataIndex(it.fqn, torch.Size(it.offsets), idx)] = _StorageInfo(fname, off, length)
    sdm = {n: TensorStorageMetadata(TensorProperties(dtype=src.infos[n].dtype), torch.Size(src.infos[n].shape), c)
           for n, c in chunks.items()}
    # storage_meta stays None: its save_id is random and would make outputs differ run to run.
    return Metadata(state_dict_metadata=sdm, planner_data={n: (n,) for n in sdm}, storage_data=storage,
                    storage_meta=None, version="1.0.0")


def common_pt(src: Source) -> bytes:
    """Megatron's common.pt: {'args': Namespace, 'checkpoint_version', 'iteration'}."""
    from .megatron_config import args_from_hf_config
    rows = src.infos["embedding.word_embeddings.weight"].shape[0]
    args = argparse.Namespace(**args_from_hf_config(src.config, rows))
    buf = io.BytesIO()
    torch.save({"args": args, "checkpoint_version": CHECKPOINT_VERSION, "iteration": 0}, buf)
    return buf.getvalue()


def _verify(staged_dir: Path, src: Source) -> None:
    """Reopen the written metadata with the restricted reader; names, shapes, dtypes must match the plan."""
    tensors, _ = read_metadata(staged_dir)
    got = {n: TensorInfo(t.shape, t.dtype) for n, t in tensors.items()}
    if got != src.infos:
        bad = sorted(set(got) ^ set(src.infos)) or [n for n in src.infos if got[n] != src.infos[n]]
        raise VerificationError("written DCP metadata differs from the plan", path=staged_dir, tensor=bad[0],
                                fix="this is a bug; report it with LING_CONVERT_DEBUG=1 output")


def _reused(staged, fname: str, items: list[Item]) -> list[tuple[Item, int, int]] | None:
    """A .distcp file a killed run finished (hash checked), with where its blobs lie; None: write it.

    The blob offsets cannot be read back from the file cheaply, so the run that wrote it recorded them."""
    if not staged.reusable(fname):
        return None
    spans = staged.meta.get(fname)
    if not (isinstance(spans, list) and len(spans) == len(items)) or not _tiles(spans, staged.path(fname)):
        return None
    return [(it, int(off), int(ln)) for it, (off, ln) in zip(items, spans)]


def _tiles(spans: list, path: Path) -> bool:
    """The recorded blobs follow each other from offset 0 to the end of the file."""
    end = 0
    for span in spans:
        if not (isinstance(span, list) and len(span) == 2 and span[0] == end and span[1] > 0):
            return False
        end += span[1]
    return end == path.stat().st_size


def write_dcp(src: Source, out: Path, opts) -> Path:
    """Write `src` (Megatron names) as a Megatron torch_dist DCP dir; atomic, resumable per .distcp file."""
    from ...core.output import StagedOutput
    files = plan_files(plan_items(src), parse_size(opts.max_shard_size))
    with StagedOutput(out, sources=src.inputs(), force=opts.force, resume=opts.resume,
                      plan_id=plan_id(src, opts, "dcp")) as staged:
        placed = []
        for n, items in enumerate(files):
            fname = f"__0_{n}.distcp"
            got = _reused(staged, fname, items)
            if got is None:
                sha, got = write_file(staged.path(fname), items, opts.progress)
                staged.done(fname, sha, meta=[[off, ln] for _, off, ln in got])
            elif opts.progress:
                opts.progress(sum(it.nbytes for it in items))
            placed += [(fname, it, off, ln) for it, off, ln in got]
        staged.write_bytes(METADATA, pickle.dumps(build_metadata(src, placed)))
        staged.write_bytes(COMMON, common_pt(src))
        staged.write_json(MEGATRON_META, {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                                          "common_backend": "torch", "common_backend_version": 1})
        staged.write_json(CONFIG, src.config)   # exact HF config for the way back (dcp2st reads it first)
        copied = write_aux(staged, src, skip={CONFIG, MEGATRON_META})
        _verify(staged.staging, src)
        man = manifest_for(src, "dcp", {"distcp_files": len(files), "chunks": len(placed), "aux_copied": copied})
        return staged.commit(man)
