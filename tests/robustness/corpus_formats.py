"""Corpus cases for the DCP and block-FP8 readers (and bf16 NaN/Inf, which quantize must refuse).

Each builder starts from a valid checkpoint made once per process (`base()`: built by the
project's own writers or the DCP test fixtures) and breaks one thing. GGUF and MindIE cases
are in corpus_gguf_mindie.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from ling_convert.testing import write_tiny

from .corpus import case, evil_pickle

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dcp_fixtures as fx  # noqa: E402

_ROOT: Path | None = None
_BASES: dict[str, Path] = {}
V2 = "ling-mini-2"


def _build_base(kind: str, root: Path) -> Path:
    from ling_convert import api
    if kind == "hf-lite":
        return write_tiny(root / kind, "ling-lite")
    if kind == "hf-plus":
        return write_tiny(root / kind, "ling-plus", shards=2)
    if kind == "dcp":
        d = fx.write_dcp(root / kind, fx.megatron_state(V2, rows=320), fx.expert_parallel)
        fx.write_common(d, fx.megatron_args(V2))
        return d
    if kind == "fp8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # tiny shapes are off vLLM's 128 grid
            api.convert(base("hf-lite"), root / kind, to="fp8")
        return root / kind
    if kind == "gguf":
        from ling_convert.api import to_gguf_file
        to_gguf_file(base("hf-lite"), root / "m.gguf", outtype="f32")
        return root / "m.gguf"
    if kind == "mindie":
        api.convert(base("hf-plus"), root / kind, to="mindie",
                    options={"variant": "plus", "servers": "10.0.0.1,10.0.0.2"})
        return root / kind
    raise KeyError(kind)


def base(kind: str) -> Path:
    """A valid checkpoint of `kind`, built once per process (do not modify it: copy)."""
    global _ROOT
    if kind not in _BASES:
        if _ROOT is None:
            _ROOT = Path(tempfile.mkdtemp(prefix="ling-corpus-"))
        _BASES[kind] = _build_base(kind, _ROOT)
    return _BASES[kind]


def copy_of(kind: str, work: Path) -> Path:
    src = base(kind)
    dst = work / ("src.gguf" if src.is_file() else "src")
    (shutil.copyfile if src.is_file() else shutil.copytree)(src, dst)
    return dst


# -- DCP ----------------------------------------------------------------------------------

def _md_edit(d: Path, fn) -> Path:
    """Unpickle .metadata with torch's classes (test side only), edit it, write it back."""
    md = pickle.loads((d / ".metadata").read_bytes())
    fn(md)
    (d / ".metadata").write_bytes(pickle.dumps(md))
    return d


EP_KEY = "decoder.layers.1.mlp.experts.experts.linear_fc1.weight"     # chunked over __0/__1
NORM_KEY = "decoder.final_layernorm.weight"


def _storage_key(md, fqn: str, n: int = 0):
    return [k for k in md.storage_data if k.fqn == fqn][n]


@case("dcp: code-running global in .metadata", "allow-list")
def _(w, c):
    d = copy_of("dcp", w)
    (d / ".metadata").write_bytes(evil_pickle(c))
    return d


@case("dcp: code-running global in common.pt", "common.pt")
def _(w, c):
    d = copy_of("dcp", w)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {c}",))
    torch.save({"args": Evil()}, d / "common.pt")
    return d


@case("dcp: code-running global in a .distcp chunk pickle", "only plain tensors")
def _(w, c):
    d = copy_of("dcp", w)
    buf = io.BytesIO()
    torch.save(torch.ones(4), buf)
    zin, out = zipfile.ZipFile(io.BytesIO(buf.getvalue())), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            zout.writestr(item, evil_pickle(c) if item.filename.endswith("data.pkl") else data)
    f = d / "__0_0.distcp"
    start = f.stat().st_size
    f.write_bytes(f.read_bytes() + out.getvalue())
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    def point(md):
        k = _storage_key(md, NORM_KEY)
        md.storage_data[k] = _StorageInfo("__0_0.distcp", start, len(out.getvalue()))
    return _md_edit(d, point)


@case("dcp: .distcp data file missing", "__1_0.distcp")
def _(w, c):
    d = copy_of("dcp", w)
    (d / "__1_0.distcp").unlink()
    return d


@case("dcp: .distcp truncated", "__1_0.distcp")
def _(w, c):
    d = copy_of("dcp", w)
    f = d / "__1_0.distcp"
    f.write_bytes(f.read_bytes()[:-100])
    return d


@case("dcp: .distcp blob garbled", "not a readable torch.save blob")
def _(w, c):
    # The final norm's blob: every reader needs it (verify's forward included).
    d = copy_of("dcp", w)
    info = pickle.loads((d / ".metadata").read_bytes()).storage_data
    at = next(v for k, v in info.items() if k.fqn == NORM_KEY)
    f = d / at.relative_path
    data = bytearray(f.read_bytes())
    data[at.offset:at.offset + 64] = b"\xff" * 64
    f.write_bytes(bytes(data))
    return d


