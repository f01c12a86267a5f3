"""Lazy safetensors reader (single file or sharded with `model.safetensors.index.json`): per-tensor pread."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...core.errors import BadInputError, CorruptFileError, MissingShardError
from ...core.source import RawRange, Source, contained

from .header import INDEX, SINGLE, Entry, read_header, read_tensor

# -- reader -------------------------------------------------------------------

def shard_files(path: Path, index_name: str) -> dict[str, Path] | None:
    """weight_map name -> shard path, from an index; None if there is no index."""
    idx = path / index_name
    if not idx.exists():
        return None
    try:
        data = json.loads(idx.read_text())
        wm = data["weight_map"]
        assert isinstance(wm, dict)
    except (ValueError, KeyError, AssertionError, TypeError):
        raise BadInputError("index is not JSON with a 'weight_map' object", path=idx,
                            fix="regenerate the index") from None
    out, shards = {}, {}      # each shard checked once, not once per tensor (Ling-1T: 421 files, 62,336 names)
    for name, rel in wm.items():
        if not isinstance(rel, str):
            raise BadInputError(f"weight_map value {rel!r} is not a file name", path=idx, tensor=name,
                                fix="regenerate the index")
        if rel not in shards:
            shards[rel] = contained(path, rel, what="shard", origin=idx)
            if not shards[rel].is_file():
                raise MissingShardError(f"index names shard {rel!r}, which does not exist", path=idx,
                                        tensor=name, fix="download the missing shard or regenerate the index")
        out[name] = shards[rel]
    return out


def detect(path: Path) -> bool:
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    return (path / INDEX).exists() or (path / SINGLE).exists() or any(path.glob("*.safetensors"))


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
    if (path / SINGLE).exists():
        return [path / SINGLE]
    found = sorted(path.glob("*.safetensors"))
    if not found:
        raise BadInputError("no safetensors files found", path=path, fix="point at a checkpoint directory")
    return found


def _check_index_consistent(root: Path, infos: dict) -> None:
    idx = root / INDEX
    if not idx.exists():
        return
    wm = json.loads(idx.read_text())["weight_map"]
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
