"""torch DCP / Megatron `torch_dist` checkpoints: a lazy reader and (in writer.py) a writer.

The reader never builds a process group and never calls torch's planner. It
unpickles `.metadata` with an allow-list, then reads each requested region of a
tensor straight from the `.distcp` files: a chunk blob is a `torch.save` zip
whose storage record is stored uncompressed, so a slice of it (one layer, one
expert) is one `pread`. Memory per read is the slice, not the chunk.

    >>> src = open_dcp(Path("iter_0001000"))                            # doctest: +SKIP
    >>> src.get("decoder.layers.1.mlp.experts.experts.linear_fc1.weight").read((5,))  # expert 5 only
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ...core import bounded, fastio
from ...core.errors import BadInputError, ConfigSchemaError, CorruptFileError, MissingShardError, UnsupportedError
from ...core.source import Source, TensorInfo, contained, dtype_size, is_contiguous
from .. import aux_files, read_config
from .chunks import check_cover, dims as _dims, seq as _seq
from .unpickle import TensorRef, load_common, load_metadata, parse_tensor_pickle

METADATA = ".metadata"
COMMON = "common.pt"
MEGATRON_META = "metadata.json"
_RECREATE = "re-copy the checkpoint directory from where it was saved"


@dataclass(frozen=True)
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: Path
    offset: int      # byte offset of the torch.save blob in `file`
    length: int


@dataclass(frozen=True)
class DcpTensor:
    fqn: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: tuple[Chunk, ...]


# -- metadata ---------------------------------------------------------------------

def _dtype_of(props, where: Path, fqn: str) -> torch.dtype:
    state = props.__dict__.get("_state")
    dtype = state[0] if isinstance(state, tuple) else getattr(props, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise CorruptFileError(f"tensor properties carry no dtype (found {bounded.short(dtype)})", path=where,
                               tensor=fqn, fix=_RECREATE)
    return dtype


def read_metadata(root: Path) -> tuple[dict[str, DcpTensor], list[str]]:
    """Parse `.metadata` -> ({fqn: DcpTensor}, [non-tensor fqns]); checks chunk geometry."""
    return _parse_metadata(root)[:2]


def _parse_metadata(root: Path) -> tuple[dict[str, DcpTensor], list[str], set[str]]:
    where = root / METADATA
    if not where.is_file():
        raise MissingShardError(f"no {METADATA} file: the save did not finish (DCP writes it last)", path=root,
                                fix="use a checkpoint whose save completed")
    md = load_metadata(where)
    try:
        sdm, storage = dict(md.state_dict_metadata), dict(md.storage_data)
        files = {}
        for idx, info in storage.items():
            off = getattr(idx, "offset", None)     # unset when None (class default in torch)
            files[(getattr(idx, "fqn", None), tuple(off) if off is not None else None)] = info
    except (AttributeError, TypeError, ValueError):
        raise CorruptFileError("not a DCP Metadata record", path=where, fix=_RECREATE) from None
    tensors, others = {}, []
    for fqn, meta in sdm.items():
        if not hasattr(meta, "chunks"):
            others.append(fqn)
            continue
        shape, dtype = _dims(meta.size, where, fqn, "size"), _dtype_of(meta.properties, where, fqn)
        chunks = tuple(_chunk(root, where, fqn, shape, dtype, c, files) for c in _seq(meta.chunks, where, fqn))
        check_cover(shape, chunks, where, fqn)
        tensors[fqn] = DcpTensor(fqn, shape, dtype, chunks)
    # Megatron marks tensors it saved flattened (distributed-optimizer layout) in mcore_data.
    mcore = getattr(md, "mcore_data", None)
    mcore = mcore if isinstance(mcore, dict) else {}
    flat = {k for k, v in mcore.items() if isinstance(v, dict) and "nd_reformulated_orig_global_shape" in v}
    return tensors, others, flat


def _chunk(root: Path, where: Path, fqn: str, shape, dtype, c, files) -> Chunk:
    offsets, sizes = _dims(getattr(c, "offsets", None), where, fqn, "chunk offsets"), \
        _dims(getattr(c, "sizes", None), where, fqn, "chunk sizes")
    if len(offsets) != len(shape) or len(sizes) != len(shape) or \
            any(o + s > d for o, s, d in zip(offsets, sizes, shape)):
        raise CorruptFileError(f"chunk at {offsets} size {sizes} lies outside {shape}", path=where, tensor=fqn,
                               fix=_RECREATE)
    info = files.get((fqn, offsets))
    if info is None:
        raise CorruptFileError(f"chunk at {offsets} has no storage entry", path=where, tensor=fqn, fix=_RECREATE)
    if getattr(info, "transform_descriptors", None):
        raise UnsupportedError(f"chunk stored with transforms {list(info.transform_descriptors)}", path=where,
                               tensor=fqn, fix="re-save the checkpoint without storage extensions")
    rel, off, length = getattr(info, "relative_path", None), getattr(info, "offset", None), getattr(info, "length", None)
    if not (isinstance(rel, str) and _dims((off, length), where, fqn, "storage offset and length")):
        raise CorruptFileError("chunk storage entry lacks a file name, offset or length", path=where, tensor=fqn,
                               fix=_RECREATE)
    if math.prod(sizes) * dtype_size(dtype) > length:
        raise CorruptFileError(f"chunk at {offsets} declares {math.prod(sizes)} {dtype} elements, but its blob holds "
                               f"only {length} bytes", path=where, tensor=fqn, fix=_RECREATE)
    return Chunk(offsets, sizes, contained(root, rel, what="data file", origin=where), off, length)


# -- chunk blobs ------------------------------------------------------------------------

class _Window(io.RawIOBase):
    """A read-only view of bytes [start, start+length) of an open file (for zipfile)."""

    def __init__(self, fd: int, start: int, length: int):
        self.fd, self.start, self.length, self.pos = fd, start, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        self.pos = {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence]
        return self.pos

    def tell(self):
        return self.pos

    def readinto(self, b):
        n = max(0, min(len(b), self.length - self.pos))
        data = os.pread(self.fd, n, self.start + self.pos) if n else b""
        b[:len(data)] = data
        self.pos += len(data)
        return len(data)


@dataclass(frozen=True)
class _Blob:
    ref: TensorRef
    data_start: int        # absolute file offset of the storage's first byte
    data_bytes: int


def _blob(chunk: Chunk, fqn: str) -> _Blob:
    st = chunk.file.stat()
    return _blob_at(chunk, fqn, st.st_mtime_ns, st.st_ino)   # a rewritten file is parsed again


@lru_cache(maxsize=4096)
def _blob_at(chunk: Chunk, fqn: str, mtime_ns: int, ino: int) -> _Blob:
    """Locate the raw storage bytes inside one chunk's torch.save zip (small reads only)."""
    where = f"{chunk.file}@{chunk.offset}"
    fd = os.open(chunk.file, os.O_RDONLY)
    try:
        zf = zipfile.ZipFile(_Window(fd, chunk.offset, chunk.length))
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise CorruptFileError("chunk is a zip without data.pkl", path=where, tensor=fqn, fix=_RECREATE)
        ref = parse_tensor_pickle(zf.read(pkl), where)
        info = zf.getinfo(f"{pkl[:-len('data.pkl')]}data/{ref.key}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise UnsupportedError("chunk storage is compressed", path=where, tensor=fqn,
                                   fix="re-save without compression")
        head = os.pread(fd, 30, chunk.offset + info.header_offset)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise CorruptFileError("bad zip local header", path=where, tensor=fqn, fix=_RECREATE)
        n, m = struct.unpack("<HH", head[26:30])
        start = chunk.offset + info.header_offset + 30 + n + m
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError, OSError) as e:
        raise CorruptFileError(f"chunk is not a readable torch.save blob ({type(e).__name__}: {e})", path=where,
                               tensor=fqn, fix="the .distcp file is truncated or damaged; " + _RECREATE) from None
    finally:
        os.close(fd)
    if start + info.file_size > chunk.offset + chunk.length:
        raise CorruptFileError("chunk storage runs past its blob", path=where, tensor=fqn, fix=_RECREATE)
    return _Blob(ref, start, info.file_size)


