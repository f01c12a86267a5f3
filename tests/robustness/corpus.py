"""A generated corpus of malformed checkpoints, one builder per case.

Each case copies a tiny valid checkpoint and breaks one thing. `READERS` says
which commands can read the case; the test runs each command and expects a
one-line error, exit 2, no traceback, no output left, and no payload run.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ling_convert.testing import write_tiny


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path, Path], Path]      # (workdir, canary) -> path to feed the commands
    needle: str | tuple[str, ...] = ""       # the one-line error must contain it (or one of them)
    family: str | None = None                # which readers (default: the name's prefix)

    @property
    def kind(self) -> str:
        """The reader family: "st", "index", "bin", "config", "dcp", "fp8", "gguf", "mindie", ..."""
        return self.family or self.name.split(":", 1)[0]

    def matches(self, line: str) -> bool:
        needles = (self.needle,) if isinstance(self.needle, str) else self.needle
        return any(n.lower() in line.lower() for n in needles)


CASES: list[Case] = []


def case(name: str, needle: str | tuple[str, ...] = "", family: str | None = None):
    def deco(fn):
        CASES.append(Case(name, fn, needle, family))
        return fn
    return deco


# -- helpers -----------------------------------------------------------------------

def tiny_copy(work: Path, model="ling-lite", fmt="safetensors", shards=1) -> Path:
    return write_tiny(work / "src", model, fmt=fmt, shards=shards)


def st_parts(f: Path) -> tuple[dict, bytes]:
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def st_write(f: Path, header: dict | bytes, body: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def first_tensor(header: dict) -> str:
    return next(k for k in header if k != "__metadata__")


def edit_config(d: Path, fn) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def evil_pickle(canary: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {canary}",))
    return pickle.dumps(Evil(), protocol=2)


# -- safetensors -------------------------------------------------------------------

@case("st: truncated file", "past the end")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-777])
    return d


@case("st: header length past EOF", "header length")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = struct.pack("<Q", 10**12)
    f.write_bytes(bytes(data))
    return d


@case("st: file shorter than 8 bytes", "too short")
def _(w, c):
    d = tiny_copy(w)
    (d / "model.safetensors").write_bytes(b"\x01\x02")
    return d


@case("st: overlapping offsets", "overlap")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    names = [k for k in h if k != "__metadata__" and h[k]["dtype"] == "BF16" and len(h[k]["shape"]) == 1]
    a, b = names[0], names[1]
    h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + (h[b]["data_offsets"][1] - h[b]["data_offsets"][0])]
    st_write(f, h, body)
    return d


@case("st: dtype/shape disagree with byte length", "bytes")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    k = first_tensor(h)
    h[k]["shape"] = [s * 2 for s in h[k]["shape"]]
    st_write(f, h, body)
    return d


@case("st: duplicate tensor names", "twice")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    k = first_tensor(h)
    raw = json.dumps(h).encode()
    dup = json.dumps({k: h[k]})[1:-1].encode()
    st_write(f, raw[:-1] + b"," + dup + b"}", body)
    return d


@case("st: non-UTF-8 header", "UTF-8")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    raw = json.dumps(h).encode()
    st_write(f, raw[:2] + b"\xff\xfe" + raw[2:], body)
    return d


@case("st: header not JSON", "JSON")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    _, body = st_parts(f)
    st_write(f, b"{this is not json", body)
    return d


@case("st: unknown dtype", "dtype")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    h[first_tensor(h)]["dtype"] = "F128"
    st_write(f, h, body)
    return d


@case("st: negative shape", "shape")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    h[first_tensor(h)]["shape"] = [-1, 4]
    st_write(f, h, body)
    return d


@case("st: header entry is not an object", "not an object")
def _(w, c):
    d = tiny_copy(w)
    f = d / "model.safetensors"
    h, body = st_parts(f)
    h[first_tensor(h)] = [1, 2]
    st_write(f, h, body)
    return d


# -- index ----------------------------------------------------------------------

@case("index: missing shard", "does not exist")
def _(w, c):
    d = tiny_copy(w, shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    return d


def _index_edit(w, fn):
    d = tiny_copy(w, shards=2)
    p = d / "model.safetensors.index.json"
    idx = json.loads(p.read_text())
    fn(idx)
    p.write_text(json.dumps(idx))
    return d


@case("index: ../ shard path", "outside")
def _(w, c):
    return _index_edit(w, lambda i: i["weight_map"].update({next(iter(i["weight_map"])): "../x.safetensors"}))


@case("index: absolute shard path", "outside")
def _(w, c):
    return _index_edit(w, lambda i: i["weight_map"].update({next(iter(i["weight_map"])): "/etc/hostname"}))


@case("index: tensor listed in two shards", "two shards")
def _(w, c):
    d = tiny_copy(w, shards=2)
    # The same tensor stored in both shards (the index can only name one of them).
    from safetensors.torch import load_file, save_file
    a = load_file(str(d / "model-00001-of-00002.safetensors"))
    b = load_file(str(d / "model-00002-of-00002.safetensors"))
    k = next(iter(a))
    b[k] = a[k]
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    return d


@case("index: not JSON", "weight_map")
def _(w, c):
    d = tiny_copy(w, shards=2)
    (d / "model.safetensors.index.json").write_text("[1, 2")
    return d


@case("index: names a tensor no shard holds", "absent")
def _(w, c):
    return _index_edit(w, lambda i: i["weight_map"].update({"model.ghost.weight": "model-00001-of-00002.safetensors"}))


@case("index: weight_map is a list", "weight_map")
def _(w, c):
    return _index_edit(w, lambda i: i.update(weight_map=list(i["weight_map"])))


@case("index: shard name is not a string", "not a file name")
def _(w, c):
    return _index_edit(w, lambda i: i["weight_map"].update({next(iter(i["weight_map"])): 5}))


# -- .bin ---------------------------------------------------------------------------

@case("bin: pickle with a code-running global", "nothing was executed")
def _(w, c):
    d = tiny_copy(w, fmt="bin")
    f = d / "pytorch_model.bin"
    buf = io.BytesIO()
    torch.save({"x": torch.ones(2)}, buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(f, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, evil_pickle(c) if item.filename.endswith("data.pkl") else data)
    return d


@case("bin: truncated zip", "pytorch_model.bin")
def _(w, c):
    d = tiny_copy(w, fmt="bin")
    f = d / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:5000])
    return d


@case("bin: plain pickle, not a zip", "not a torch zip")
def _(w, c):
    d = tiny_copy(w, fmt="bin")
    (d / "pytorch_model.bin").write_bytes(evil_pickle(c))
    return d


@case("bin: not a state dict", "flat dict")
def _(w, c):
    d = tiny_copy(w, fmt="bin")
    torch.save([torch.ones(2)], d / "pytorch_model.bin")
    return d


# -- config -----------------------------------------------------------------------

@case("config: missing field", "hidden_size")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.pop("hidden_size"))


@case("config: wrong type", "num_hidden_layers")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(num_hidden_layers="2"))


@case("config: unknown architecture", ("unknown architecture", "MixtralForCausalLM"))
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(architectures=["MixtralForCausalLM"]))


@case("config: architectures not a list", "architectures")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(architectures="BailingMoeForCausalLM"))


@case("config: not JSON", "config.json")
def _(w, c):
    d = tiny_copy(w)
    (d / "config.json").write_text("{'single': 'quotes'}")
    return d


@case("config: missing file", "config.json")
def _(w, c):
    d = tiny_copy(w)
    (d / "config.json").unlink()
    return d


@case("config: layers disagree with tensors", "model.layers.2.")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(num_hidden_layers=3))



# The config parses and names a known architecture, but does not describe the tensors.

@case("config: vocab_size larger than the embedding", ("vocab_size", "rows"))
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(vocab_size=500))


@case("config: hidden_size disagrees with tensors", ("query_key_value", "hidden_size"))
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(hidden_size=32))


@case("config: num_attention_heads disagrees with tensors", ("query_key_value", "heads"))
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(num_attention_heads=8))


@case("config: yarn rope_scaling without factor", ("factor", "rope_scaling"))
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(rope_scaling={"type": "yarn", "rope_type": "yarn"}))


@case("config: num_experts_per_tok > num_experts", "num_experts")
def _(w, c):
    return edit_config(tiny_copy(w), lambda cfg: cfg.update(num_experts_per_tok=9))


# The other readers' cases register into CASES too (imported last: they use `case`).
from . import corpus_bounds, corpus_formats, corpus_gguf_mindie  # noqa: E402,F401
