"""Lazy safetensors reader (single file or sharded with `model.safetensors.index.json`): per-tensor pread."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...core import bounded
from ...core.errors import BadInputError, CorruptFileError, MissingShardError
from ...core.source import RawRange, Source, contained

from .header import INDEX, SINGLE, Entry, read_header, read_tensor

# -- reader -------------------------------------------------------------------

def read_index(idx: Path) -> dict[str, str]:
    """The weight_map of an index file (bounded read), checked to map names to strings."""
    try:
        data = bounded.load_json(idx, "index", limit=bounded.MAX_INDEX)
    except CorruptFileError as e:
        raise CorruptFileError(f"index is not JSON with a 'weight_map' object ({e.message})", path=idx,
                               fix="regenerate the index") from None
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict):
        raise BadInputError("index is not JSON with a 'weight_map' object", path=idx, fix="regenerate the index")
    for name, rel in wm.items():
        if not isinstance(rel, str):
            raise BadInputError(f"weight_map value {bounded.short(rel)} is not a file name", path=idx, tensor=name,
                                fix="regenerate the index")
    return wm


def shard_files(path: Path, index_name: str) -> dict[str, Path] | None:
    """weight_map name -> shard path, from an index; None if there is no index."""
    idx = path / index_name
    if not bounded.exists(idx):
        return None
    out, seen = {}, {}
    for name, rel in read_index(idx).items():
        if rel not in seen:     # checked once per shard, not once per tensor
            shard = seen[rel] = contained(path, rel, what="shard", origin=idx)
            if not shard.is_file():
                raise MissingShardError(f"index names shard {rel!r}, which does not exist", path=idx, tensor=name,
                                        fix="download the missing shard or regenerate the index")
        out[name] = seen[rel]
    return out


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    return bounded.exists(path / INDEX) or bounded.exists(path / SINGLE) or any(path.glob("*.safetensors"))


def open_source(path: Path, fmt: str = "safetensors") -> Source:
    """Open a safetensors checkpoint (dir with index, dir with one file, or a file)."""
    path = Path(path)
    root = path.parent if path.is_file() else path
    files = _files(path)
    infos, thunks = {}, {}
    for file in files:
        entries, _ = read_header(file)
        for name, entry in entries.items():
            if name in infos:
                raise CorruptFileError("tensor appears in two shards", path=file, tensor=name,
                                       fix="remove the duplicate shard or regenerate the index")
            infos[name] = entry.info
            thunks[name] = _thunk(file, entry)
    _check_index_consistent(root, infos)
    from .. import read_config, aux_files
    return Source(path=root, format=fmt, config=read_config(root), infos=infos, thunks=thunks,
                  aux=aux_files(root))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    wm = shard_files(path, INDEX)
    if wm is not None:
        return sorted(set(wm.values()))
    if bounded.exists(path / SINGLE):
        return [path / SINGLE]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise BadInputError("no safetensors files found", path=path, fix="point at a checkpoint directory")
    return found


def _check_index_consistent(root: Path, infos: dict) -> None:
    idx = root / INDEX
    if not bounded.exists(idx):
        return
    wm = read_index(idx)
    missing = [k for k in wm if k not in infos]
    if missing:
        raise MissingShardError(f"index lists {len(missing)} tensor(s) absent from the shards, e.g. {missing[0]!r}",
                                path=idx, fix="regenerate the index or restore the shard")


@dataclass(frozen=True)
class FileSlice:
    """Thunk that reads one tensor; picklable, so worker processes can read their own inputs."""

    file: Path
    entry: Entry

    def __call__(self) -> torch.Tensor:
        return read_tensor(self.file, self.entry)

    def location(self) -> tuple[str, int]:
        return str(self.file), self.entry.begin

    def raw_range(self) -> RawRange:
        return RawRange(self.file, self.entry.begin, self.entry.info)


def _thunk(file: Path, entry: Entry) -> Callable[[], torch.Tensor]:
    return FileSlice(file, entry)
