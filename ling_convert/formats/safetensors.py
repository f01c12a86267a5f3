"""HF safetensors (single file or sharded with `model.safetensors.index.json`).

The header is parsed and checked here (not by the safetensors library) so that a
malformed file gets an error naming the file, the tensor and what is wrong.
Data is read per tensor with `pread`; the writer streams tensor by tensor.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .. import fastio
from ..errors import BadInputError, CorruptFileError, MissingShardError
from ..source import ST_DTYPES, ST_NAMES, RawRange, Source, TensorInfo, contained, ordered

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MAX_HEADER = 100 * 1024 * 1024  # ref: safetensors rejects headers over 100 MB as well


# -- header ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    info: TensorInfo
    begin: int      # absolute file offset of the first byte
    end: int


def _no_dup_pairs(path: Path):
    def hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise CorruptFileError("header lists the tensor twice", path=path, tensor=k,
                                       fix="re-export the file; names must be unique")
            seen.add(k)
        return dict(pairs)
    return hook


def read_header(path: Path) -> tuple[dict[str, Entry], dict[str, str]]:
    """Parse and validate a safetensors header: -> (entries, __metadata__)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(f"file is {size} bytes, too short for a safetensors header",
                                   path=path, fix="the file is truncated; download or convert it again")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CorruptFileError(f"header length {n} runs past the end of the {size}-byte file",
                                   path=path, fix="the file is truncated or not safetensors; re-download it")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_dup_pairs(path))
    except UnicodeDecodeError:
        raise CorruptFileError("header is not valid UTF-8", path=path, fix="re-export the file") from None
    except json.JSONDecodeError as e:
        raise CorruptFileError(f"header is not valid JSON ({e.msg})", path=path, fix="re-export the file") from None
    if not isinstance(header, dict):
        raise CorruptFileError("header is not a JSON object", path=path, fix="re-export the file")
    meta = header.pop("__metadata__", None) or {}
    entries = {name: _entry(path, name, spec, 8 + n, size) for name, spec in header.items()}
    _check_overlaps(path, entries)
    return entries, meta


def _entry(path: Path, name: str, spec, data_start: int, size: int) -> Entry:
    bad = lambda msg: CorruptFileError(msg, path=path, tensor=name, fix="re-export the file")  # noqa: E731
    if not isinstance(spec, dict):
        raise bad("header entry is not an object")
    dtype = ST_DTYPES.get(spec.get("dtype"))
    if dtype is None:
        raise bad(f"unknown dtype {spec.get('dtype')!r}; expected one of {sorted(ST_DTYPES)}")
    shape, offs = spec.get("shape"), spec.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
            and 0 <= offs[0] <= offs[1]):
        raise bad(f"data_offsets {offs!r} are not [begin, end] with begin <= end")
    info = TensorInfo(tuple(shape), dtype)
    if offs[1] - offs[0] != info.nbytes:
        raise bad(f"{spec['dtype']} {shape} needs {info.nbytes} bytes but data_offsets span {offs[1] - offs[0]}")
    if data_start + offs[1] > size:
        raise bad(f"data ends at byte {data_start + offs[1]}, past the end of the {size}-byte file "
                  "(file truncated?)")
    return Entry(info, data_start + offs[0], data_start + offs[1])


