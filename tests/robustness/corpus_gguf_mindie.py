"""Corpus cases for the GGUF reader and MindIE dirs (model config backup, service config, rank table)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .corpus import case
from .corpus_formats import copy_of

# -- GGUF --------------------------------------------------------------------------------------

def gguf_layout(data: bytes) -> dict:
    """Byte positions in a GGUF v3 file: counts, each KV's type field, each tensor's type/offset fields."""
    pos = 4 + 4
    n_t, n_kv = struct.unpack_from("<QQ", data, pos)
    pos += 16
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def string(p):
        (n,) = struct.unpack_from("<Q", data, p)
        return p + 8 + n, p

    def value(p, vt):
        if vt == 8:
            return string(p)[0]
        if vt == 9:
            (it, cnt) = struct.unpack_from("<IQ", data, p)
            p += 12
            for _ in range(cnt):
                p = value(p, it)
            return p
        return p + sizes[vt]
    out = {"n_tensors_at": 8, "n_kv_at": 16, "kv_type_at": [], "kv_strlen_at": [], "tensor_type_at": [],
           "tensor_offset_at": [], "tensor_ndims_at": [], "tensor_dim0_at": [], "data_at": 0}
    for _ in range(n_kv):
        pos, _ = string(pos)
        (vt,) = struct.unpack_from("<I", data, pos)
        out["kv_type_at"].append(pos)
        if vt == 8:
            out["kv_strlen_at"].append(pos + 4)
        pos = value(pos + 4, vt)
    out["infos_at"] = pos
    for _ in range(n_t):
        pos, _ = string(pos)
        (nd,) = struct.unpack_from("<I", data, pos)
        out["tensor_ndims_at"].append(pos)
        out["tensor_dim0_at"].append(pos + 4)
        pos += 4 + 8 * nd
        out["tensor_type_at"].append(pos)
        out["tensor_offset_at"].append(pos + 4)
        pos += 12
    out["data_at"] = pos      # end of the tensor infos; tensor data starts at the next alignment boundary
    return out


def _gguf_patch(w: Path, fn) -> Path:
    f = copy_of("gguf", w)
    data = bytearray(f.read_bytes())
    fn(data, gguf_layout(bytes(data)))
    f.write_bytes(bytes(data))
    return f


@case("gguf: truncated", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: d.__delitem__(slice(len(d) * 3 // 5, None)))


@case("gguf: wrong magic", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: d.__setitem__(slice(0, 4), b"GGUX"))


@case("gguf: tensor data past EOF", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: struct.pack_into("<Q", d, lay["tensor_offset_at"][-1], 10**9))


@case("gguf: unsupported version", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: struct.pack_into("<I", d, 4, 99))


@case("gguf: absurd tensor count", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: struct.pack_into("<Q", d, lay["n_tensors_at"], 2**40))


@case("gguf: metadata string length past EOF", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: struct.pack_into("<Q", d, lay["kv_strlen_at"][0], 2**50))


@case("gguf: unknown metadata value type", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: struct.pack_into("<I", d, lay["kv_type_at"][3], 77))


@case("gguf: unknown tensor type", "src.gguf")
def _(w, c):
    return _gguf_patch(w, lambda d, lay: struct.pack_into("<I", d, lay["tensor_type_at"][0], 250))


@case("gguf: split shard missing", "00002-of-00002")
def _(w, c):
    f = copy_of("gguf", w)
    first = f.with_name("src-00001-of-00002.gguf")
    f.rename(first)
    return first


# -- MindIE ----------------------------------------------------------------------------------

def _rank_table(w: Path, edit) -> Path:
    d = copy_of("mindie", w)
    p = d / "rank_table.json"
    p.write_text(edit(p.read_text()))
    return d


def _dup_rank(text: str) -> str:
    rt = json.loads(text)
    rt["server_list"][1]["device"][0]["rank_id"] = "3"
    return json.dumps(rt)


@case("mindie: rank table duplicate rank ids", "rank_id 3 is used 2 times", family="rank-table")
def _(w, c):
    return _rank_table(w, _dup_rank)


@case("mindie: rank table malformed JSON", "rank_table.json", family="rank-table")
def _(w, c):
    return _rank_table(w, lambda text: text[: len(text) // 2])


@case("mindie: config.json.bak malformed JSON", "config.json.bak")
def _(w, c):
    d = copy_of("mindie", w)
    (d / "config.json.bak").write_text("{\"architectures\": [")
    return d


@case("mindie: config.json.bak belongs to another model", "config.json.bak says hidden_size=128")
def _(w, c):
    d = copy_of("mindie", w)
    bak = json.loads((d / "config.json.bak").read_text())
    bak["hidden_size"] = 128
    (d / "config.json.bak").write_text(json.dumps(bak))
    return d


@case("mindie: service config malformed JSON", "mindie-service/config.json")
def _(w, c):
    d = copy_of("mindie", w)
    (d / "mindie-service" / "config.json").write_text('{"ServerConfig": ')
    return d