def _pread_tensor(file: Path, start: int, out: torch.Tensor) -> None:
    """Fill contiguous `out` with the bytes at `start` of `file`."""
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy()) if out.numel() else memoryview(b"")
    fd = os.open(file, os.O_RDONLY)
    try:
        done = fastio.pread_into(fd, view, start)
    finally:
        os.close(fd)
    if done < len(view):
        raise CorruptFileError(f"file ends {len(view) - done} bytes early", path=file,
                               fix="the .distcp file is truncated; " + _RECREATE)


# -- the reader ------------------------------------------------------------------------

class DcpReader:
    """Reads whole tensors or `lead`-indexed slices (fixed leading indices) from a DCP dir."""

    def __init__(self, root: Path):
        self.root = root
        _check_backend(root)
        self.tensors, self.others, self.flattened = _parse_metadata(root)
        self.args: dict | None = None      # Megatron training args from common.pt, when present

    def validate(self, names) -> None:
        """Fail early (before any output) if a data file is missing or too short for its chunks."""
        sizes: dict[Path, int] = {}
        for name in names:
            if name in self.flattened:
                raise UnsupportedError("saved N-D flattened (Megatron distributed-optimizer layout); its chunks "
                                       "are not slices of the weight", path=self.root, tensor=name,
                                       fix="save the model weights with a plain torch_dist checkpoint")
            for c in self.tensors[name].chunks:
                if c.file not in sizes:
                    if not c.file.is_file():
                        raise MissingShardError(f"data file {c.file.name!r} is missing", path=self.root, tensor=name,
                                                fix="copy every __*_*.distcp file of the checkpoint")
                    sizes[c.file] = c.file.stat().st_size
                if c.offset + c.length > sizes[c.file]:
                    raise CorruptFileError(f"chunk needs bytes up to {c.offset + c.length} but the file has "
                                           f"{sizes[c.file]} (truncated)", path=c.file, tensor=name,
                                           fix="copy the file again; " + _RECREATE)

    def read(self, fqn: str, lead: tuple[int, ...] = ()) -> torch.Tensor:
        """Tensor `fqn`, or its sub-tensor `t[lead]` when leading indices are given."""
        t, k = self.tensors[fqn], len(lead)
        out = torch.empty(t.shape[k:], dtype=t.dtype)
        covered = 0
        for c in t.chunks:
            if any(not (o <= i < o + s) for i, o, s in zip(lead, c.offsets, c.sizes)):
                continue
            covered += self._read_chunk(t, c, tuple(i - o for i, o in zip(lead, c.offsets)), out)
        if covered != out.numel():
            raise CorruptFileError(f"chunks cover {covered} of {out.numel()} elements of index {lead}",
                                   path=self.root / METADATA, tensor=fqn, fix=_RECREATE)
        return out

    def _read_chunk(self, t: DcpTensor, c: Chunk, local: tuple[int, ...], out: torch.Tensor) -> int:
        b, k = _blob(c, t.fqn), len(local)
        if b.ref.shape != c.sizes or not _same_dtype(b.ref.dtype, t.dtype):
            raise CorruptFileError(f"chunk holds {b.ref.dtype} {b.ref.shape}, metadata says {t.dtype} {c.sizes}",
                                   path=c.file, tensor=t.fqn, fix=_RECREATE)
        inner = c.sizes[k:]
        dst = out[tuple(slice(o, o + s) for o, s in zip(c.offsets[k:], inner))]
        if not is_contiguous(b.ref.shape, b.ref.stride):
            src = self._whole_storage(b, c, t.dtype)
            dst.copy_(src.as_strided(b.ref.shape, b.ref.stride, b.ref.storage_offset)[local])
            return dst.numel()
        first = b.ref.storage_offset + _ravel(local, c.sizes[:k]) * math.prod(inner)
        nbytes = math.prod(inner) * dtype_size(t.dtype)
        if first * dtype_size(t.dtype) + nbytes > b.data_bytes:
            raise CorruptFileError("chunk storage is shorter than its shape", path=c.file, tensor=t.fqn,
                                   fix=_RECREATE)
        start = b.data_start + first * dtype_size(t.dtype)
        if dst.is_contiguous():
            _pread_tensor(c.file, start, dst)        # straight into the output, no copy
        else:
            tmp = torch.empty(inner, dtype=t.dtype)
            _pread_tensor(c.file, start, tmp)
            dst.copy_(tmp)
        return dst.numel()

    def _whole_storage(self, b: _Blob, c: Chunk, dtype: torch.dtype) -> torch.Tensor:
        buf = torch.empty(b.data_bytes // dtype_size(dtype), dtype=dtype)
        _pread_tensor(c.file, b.data_start, buf)
        return buf


def _same_dtype(stored: torch.dtype, declared: torch.dtype) -> bool:
    # NOTE: same width is not enough (bf16 bytes read as fp16 are wrong values). Byte/untyped
    # storages (uint8) carry 1-byte types such as FP8 as raw bytes.
    return stored == declared or (stored == torch.uint8 and dtype_size(declared) == 1)


def _ravel(idx: tuple[int, ...], dims: tuple[int, ...]) -> int:
    flat = 0
    for i, d in zip(idx, dims):
        flat = flat * d + i
    return flat


def _check_backend(root: Path) -> None:
    """Megatron's metadata.json names the sharded backend; only torch_dist is a DCP."""
    p = root / MEGATRON_META
    if not p.is_file():
        return
    try:
        backend = bounded.load_json(p, "Megatron metadata.json").get("sharded_backend", "torch_dist")
    except (ValueError, AttributeError, OSError):
        raise CorruptFileError("not a JSON object", path=p, fix="restore Megatron's metadata.json") from None
    if backend != "torch_dist":
        raise UnsupportedError(f"Megatron sharded_backend {backend!r}; only 'torch_dist' (DCP) is supported",
                               path=p, fix="re-save the checkpoint with --ckpt-format torch_dist")


class DcpThunk:
    """Thunk for one DCP tensor; `.read(lead)` reads only the slice `t[lead]`."""

    def __init__(self, reader: DcpReader, fqn: str):
        self.reader, self.fqn = reader, fqn

    def __call__(self) -> torch.Tensor:
        return self.reader.read(self.fqn)

    def read(self, lead: tuple[int, ...] = ()) -> torch.Tensor:
        return self.reader.read(self.fqn, lead)


# -- format node ------------------------------------------------------------------

def detect(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / METADATA).is_file() or any(path.glob("__*_*.distcp")))