def _check_overlaps(path: Path, entries: dict[str, Entry]) -> None:
    spans = sorted((e.begin, e.end, k) for k, e in entries.items() if e.end > e.begin)
    for (b0, e0, k0), (b1, _, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CorruptFileError(f"data of {k0!r} and {k1!r} overlap", path=path, tensor=k1,
                                   fix="re-export the file")


def read_tensor(path: Path, entry: Entry) -> torch.Tensor:
    flat = pread_flat(path, entry.begin, entry.end - entry.begin, entry.info.dtype)
    return flat.reshape(entry.info.shape)


def pread_flat(path: Path, offset: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
    """Read `nbytes` at `offset` into a fresh 1-D tensor of `dtype` (no zero-fill, no mmap)."""
    if nbytes == 0:
        return torch.empty(0, dtype=dtype)
    buf = torch.empty(nbytes, dtype=torch.uint8)  # uninitialised: pread fills every byte
    with open(path, "rb", buffering=0) as f:
        got = fastio.pread_into(f.fileno(), memoryview(buf.numpy()), offset)
    if got != nbytes:
        raise CorruptFileError(f"expected {nbytes} bytes at offset {offset}, read {got}", path=path,
                               fix="the file is truncated; re-download it")
    return buf.view(dtype)


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
    out = {}
    for name, rel in wm.items():
        if not isinstance(rel, str):
            raise BadInputError(f"weight_map value {rel!r} is not a file name", path=idx, tensor=name,
                                fix="regenerate the index")
        shard = contained(path, rel, what="shard", origin=idx)
        if not shard.is_file():
            raise MissingShardError(f"index names shard {rel!r}, which does not exist", path=idx, tensor=name,
                                    fix="download the missing shard or regenerate the index")
        out[name] = shard
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
    from . import read_config, aux_files
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


# -- writer ------------------------------------------------------------------

def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as huggingface_hub); '2GiB' binary; bare ints are bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    for u, mult in units.items():
        if s.endswith(u):
            num = s[: -len(u)]
            break
    else:
        num, mult = s, 1
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise BadInputError(f"cannot parse size {text!r}", fix="use e.g. 5GB, 500MB or 2GiB") from None
    if value <= 0:
        raise BadInputError(f"size {text!r} must be positive", fix="use e.g. 5GB")
    return value


def plan_shards(infos: dict[str, TensorInfo], max_bytes: int) -> list[list[str]]:
    """Greedy byte-budget sharding in layer order (a tensor larger than the budget gets its own shard)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in ordered(infos):
        n = infos[name].nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards if shards[0] else []


def shard_names(n: int, stem: str = "model", ext: str = "safetensors") -> list[str]:
    if n == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)]


def header_bytes(infos: dict[str, TensorInfo], names: list[str], metadata: dict | None = None) -> bytes:
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    off = 0
    for name in names:
        i = infos[name]
        header[name] = {"dtype": ST_NAMES[i.dtype], "shape": list(i.shape), "data_offsets": [off, off + i.nbytes]}
        off += i.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a tensor without a copy when it is already contiguous."""
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def write_shard(path: Path, names: list[str], src: Source, on_bytes: Callable[[int], None] | None = None) -> str:
    """Write one shard, fsync it and put it in place; returns its sha256."""
    return write_shard_unsynced(path, names, src, on_bytes)()


def write_shard_unsynced(path: Path, names: list[str], src: Source,
                         on_bytes: Callable[[int], None] | None = None) -> Callable[[], str]:
    """Write one shard tensor by tensor (hashed while writing); -> `seal()`, which fsyncs
    it, renames it into place and returns its sha256. Sealing in the background while
    the next shard is written keeps the disk busy the whole run instead of idling the
    reader at every shard end.

    A tensor whose bytes already lie in a file (`src.raw_range`: an untouched input
    tensor, a worker's spilled result) is copied by the kernel; any other is read
    (the next one while this one is written) and written. Either way a background
    thread hashes it from the page cache (_ShardOut). At most two tensors are held
    at once. Writeback starts every 64 MiB, so the final fsync has little left to
    wait for."""
    names = disk_order(src, names)
    out = _ShardOut(path.with_name(path.name + ".tmp"))
    with ThreadPoolExecutor(1) as pool, out.writing():
        header = header_bytes(src.infos, names)
        out.put(header)
        _announce(src, names, out.tmp, len(header))
        nxt = _prefetch(pool, src, names, 0)
        for i, name in enumerate(names):
            rr = src.raw_range(name) if src.has_raw(name) else None
            if rr is not None:
                out.copy(rr)
                rr.done()
            else:
                if nxt is not None and nxt.name == name:
                    data = tensor_bytes(nxt.result())
                    nxt = _prefetch(pool, src, names, i + 1)
                else:   # offered a raw range, then declined it (e.g. a transposed view): read it now
                    data = tensor_bytes(src.load(name))
                out.put(data)
                del data
            if on_bytes:
                on_bytes(src.infos[name].nbytes)
    return lambda: out.seal(path)


def _announce(src: Source, names: list[str], path: Path, start: int) -> None:
    """Tell every tensor where in the file it will go (a worker may write it there itself)."""
    for name in names:
        src.place(name, path, start)
        start += src.infos[name].nbytes


def disk_order(src: Source, names: list[str]) -> list[str]:
    """One shard's tensors with those read from files put in the order their bytes lie there
    (file, then offset); the others keep their places. Layer order need not be file order (names
    sort `attention.dense` before `attention.query_key_value`; a checkpoint sharded by tensor kind
    puts layer 0's experts in three files): read in that order, copies seek back and forth and
    the kernel's sequential readahead keeps restarting."""
    locs = [src.location(n) for n in names]
    located = iter(sorted((loc, i) for i, loc in enumerate(locs) if loc is not None))
    return [names[next(located)[1]] if loc is not None else n for n, loc in zip(names, locs)]


def _prefetch(pool, src: Source, names: list[str], start: int):
    """Start reading the next tensor that has to go through Python (raw ones are copied)."""
    for name in names[start:]:
        if not src.has_raw(name):
            fut = pool.submit(src.load, name)
            fut.name = name
            return fut
    return None


class _ShardOut:
    """The file being written, its sha256 and writeback.

    The hash is fed in file order by one background thread that reads back what was
    just written (page cache), so the writer never waits for it: copies and hashing
    overlap across tensors, not just one tensor deep. Nothing is held for the hash
    but the file itself; the hasher may lag at most HASH_LAG bytes behind."""

    HASH_LAG = 1 << 30
    SMALL = 1 << 20     # below this, hash a copy of the bytes rather than reading them back

    def __init__(self, tmp: Path):
        self.tmp, self.h, self.pos, self.flushed = tmp, hashlib.sha256(), 0, 0
        self._queued: deque = deque()     # (future, end offset) of hash jobs not yet checked
        self._buf = bytearray(fastio.BUF)

    @contextlib.contextmanager
    def writing(self):
        """Open for writing; on success the file stays open for `seal` (an fsync on a later
        descriptor could miss a writeback error recorded before it was opened)."""
        self.f = open(self.tmp, "w+b", buffering=0)  # read back to hash what was written
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="ling-hash")   # one thread: file order
        try:
            yield self
            self._wait(self.pos)
        except BaseException:
            self._hasher.shutdown(wait=True, cancel_futures=True)   # before the descriptor goes
            self.f.close()
            raise
        finally:
            fastio.release_sources()
        self._hasher.shutdown(wait=True)

    def _wait(self, upto: int) -> None:
        """Block until the bytes before `upto` are hashed; re-raises a failed hash job."""
        while self._queued and (self._queued[0][1] <= upto or self._queued[0][0].done()):
            self._queued.popleft()[0].result()

    def _hash_next(self, start: int, n: int, small: bytes | None = None) -> None:
        if small is not None:
            fut = self._hasher.submit(self.h.update, small)
        else:
            fut = self._hasher.submit(fastio.hash_range, self.h, self.f.fileno(), start, n, self._buf)
        self._queued.append((fut, start + n))
        self._wait(start + n - self.HASH_LAG)

    def put(self, data) -> None:
        start, n = self.pos, len(memoryview(data).cast("B"))
        # Small buffers (headers, scales) are hashed from a copy; large ones read back later,
        # so the caller may free `data` as soon as this returns.
        small = bytes(memoryview(data).cast("B")) if n < self.SMALL else None
        fastio.write_all(self.f.fileno(), data)
        self._advance(n)
        self._hash_next(start, n, small)

    def copy(self, rr: RawRange) -> None:
        start, n = self.pos, rr.info.nbytes
        if os.fspath(rr.file) == os.fspath(self.tmp) and rr.offset == start:
            os.lseek(self.f.fileno(), n, os.SEEK_CUR)     # a worker already wrote it in place
        else:
            fastio.copy_range(rr.file, rr.offset, n, self.f.fileno())
        self._advance(n)
        self._hash_next(start, n)

    def _advance(self, n: int) -> None:
        self.pos += n
        if self.pos - self.flushed >= fastio.WRITEBACK_EVERY:
            fastio.start_writeback(self.f.fileno(), self.flushed, self.pos - self.flushed)
            self.flushed = self.pos

    def seal(self, path: Path) -> str:
        try:
            os.fsync(self.f.fileno())
        finally:
            self.f.close()
        os.replace(self.tmp, path)
        return self.h.hexdigest()


