"""Corpus cases for issue 17 (bounded parsing, counts against bytes, every dtype and layout named).

Special files (FIFO, /dev/zero link, link loop) in place of checkpoint files; JSON nested 200,000
deep or holding a 5000-digit integer; pickles that inflate; configs whose counts the tensors cannot
hold; tensors of types or layouts no writer has; DCP chunk layouts that overlap; GGUF headers whose
counts, nesting, dimensions or offsets gguf-py would trust. test_corpus runs each through every
command that reads it, within a time and memory bound, and checks the source is byte-identical after.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from .corpus import case, edit_config, first_tensor, st_parts, st_write, tiny_copy
from .corpus_formats import EP_KEY, NORM_KEY, _md_edit, copy_of
from .corpus_gguf_mindie import gguf_layout

DEEP = 200_000
BIG_INT = "9" * 5000


# -- special files in place of checkpoint files (class 2) ------------------------------------

_MAKE = {"FIFO": os.mkfifo, "character device": lambda p: p.symlink_to("/dev/zero"),
         "loop": lambda p: p.symlink_to(p.name)}
# (case, file replaced, how the tiny checkpoint is written, what the error names)
SPECIAL_FILES = (
    ("config: config.json is a FIFO", "config.json", {}, "FIFO"),
    ("config: config.json links to /dev/zero", "config.json", {}, "character device"),
    ("config: config.json is a symlink loop", "config.json", {}, "loop"),
    ("st: model.safetensors is a FIFO", "model.safetensors", {}, "FIFO"),
    ("st: model.safetensors links to /dev/zero", "model.safetensors", {}, "character device"),
    ("index: index is a FIFO", "model.safetensors.index.json", {"shards": 2}, "FIFO"),
    ("index: shard is a symlink loop", "model-00002-of-00002.safetensors", {"shards": 2}, "loop"),
    ("bin: pytorch_model.bin is a FIFO", "pytorch_model.bin", {"fmt": "bin"}, "FIFO"),
)


def _special(fname: str, kw: dict, make):
    def build(w, c):
        d = tiny_copy(w, **kw)
        (d / fname).unlink()
        make(d / fname)
        return d
    return build


for _name, _fname, _kw, _needle in SPECIAL_FILES:
    case(_name, _needle)(_special(_fname, _kw, _MAKE[_needle]))


def _header_edit(w, edit) -> Path:
    """The tiny checkpoint with its safetensors header text rewritten by `edit(raw, header)`."""
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    st_write(f, edit(json.dumps(h).encode(), h), body)
    return d


# -- JSON nested deep, huge integers (class 2) -----------------------------------------------

@case("config: JSON nested 200,000 deep", "nested")
def _(w, c):
    d = tiny_copy(w)
    text = (d / "config.json").read_text()
    (d / "config.json").write_text(text[:-1] + ', "x": ' + "[" * DEEP + "]" * DEEP + "}")
    return d


@case("config: 4000-digit num_hidden_layers", "digits")
def _(w, c):
    # Under Python's own 4300-digit limit, so only the reader's digit cap stops it.
    d = tiny_copy(w)
    text = json.dumps({**json.loads((d / "config.json").read_text()), "num_hidden_layers": 0})
    (d / "config.json").write_text(text.replace('"num_hidden_layers": 0', '"num_hidden_layers": ' + "9" * 4000))
    return d


@case("st: header nested 200,000 deep", "nested")
def _(w, c):
    return _header_edit(w, lambda raw, h: raw[:-1] + b', "x": ' + b"[" * DEEP + b"]" * DEEP + b"}")


@case("st: a 5000-digit integer in the header", "digits")
def _(w, c):
    def edit(raw, h):
        offs = json.dumps(h[first_tensor(h)]["data_offsets"]).encode()
        return raw.replace(offs, f"[0, {BIG_INT}]".encode(), 1)
    return _header_edit(w, edit)


@case("index: JSON nested 200,000 deep", "nested")
def _(w, c):
    d = tiny_copy(w, shards=2)
    p = d / "model.safetensors.index.json"
    p.write_text(p.read_text()[:-1] + ', "x": ' + "[" * DEEP + "]" * DEEP + "}")
    return d


# -- counts the tensors cannot hold (class 3) ------------------------------------------------

@case("config: num_hidden_layers of 10^9", "1000000000", family="config-counts")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(num_hidden_layers=10**9))


@case("config: num_experts of 10^9", "1000000000", family="config-counts")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(num_experts=10**9))


@case("config: zero attention heads", "num_attention_heads", family="config-counts")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(num_attention_heads=0))


@case("config: head_dim disagrees with the tensors", ("head_dim 32", "query_key_value"), family="config-counts")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(head_dim=32))


def _shape_edit(w, shape_of):
    """First tensor's shape replaced by `shape_of(shape)` (offsets kept when the byte count still matches,
    else the tensor is made zero-sized at its end), so only the shape's values are wrong."""
    def edit(raw, h):
        e = h[first_tensor(h)]
        e["shape"] = shape_of(e["shape"])
        if 0 in e["shape"]:
            e["data_offsets"] = [e["data_offsets"][1]] * 2
        return json.dumps(h).encode()
    return _header_edit(w, edit)