def megatron_args(root: Path):
    """The `args` Namespace from Megatron's common.pt (restricted load), or None."""
    p = root / COMMON
    if not p.is_file():
        return None
    args = load_common(p).get("args")
    return args if args is not None and hasattr(args, "__dict__") else None


def open_dcp(path: Path) -> Source:
    """Lazy Source with Megatron names; config from config.json beside it, else from common.pt args."""
    root = Path(path)
    if not root.is_dir():
        raise BadInputError("a DCP checkpoint is a directory", path=root, fix="point at the iteration directory")
    reader = DcpReader(root)
    args = megatron_args(root)
    reader.args = dict(vars(args)) if args is not None else None
    config, origin, why = read_config(root), "config.json", None
    if config is None and args is not None:
        from .megatron_config import check_against_tensors, hf_config_from_args
        try:
            derived = hf_config_from_args(reader.args, root / COMMON)
            check_against_tensors(reader.args, reader.tensors, root / COMMON)
            config, origin = derived, "common.pt args"
        except (ConfigSchemaError, UnsupportedError) as e:
            why = e.one_line()     # --config-from may still supply the config (pipeline.prepare checks)
    infos = {n: TensorInfo(t.shape, t.dtype) for n, t in reader.tensors.items()}
    thunks = {n: DcpThunk(reader, n) for n in reader.tensors}
    aux = {k: v for k, v in aux_files(root).items() if k != MEGATRON_META}
    notes = {"config_origin": origin} if config is not None else {"config_error": why}   # for the manifest
    return Source(path=root, format="dcp", config=config, infos=infos, thunks=thunks, aux=aux, notes=notes,
                  config_origin=origin if config is not None else None, config_error=None if config is not None else why)


def reader_of(src: Source) -> DcpReader | None:
    """The DcpReader behind a Source opened by `open_dcp` (edges keep its thunks)."""
    th = next(iter(src.thunks.values()), None)
    return getattr(th, "reader", None)
