"""Restricted unpickling for torch DCP / Megatron `torch_dist` files.

Three pickles live in such a checkpoint; none is loaded with plain `pickle`:
  `.metadata`  -> `load_metadata`: an allow-list of DCP record classes, mapped to
                  inert records; `megatron.*` classes become stubs.
  `common.pt`  -> `load_common`: torch's weights-only loader plus `argparse.Namespace`
                  and `megatron.*` stubs.
  chunk blobs  -> `parse_tensor_pickle`: only `_rebuild_tensor_v2/v3`, storage types and
                  `OrderedDict`; it returns a description, the data is read separately.
Any other global is refused by name *before* anything is called.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ...core import bounded
from ...core.errors import CorruptFileError, UnsafePickleError
from ...core.source import torch_dtype

_FIX = "do not load this file; get the checkpoint from a trusted source"
METADATA_NAME = ".metadata"
MAX_METADATA = 512 << 20   # ~1 KB per chunk record: half a million chunks
MAX_BUILDS = 20_000_000    # objects a .metadata may build (about 8 per chunk record)


class Record:
    """An inert stand-in for an allow-listed class: it only stores the pickled state."""

    _name = "Record"

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}   # (dict, slots) form
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self):
        # NOTE: never the state itself: a pickled DAG of shared lists prints as 2**depth items.
        return f"<{self._name[:80]}>"


_RECORDS: dict[str, type] = {}


def _record(full: str) -> type:
    if full not in _RECORDS:
        _RECORDS[full] = type(full.rsplit(".", 1)[-1], (Record,), {"_name": full})
    return _RECORDS[full]


def _get_layout(name: str):
    # Same contract as torch.serialization._get_layout, without importing anything by name.
    return torch.sparse_coo if name == "torch.sparse_coo" else torch.strided


def _path(*parts):
    return "/".join(str(p) for p in parts)   # paths in metadata are informational only


_DCP = "torch.distributed.checkpoint."
_META_CLASSES = {
    _DCP + "metadata." + n for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                     "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                     "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {_DCP + "filesystem._StorageInfo"} | {
    # torch <= 2.1 kept these two in the ShardedTensor package; old Megatron checkpoints name them there.
    "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
    "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
}
_META_FUNCS = {
    "torch.Size": lambda *a: torch.Size(*a), "torch.serialization._get_layout": _get_layout,
    "collections.OrderedDict": OrderedDict, "builtins.set": set, "builtins.frozenset": frozenset,
    "pathlib.PosixPath": _path, "pathlib.Path": _path, "pathlib.PurePosixPath": _path,
    "pathlib.WindowsPath": _path,
}


@contextlib.contextmanager
def _damaged_as(where, what: str, fix: str):
    """Any failure but a refusal while unpickling becomes one CorruptFileError naming `where`."""
    try:
        yield
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated or garbled pickle: never a traceback
        raise CorruptFileError(f"{what} ({type(e).__name__}: {str(e)[:160]})", path=where, fix=fix) from None


class _Restricted(pickle.Unpickler):
    """Builds only what its find_class allows; `where` names the file in every refusal."""

    def __init__(self, data: bytes, where):
        super().__init__(io.BytesIO(data))
        self.where = where

    def refuse(self, msg: str):
        raise UnsafePickleError(msg, path=self.where, fix=_FIX)


class _MetadataUnpickler(_Restricted):
    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in _META_CLASSES or module.split(".")[0] == "megatron":
            return _record(full)
        if full in _META_FUNCS:
            return _META_FUNCS[full]
        # torch's types are read here, not at import: the CLI defers torch (core/deferred.py)
        value = getattr(torch, name, None) if module == "torch" else None
        if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
            return value
        self.refuse(f"pickle asks for global {full!r}, which is not on the DCP allow-list; "
                    "refused without running it")

    def persistent_load(self, pid):
        self.refuse("pickle uses persistent ids, which DCP metadata never does; refused")


def load_metadata(path: Path):
    """Unpickle a DCP `.metadata` file into inert records (attributes as in torch's classes)."""
    data = bounded.read_bytes(path, MAX_METADATA, METADATA_NAME)
    bounded.check_pickle(data, path, max_builds=MAX_BUILDS, what=METADATA_NAME)
    with _damaged_as(path, "cannot read DCP metadata",
                     fix="the checkpoint save did not finish or the file is damaged"):
        return _MetadataUnpickler(data, path).load()


# -- common.pt -------------------------------------------------------------------

_COMMON_ALLOWED = {"argparse.Namespace": argparse.Namespace}


def load_common(path: Path) -> dict:
    """`torch.load(weights_only=True)` of Megatron's common.pt with Namespace and megatron stubs."""
    extra = []
    for full in _unsafe_globals(path):
        if full in _COMMON_ALLOWED:
            extra.append(_COMMON_ALLOWED[full])
        elif full.split(".")[0] == "megatron":
            extra.append((_record(full), full))
        else:
            raise UnsafePickleError(f"pickle asks for global {full!r}, which is not on the common.pt "
                                    "allow-list; refused without running it", path=path, fix=_FIX)
    with _damaged_as(path, "cannot read", fix="the file is damaged; copy common.pt again or pass --config-from"):
        try:
            with torch.serialization.safe_globals([argparse.Namespace, *extra]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafePickleError(f"refused by the weights-only loader: {str(e).splitlines()[0]}",
                                    path=path, fix=_FIX) from None
    if not isinstance(obj, dict):
        raise CorruptFileError(f"holds a {type(obj).__name__}, expected a dict with 'args'", path=path,
                               fix="pass --config-from DIR with the model's config.json")
    return obj


def _unsafe_globals(path: Path) -> list[str]:
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:      # older torch: the weights-only loader still refuses unknown globals
        return ["argparse.Namespace"]
    try:
        return list(scan(str(path)))
    except Exception as e:
        raise CorruptFileError(f"not a torch.save archive ({type(e).__name__}: {e})", path=path,
                               fix="copy common.pt again or pass --config-from") from None


# -- chunk blobs (one torch.save'd tensor each) ---------------------------------------

_STORAGE_DTYPES = {    # storage class -> safetensors code of its element type
    "DoubleStorage": "F64", "FloatStorage": "F32", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8",
    "BoolStorage": "BOOL", "UntypedStorage": "U8",
}


@dataclass(frozen=True)
class TensorRef:
    """Where a pickled tensor's data sits: storage record key, element offset, shape, stride."""

    key: str
    dtype: torch.dtype
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: torch.dtype   # uint8 for untyped storages (v3 pickles carry the dtype separately)


def _rebuild_v2(storage, offset, size, stride, *_):
    return TensorRef(storage.key, storage.dtype, int(offset), tuple(size), tuple(stride))


def _rebuild_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_):
    return TensorRef(storage.key, dtype, int(offset), tuple(size), tuple(stride))


class _TensorUnpickler(_Restricted):
    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full == "torch._utils._rebuild_tensor_v2":
            return _rebuild_v2
        if full == "torch._utils._rebuild_tensor_v3":
            return _rebuild_v3
        if full == "collections.OrderedDict":
            return OrderedDict
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return name
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        self.refuse(f"chunk pickle asks for global {full!r}; only plain tensors are allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            self.refuse(f"unexpected persistent id {bounded.short(pid)}")
        return _Storage(str(pid[2]), torch_dtype(_STORAGE_DTYPES[pid[1]]))


def parse_tensor_pickle(data: bytes, where: str) -> TensorRef:
    """Describe the tensor a torch.save `data.pkl` rebuilds, without building it."""
    with _damaged_as(where, "chunk pickle is damaged", fix="the .distcp file is damaged; copy it again"):
        ref = _TensorUnpickler(data, where).load()
    if not isinstance(ref, TensorRef):
        raise CorruptFileError(f"chunk holds a {type(ref).__name__}, expected a tensor", path=where,
                               fix="only tensor items can be converted")
    return ref