@case("st: shape holding true", "shape")
def _(w, c):
    return _shape_edit(w, lambda s: [True, math.prod(s)])     # numel and bytes still match


@case("st: shape holding 2**64 beside a zero", "shape")
def _(w, c):
    return _shape_edit(w, lambda s: [2**64, 0])


# -- dtypes and layouts with no target form (class 4) ----------------------------------------

@case("st: dtype given as a JSON list", "dtype")
def _(w, c):
    def edit(raw, h):
        h[first_tensor(h)]["dtype"] = ["BF16"]
        return json.dumps(h).encode()
    return _header_edit(w, edit)


@case("index: shard name holding a NUL byte", "NUL")
def _(w, c):
    d = tiny_copy(w, shards=2)
    p = d / "model.safetensors.index.json"
    idx = json.loads(p.read_text())
    idx["weight_map"][next(iter(idx["weight_map"]))] = "model\u0000.safetensors"
    p.write_text(json.dumps(idx))
    return d


def _bin_with(w, tensor: torch.Tensor):
    d = tiny_copy(w, fmt="bin")
    f = d / "pytorch_model.bin"
    sd = torch.load(f, weights_only=True)
    sd["model.extra.weight"] = tensor
    torch.save(sd, f)
    return d


@case("bin: sparse tensor", "sparse")
def _(w, c):
    return _bin_with(w, torch.eye(4).to_sparse())


@case("bin: quantised qint8 tensor", "quantised")
def _(w, c):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # torch deprecates making quantised tensors; files still hold them
        return _bin_with(w, torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8))


@case("bin: complex64 tensor", "complex64")
def _(w, c):
    return _bin_with(w, torch.ones(4, dtype=torch.complex64))


@case("bin: uint16 tensor", "uint16")
def _(w, c):
    return _bin_with(w, torch.ones(4, dtype=torch.uint16))


@case("bin: data.pkl inflating to 1.2 GB", "data.pkl")
def _(w, c):
    d = tiny_copy(w, fmt="bin")
    f = d / "pytorch_model.bin"
    zin = zipfile.ZipFile(io.BytesIO(f.read_bytes()))
    with zipfile.ZipFile(f, "w") as zout:
        for item in zin.infolist():
            if item.filename.endswith("data.pkl"):
                with zout.open(zipfile.ZipInfo(item.filename), "w", force_zip64=True) as out:
                    block = b"\0" * (1 << 24)
                    for _ in range(72):
                        out.write(block)
                zout.infolist()[-1].compress_type = zipfile.ZIP_DEFLATED
            else:
                zout.writestr(item, zin.read(item.filename))
    return d


# -- DCP ------------------------------------------------------------------------------------

def _dag(depth: int = 64):
    """Lists nested 64 deep, each level holding the one below twice: tiny pickled, 2**64 items printed."""
    x: list = []
    for _ in range(depth):
        x = [x, x]
    return x