def write_index(staged, files: dict[str, list[str]], infos: dict[str, TensorInfo], name: str = INDEX) -> None:
    weight_map = {t: f for f, ts in files.items() for t in ts}
    staged.write_json(name, {"metadata": {"total_size": sum(infos[t].nbytes for t in weight_map)},
                             "weight_map": dict(sorted(weight_map.items()))})


def write_tensors(staged, src: Source, max_shard_size: int, progress=None) -> dict:
    """Write `src`'s tensors as safetensors shards into a StagedOutput. -> {file: [tensor names]}.

    The caller writes the index (`write_index`) after everything else."""
    plan = plan_shards(src.infos, max_shard_size)
    names = shard_names(len(plan))
    with ThreadPoolExecutor(1) as sealer:
        sealing = None      # (name, future sha) of the shard being fsynced while the next is written
        for fname, tensors in zip(names, plan):
            if staged.reusable(fname):
                if progress:
                    progress(sum(src.infos[t].nbytes for t in tensors))
                continue
            seal = write_shard_unsynced(staged.path(fname), tensors, src, progress)
            if sealing:
                staged.done(sealing[0], sealing[1].result())   # recorded only once on disk, in order
            sealing = (fname, sealer.submit(seal))
        if sealing:
            staged.done(sealing[0], sealing[1].result())
    return dict(zip(names, plan))


def iter_shard_plan(src: Source, max_shard_size: int) -> Iterable[tuple[str, list[str], int]]:
    plan = plan_shards(src.infos, max_shard_size)
    for fname, tensors in zip(shard_names(len(plan)), plan):
        yield fname, tensors, sum(src.infos[t].nbytes for t in tensors)
