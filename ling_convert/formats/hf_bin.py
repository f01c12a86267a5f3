"""HF PyTorch `.bin` checkpoints, single or sharded (`pytorch_model.bin.index.json`).

Opened with `torch.load(mmap=True, weights_only=True)`: the zip's pickle is read by
torch's restricted unpickler (no code runs) and no tensor data is touched, so
opening a 100 GB shard costs only its pickle. Tensor bytes are then read per
tensor with pread at offsets located from the zip records.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import bounded
from ..core.errors import BadInputError, CorruptFileError, UnsafePickleError, UnsupportedError
from ..core.source import ST_CODES, RawRange, Source, TensorInfo, dtype_code, is_contiguous
from . import Format, aux_files, read_config, register
from .safetensors import pread_flat, shard_files

INDEX = "pytorch_model.bin.index.json"
SINGLE = "pytorch_model.bin"


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix in (".bin", ".pt", ".pth")
    return bounded.exists(path / INDEX) or bounded.exists(path / SINGLE) or any(path.glob("pytorch_model*.bin"))


MAX_PICKLE = 32 << 20       # data.pkl of a shard with 10^5 tensors is ~10 MB
MAX_BUILDS = 1_000_000      # objects the pickle may build; a tensor costs two (rebuild + its hooks dict)


def _check_pickle(file: Path) -> None:
    """Bound the archive's pickle before torch inflates or runs it: by its unpacked size (a deflated
    data.pkl can inflate to gigabytes) and by how many objects it can build (a byte count of the
    building opcodes is an upper bound, found at C speed)."""
    try:
        with zipfile.ZipFile(file) as z:
            pkls = [i for i in z.infolist() if i.filename.endswith("data.pkl")]
            if len(pkls) != 1 or pkls[0].file_size > MAX_PICKLE:
                what = f"{len(pkls)} data.pkl records" if len(pkls) != 1 else f"a {pkls[0].file_size}-byte data.pkl"
                raise CorruptFileError(f"archive holds {what}; a state dict has one of at most {MAX_PICKLE} bytes",
                                       path=file, fix="re-save it with torch.save, or convert it elsewhere")
            data = z.read(pkls[0])
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as e:
        raise CorruptFileError(f"cannot read torch archive ({str(e).splitlines()[0][:200] if str(e) else e!r})",
                               path=file, fix="the file is truncated or damaged; re-download it") from None
    bounded.check_pickle(data, file, max_builds=MAX_BUILDS, what="data.pkl")


def _check_tensors(file: Path, sd: dict) -> None:
    """Refuse, by name, tensors that have no safetensors form (before their storages are located)."""
    for name, t in sd.items():
        kind = ("sparse" if t.layout != torch.strided else "quantised" if t.is_quantized
                else None if dtype_code(t.dtype) in ST_CODES else str(t.dtype).replace("torch.", ""))
        if kind is not None:
            raise UnsupportedError(f"{kind} tensor ({t.dtype}, {t.layout}) has no safetensors form", path=file,
                                   tensor=name, fix="save dense tensors of a float, int8/16/32/64, uint8 or bool "
                                                    "dtype")


def load_state(file: Path) -> dict[str, torch.Tensor]:
    """Open one .bin safely; every failure becomes a one-line error naming the file."""
    bounded.regular_file(file, ".bin file")
    if not zipfile.is_zipfile(file):
        raise CorruptFileError("not a torch zip archive (truncated, or a legacy non-zip .bin)", path=file,
                               fix="re-download it, or re-save it with torch.save in a current torch")
    _check_pickle(file)
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
    _check_tensors(file, sd)
    return sd


@dataclass(frozen=True)
class _Loc:
    """Where one tensor's bytes live inside the zip (found once, at open)."""

    file: Path
    offset: int                   # absolute file offset of the first byte the view touches
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _data_entries(file: Path) -> list[tuple[int, int]]:
    """(file offset, size) of every stored tensor-data record, in file order."""
    out = []
    with zipfile.ZipFile(file) as z, open(file, "rb") as f:
        for info in z.infolist():
            if "/data/" not in info.filename or info.filename.endswith("/"):
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                raise CorruptFileError(f"record {info.filename!r} is compressed", path=file,
                                       fix="re-save with torch.save (records must be stored uncompressed)")
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            out.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return sorted(out)