@case("dcp: dtype is a reference DAG", "dtype")
def _(w, c):
    from torch.distributed.checkpoint.metadata import TensorProperties

    def poison(md):
        props = TensorProperties(dtype=torch.float32)
        props.dtype = _dag()
        md.state_dict_metadata[NORM_KEY].properties = props
    return _md_edit(copy_of("dcp", w), poison)


@case("dcp: tensor declared with 2^40 elements", "blob holds only")
def _(w, c):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    def grow(md):
        meta = md.state_dict_metadata[NORM_KEY]
        meta.size = torch.Size([1 << 40])
        meta.chunks = [ChunkStorageMetadata(torch.Size([0]), torch.Size([1 << 40]))]
    return _md_edit(copy_of("dcp", w), grow)


@case("dcp: overlapping chunks whose element count matches", "overlap")
def _(w, c):
    from torch.distributed.checkpoint.metadata import (
        ChunkStorageMetadata,
        MetadataIndex,
    )

    def overlap(md):
        meta = md.state_dict_metadata[EP_KEY]
        a, b = meta.chunks[0], meta.chunks[1]
        moved = torch.Size([a.offsets[0], *b.offsets[1:]])    # b on top of a; a's rows... and b's never stored
        meta.chunks[1] = ChunkStorageMetadata(moved, b.sizes)
        old = next(k for k in md.storage_data if k.fqn == EP_KEY and tuple(k.offset) == tuple(b.offsets))
        md.storage_data[MetadataIndex(EP_KEY, moved, old.index)] = md.storage_data.pop(old)
    return _md_edit(copy_of("dcp", w), overlap)


# -- GGUF -----------------------------------------------------------------------------------

def _gguf_insert_kv(w: Path, key: bytes, value: bytes) -> Path:
    """Add one key/value before the tensor infos, padded so the data keeps its 32-byte alignment."""
    f = copy_of("gguf", w)
    data = bytearray(f.read_bytes())
    lay = gguf_layout(bytes(data))
    key += b"_" * (-(8 + len(key) + len(value)) % 32)
    kv = struct.pack("<Q", len(key)) + key + value
    infos_at = lay["infos_at"]
    struct.pack_into("<Q", data, lay["n_kv_at"], struct.unpack_from("<Q", data, lay["n_kv_at"])[0] + 1)
    f.write_bytes(bytes(data[:infos_at]) + kv + bytes(data[infos_at:]))
    return f


@case("gguf: arrays nested 100,000 deep", "nested")
def _(w, c):
    levels = struct.pack("<IQ", 9, 1) * 100_000
    return _gguf_insert_kv(w, b"evil.nested", struct.pack("<I", 9) + levels + struct.pack("<IQ", 0, 0))


@case("gguf: array count of 2^60", "cannot fit")
def _(w, c):
    return _gguf_insert_kv(w, b"evil.count", struct.pack("<I", 9) + struct.pack("<IQ", 8, 1 << 60))


@case("gguf: two tensors share one data offset", "overlaps")
def _(w, c):
    f = copy_of("gguf", w)
    data = bytearray(f.read_bytes())
    lay = gguf_layout(bytes(data))
    a, b = lay["tensor_offset_at"][-2:]
    struct.pack_into("<Q", data, b, struct.unpack_from("<Q", data, a)[0])
    f.write_bytes(bytes(data))
    return f


# -- dcp2st derives a config only when it can stand behind it (class 5) ----------------------

def _dcp_args(w, **changes):
    import dcp_fixtures as fx

    from .corpus_formats import V2
    d = copy_of("dcp", w)
    args = {**fx.megatron_args(V2), **changes}
    fx.write_common(d, {k: v for k, v in args.items() if v is not None})
    return d


@case("dcp: common.pt args lack the router settings", "--config-from")
def _(w, c):
    return _dcp_args(w, moe_router_score_function=None, moe_router_enable_expert_bias=None)


@case("dcp: common.pt args turn off the expert bias its tensors hold", "moe_router_enable_expert_bias=False")
def _(w, c):
    return _dcp_args(w, moe_router_enable_expert_bias=False)
