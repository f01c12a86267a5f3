"""HF PyTorch `.bin` checkpoints, single or sharded (`pytorch_model.bin.index.json`).

Loaded with `torch.load(mmap=True, weights_only=True)`: the zip's pickle is read by
torch's restricted unpickler (no code runs) and tensor data stays memory-mapped,
so opening a 100 GB shard costs only its pickle.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import BadInputError, CorruptFileError, UnsafePickleError
from ..source import Source, TensorInfo
from . import Format, aux_files, read_config, register
from .safetensors import shard_files

INDEX = "pytorch_model.bin.index.json"
SINGLE = "pytorch_model.bin"


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".bin", ".pt", ".pth")
    return (path / INDEX).exists() or (path / SINGLE).exists() or any(path.glob("pytorch_model*.bin"))


def load_state(file: Path) -> dict[str, torch.Tensor]:
    """Open one .bin safely; every failure becomes a one-line error naming the file."""
    if not zipfile.is_zipfile(file):
        raise CorruptFileError("not a torch zip archive (truncated, or a legacy non-zip .bin)", path=file,
                               fix="re-download it, or re-save it with torch.save in a current torch")
    try:
        sd = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln or "global" in ln), first[0] if first else "")
        raise UnsafePickleError(f"pickle refused by the weights-only loader, nothing was executed ({detail.strip()[:200]})",
                                path=file, fix="only plain tensor state dicts are accepted; re-save it as safetensors") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise CorruptFileError(f"cannot read torch archive ({str(e).splitlines()[0][:200]})", path=file,
                               fix="the file is truncated or damaged; re-download it") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise BadInputError("expected a flat dict of name -> tensor", path=file,
                            fix="save model.state_dict() itself, not a wrapper object")
    return sd


class _ShardCache:
    """Keep one shard's mmap open at a time (enough for in-order streaming)."""

    def __init__(self):
        self.file: Path | None = None
        self.sd: dict | None = None

    def get(self, file: Path, name: str) -> torch.Tensor:
        if self.file != file:
            self.sd, self.file = None, None
            self.sd, self.file = load_state(file), file
        return self.sd[name]  # mmap-backed; the writer copies bytes out as it goes


def open_source(path: Path) -> Source:
    path = Path(path)
    root = path.parent if path.is_file() else path
    if path.is_file():
        files = [path]
    else:
        wm = shard_files(path, INDEX)
        files = sorted(set(wm.values())) if wm else ([path / SINGLE] if (path / SINGLE).exists()
                                                      else sorted(path.glob("pytorch_model*.bin")))
    infos, thunks, cache = {}, {}, _ShardCache()
    for file in files:
        sd = load_state(file)
        for name, t in sd.items():
            if name in infos:
                raise CorruptFileError("tensor appears in two shards", path=file, tensor=name,
                                       fix="remove the duplicate shard")
            infos[name] = TensorInfo.of(t)
            thunks[name] = (lambda f=file, n=name: cache.get(f, n))
        del sd
    return Source(path=root, format="bin", config=read_config(root), infos=infos, thunks=thunks,
                  aux=aux_files(root))


def _write(src, out, opts):
    from ..errors import UnsupportedError
    raise UnsupportedError("writing .bin is not supported: pickles are unsafe to share",
                           fix="convert to safetensors instead (--to safetensors)")


FORMAT = register(Format("bin", "HF PyTorch .bin (torch.save zip), single or sharded",
                         detect, open_source, None, priority=70))