@case("dcp: chunk out of bounds", "lies outside")
def _(w, c):
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    def shift(md):
        meta = md.state_dict_metadata[EP_KEY]
        ch = meta.chunks[1]
        meta.chunks[1] = ChunkStorageMetadata(torch.Size([ch.offsets[0] + 5, 0, 0]), ch.sizes)
    return _md_edit(copy_of("dcp", w), shift)


@case("dcp: chunks do not cover the tensor", "elements")
def _(w, c):
    return _md_edit(copy_of("dcp", w), lambda md: md.state_dict_metadata[EP_KEY].chunks.pop())


@case("dcp: storage entry past the end of its file", "__0_0.distcp")
def _(w, c):
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    def past(md):
        k = _storage_key(md, NORM_KEY)
        old = md.storage_data[k]
        md.storage_data[k] = _StorageInfo(old.relative_path, 10**9, old.length)
    return _md_edit(copy_of("dcp", w), past)


@case("dcp: storage path escapes the directory", "outside")
def _(w, c):
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    def escape(md):
        k = _storage_key(md, NORM_KEY)
        old = md.storage_data[k]
        md.storage_data[k] = _StorageInfo("../../etc/passwd", old.offset, old.length)
    return _md_edit(copy_of("dcp", w), escape)


@case("dcp: .metadata truncated", ".metadata")
def _(w, c):
    d = copy_of("dcp", w)
    (d / ".metadata").write_bytes((d / ".metadata").read_bytes()[:50])
    return d


@case("dcp: .metadata missing (save did not finish)", "did not finish")
def _(w, c):
    d = copy_of("dcp", w)
    (d / ".metadata").unlink()
    return d


@case("dcp: common.pt not a torch archive", "common.pt")
def _(w, c):
    d = copy_of("dcp", w)
    (d / "common.pt").write_bytes(b"PK\x03\x04 definitely not a zip")
    return d


@case("dcp: .metadata holds a plain dict", "not a DCP Metadata record")
def _(w, c):
    d = copy_of("dcp", w)
    (d / ".metadata").write_bytes(pickle.dumps({"state_dict_metadata": {}}))
    return d


@case("dcp: metadata.json names another backend", "torch_dist")
def _(w, c):
    d = copy_of("dcp", w)
    (d / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    return d


@case("dcp: tensor dtype disagrees with its chunk", "metadata says")
def _(w, c):
    # Same width (bf16 stored, fp16 declared): reading the bytes as fp16 would be silently wrong.
    from torch.distributed.checkpoint.metadata import TensorProperties

    def relabel(md):
        md.state_dict_metadata[NORM_KEY].properties = TensorProperties(dtype=torch.float16)
    return _md_edit(copy_of("dcp", w), relabel)


@case("dcp: unmapped Megatron key", "--allow-unmapped")
def _(w, c):
    state = fx.megatron_state(V2, rows=320)
    state["decoder.layers.0.self_attention.linear_foo.weight"] = torch.zeros(2, 2)
    d = fx.write_dcp(w / "src", state)
    fx.write_common(d, fx.megatron_args(V2))
    return d


# -- block FP8 -------------------------------------------------------------------------------

W = "model.layers.1.attention.dense.weight"


def _fp8_edit(w: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file
    d = copy_of("fp8", w)
    f = d / "model.safetensors"
    t = load_file(f)
    edit(t)
    save_file(t, f, metadata={"format": "pt"})
    return d


@case("fp8: scale shape wrong", W + "_scale_inv")
def _(w, c):
    return _fp8_edit(w, lambda t: t.update({W + "_scale_inv": torch.ones(2, 3)}))


@case("fp8: weight without its scale", W + "_scale_inv")
def _(w, c):
    return _fp8_edit(w, lambda t: t.pop(W + "_scale_inv"))


@case("fp8: scale without its weight", "scale without its FP8 weight")
def _(w, c):
    return _fp8_edit(w, lambda t: t.pop(W))


@case("fp8: scale holds Inf", "NaN or Inf")
def _(w, c):
    def poison(t):
        s = t[W + "_scale_inv"].clone()
        s.view(-1)[0] = float("inf")
        t[W + "_scale_inv"] = s
    return _fp8_edit(w, poison)


@case("fp8: weight_block_size malformed", "weight_block_size")
def _(w, c):
    d = copy_of("fp8", w)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["weight_block_size"] = [0, "x"]
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _nonfinite(w: Path, value: float) -> Path:
    from safetensors.torch import load_file, save_file
    d = copy_of("hf-lite", w)
    f = d / "model.safetensors"
    t = load_file(f)
    t[W][3, 5] = value
    save_file(t, f, metadata={"format": "pt"})
    return d


@case("bf16: NaN weight (quantize must refuse)", "NaN or Inf")
def _(w, c):
    return _nonfinite(w, float("nan"))


@case("bf16: Inf weight (quantize must refuse)", "NaN or Inf")
def _(w, c):
    return _nonfinite(w, float("-inf"))
