"""GGUF (llama.cpp) as a format node: detect by magic, lazy reader, streaming writer.

A "gguf" Source holds llama.cpp tensor names (`blk.0.attn_qkv.weight`) in GGUF layout,
dequantised on read; the `from-gguf` edge maps them to HF names. The writer declares
every tensor first, then writes them one at a time (stacked experts one expert at a
time, large tensors in row chunks), so peak memory does not grow with the model.

    >>> src = open_gguf("ling-mini-q8_0.gguf")        # doctest: +SKIP
    >>> src.load("blk.1.ffn_gate_exps.weight").shape  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import gguf
import numpy as np
import torch

from ...core import schemas
from ...core.errors import CorruptFileError, MissingShardError, UnsupportedError
from ...core.names import compile_pattern
from ...core.source import PartedSource, TensorInfo, torch_dtype
from ...model.config import config_int
from ..safetensors import pread_flat
from .guard import check_header
from .meta import read_kv, recover_config, table_for_arch

MAGIC = b"GGUF"
SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})\.gguf\Z")
QT = gguf.GGMLQuantizationType
READ_DTYPES = {QT.F32: "F32", QT.F16: "F16", QT.BF16: "BF16"}   # as safetensors codes; the rest -> F32


# -- reader -----------------------------------------------------------------------------

def detect(path: Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def shard_paths(path: Path) -> list[Path]:
    """All files of a split GGUF, given any one of them (or just `path`)."""
    m = SPLIT_RE.search(path.name)
    if not m:
        return [path]
    stem, n = path.name[: m.start()], int(m[2])
    paths = [path.with_name(f"{stem}-{i:05d}-of-{n:05d}.gguf") for i in range(1, n + 1)]
    for p in paths:
        if not p.is_file():
            raise MissingShardError(f"split GGUF shard {p.name} is missing", path=p,
                                    fix="download every -of-%05d shard into one directory" % n)
    return paths


def _reader(path: Path) -> gguf.GGUFReader:
    check_header(path)      # counts, nesting, dims and offsets bounded before gguf-py trusts them
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OSError, RecursionError) as e:
        raise CorruptFileError(f"cannot parse GGUF ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})",
                               path=path, fix="the file is truncated or damaged; re-download or re-export it") from None


def _pread(path: Path, offset: int, n: int) -> memoryview:
    """Raw bytes of one tensor (the same pread path as the safetensors reader)."""
    return memoryview(pread_flat(path, offset, n, torch.uint8).numpy())


def _decode(buf: memoryview, qtype: QT, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw GGUF bytes -> tensor: F32/F16/BF16 as themselves, quantised types dequantised to float32."""
    if qtype in READ_DTYPES:
        dtype = torch_dtype(READ_DTYPES[qtype])
        return torch.frombuffer(buf, dtype=dtype).reshape(shape) if buf else torch.empty(shape, dtype=dtype)
    if not buf:   # a zero-sized quantised tensor: gguf-py cannot reshape an empty block array
        return torch.empty(shape, dtype=torch.float32)
    raw = np.frombuffer(buf, dtype=np.uint8).reshape(gguf.quant_shape_to_byte_shape(shape, qtype))
    return torch.from_numpy(np.ascontiguousarray(gguf.dequantize(raw, qtype), dtype=np.float32))


@lru_cache(maxsize=None)
def _can_dequantize(qtype: QT) -> bool:
    if qtype in READ_DTYPES:
        return True
    block = np.zeros(gguf.quant_shape_to_byte_shape((gguf.GGML_QUANT_SIZES[qtype][0],), qtype), np.uint8)
    try:
        gguf.dequantize(block, qtype)
        return True
    except NotImplementedError:
        return False