def _locate(file: Path, sd: dict[str, torch.Tensor]) -> dict[str, _Loc]:
    """Map each tensor to a byte range of the file, so reads use pread, not the mmap.

    torch maps the whole file once, so storages sit at increasing addresses in the
    same order as their zip records: pairing the two sorted lists gives offsets.
    Reading with pread keeps peak RSS at one tensor even for a 30 GB single .bin."""
    storages = sorted({(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in sd.values()})
    records = [r for r in _data_entries(file) if r[1] > 0]
    storages = [s for s in storages if s[1] > 0]
    if len(storages) != len(records) or any(s[1] != r[1] for s, r in zip(storages, records)):
        raise CorruptFileError("tensor records do not match the pickle's storages", path=file,
                               fix="the archive is damaged; re-download or re-save it")
    base = {ptr: off for (ptr, _), (off, _) in zip(storages, records)}
    locs = {}
    for name, t in sd.items():
        item = t.element_size()
        ptr = t.untyped_storage().data_ptr()
        span = (t.storage_offset() + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) + 1) if t.numel() else 0
        first = t.storage_offset() * item
        locs[name] = _Loc(file, base.get(ptr, 0) + first, max(span * item - first, 0), t.dtype,
                          tuple(t.shape), tuple(t.stride()))
    return locs


def _read(loc: _Loc) -> torch.Tensor:
    if loc.nbytes == 0:
        return torch.empty(loc.shape, dtype=loc.dtype)
    flat = pread_flat(loc.file, loc.offset, loc.nbytes, loc.dtype)
    return flat.as_strided(loc.shape, loc.stride).contiguous()


@dataclass(frozen=True)
class BinSlice:
    """Thunk for one tensor of a .bin; exposes its byte range when the storage is laid
    out as the tensor (no view with gaps, no transposed strides), so it can be copied."""

    loc: _Loc

    def __call__(self) -> torch.Tensor:
        return _read(self.loc)

    def location(self) -> tuple[str, int]:
        return str(self.loc.file), self.loc.offset

    def raw_range(self) -> RawRange | None:
        loc, info = self.loc, TensorInfo(self.loc.shape, self.loc.dtype)
        if loc.nbytes == 0 or loc.nbytes != info.nbytes or not is_contiguous(loc.shape, loc.stride):
            return None
        return RawRange(loc.file, loc.offset, info)


def open_source(path: Path) -> Source:
    path = Path(path)
    root = path.parent if path.is_file() else path
    if path.is_file():
        files = [path]
    else:
        wm = shard_files(path, INDEX)
        files = sorted(set(wm.values())) if wm else ([path / SINGLE] if bounded.exists(path / SINGLE)
                                                      else sorted(path.glob("pytorch_model*.bin")))
    infos, thunks = {}, {}
    for file in files:
        sd = load_state(file)
        for name, loc in _locate(file, sd).items():
            if name in infos:
                raise CorruptFileError("tensor appears in two shards", path=file, tensor=name,
                                       fix="remove the duplicate shard")
            infos[name] = TensorInfo(loc.shape, loc.dtype)
            thunks[name] = BinSlice(loc)
        del sd  # unmap: only the pickle was needed
    return Source(path=root, format="bin", config=read_config(root), infos=infos, thunks=thunks,
                  aux=aux_files(root))


def _write(src, out, opts):
    from ..core.errors import UnsupportedError
    raise UnsupportedError("writing .bin is not supported: pickles are unsafe to share",
                           fix="convert to safetensors instead (--to safetensors)")


FORMAT = register(Format("bin", "HF PyTorch .bin (torch.save zip), single or sharded",
                         detect, open_source, None, priority=70))