def _tensor_reader(path: Path, t) -> tuple[TensorInfo, object, list | None]:
    qtype = QT(t.tensor_type)
    if not _can_dequantize(qtype):
        raise UnsupportedError(f"tensor type {qtype.name} cannot be dequantised by gguf-py", path=path,
                               tensor=t.name, fix="re-quantise the file to f16, bf16, q8_0 or q4_0")
    shape = tuple(int(d) for d in reversed(t.shape.tolist()))   # ggml ne -> numpy order
    nbytes, off = int(t.n_bytes), int(t.data_offset)
    info = TensorInfo(shape, READ_DTYPES.get(qtype, "F32"))
    thunk = lambda: _decode(_pread(path, off, nbytes), qtype, shape)  # noqa: E731
    parts = None
    if len(shape) >= 3:  # stacked experts: each one readable alone
        step = nbytes // shape[0]
        parts = [lambda i=i: _decode(_pread(path, off + i * step, step), qtype, shape[1:]) for i in range(shape[0])]
    return info, thunk, parts


def open_gguf(path: str | Path) -> PartedSource:
    """Open a GGUF file (or the first shard of a split set) lazily; config recovered from its keys."""
    path = Path(path)
    paths = shard_paths(path)
    readers = [_reader(p) for p in paths]
    if readers[0].byte_order != "I":
        raise UnsupportedError("big-endian GGUF", path=path, fix="convert it with gguf-convert-endian first")
    try:
        kv = read_kv(readers[0])
        table = table_for_arch(str(kv.get("general.architecture")), path)
        cfg, issues, embedded = recover_config(kv, table, where=path)
    except (ValueError, TypeError, KeyError, AttributeError) as e:   # bytes that parse but mean nothing
        raise CorruptFileError(f"malformed GGUF metadata ({type(e).__name__}: {str(e)[:160]})", path=path,
                               fix="the file is damaged; re-download or re-export it") from None
    infos, thunks, parts, types, type_bytes = {}, {}, {}, Counter(), Counter()
    for p, r in zip(paths, readers):
        for t in r.tensors:
            if t.name in infos:
                raise CorruptFileError("tensor appears twice", path=p, tensor=t.name, fix="re-export the file")
            infos[t.name], thunks[t.name], pt = _tensor_reader(p, t)
            types[QT(t.tensor_type).name] += 1
            type_bytes[QT(t.tensor_type).name] += int(t.n_bytes)
            if pt is not None:
                parts[t.name] = pt
    issues += _fill_missing_tensors(table, cfg, infos, thunks)
    storage = outtype_of(kv.get("general.file_type"))
    notes = {"gguf_type": storage,   # for the manifest; code reads Source.storage_type
             "gguf": {"arch": table["gguf_arch"], "files": [p.name for p in paths], "tensor_types": dict(types),
                     "tensor_bytes": dict(type_bytes),
                      "llama_defaults": issues}}
    return PartedSource(path=path, format="gguf", config=cfg, infos=infos, thunks=thunks, aux={}, notes=notes,
                        original_config=embedded, parts=parts, storage_type=storage)


def outtype_of(file_type) -> str:
    """general.file_type -> our --outtype name ('q8_0'), or llama.cpp's own name for other types."""
    rules = schemas.load("gguf/dtype_rules.json")
    try:
        ft = gguf.LlamaFileType(int(file_type)).name
    except (TypeError, ValueError):
        return "unknown"
    ggml = {v: k for k, v in rules["file_type"].items()}.get(ft)
    return {v: k for k, v in rules["outtypes"].items()}.get(ggml, ft.lower())


def _fill_missing_tensors(table, cfg: dict, infos: dict, thunks: dict) -> list[dict]:
    """Tensors llama.cpp treats as optional (exp_probs_b): absent -> zeros, as llama.cpp computes, and reported."""
    issues = []
    for e in table["tensors"]:
        if "present_with" not in e:
            continue
        rx = compile_pattern(e["present_with"])
        layers = sorted({int(m["layer"]) for n in infos if (m := rx.match(n))})
        for layer in layers:
            name = e["gguf"].format(layer=layer)
            if name not in infos:
                shape = tuple(config_int(cfg, f) for f in e["zeros_shape"])
                infos[name], thunks[name] = TensorInfo(shape, "F32"), (lambda s=shape: torch.zeros(s))
                issues.append({"key": name, "problem": f"missing: {e['silent_if_missing']}", "llama_default": "zeros"})
    return issues
