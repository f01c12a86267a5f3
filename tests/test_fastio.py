"""The shard writer's fast path: untouched tensors are copied by the kernel, hashed from
what was written, and the result is byte-identical to the read/write path."""

from __future__ import annotations

import json

import pytest
import torch

from ling_convert import api
from ling_convert.core import fastio
from ling_convert.formats import open_source
from ling_convert.core.output import sha256_file
from ling_convert.core.source import TensorInfo
from ling_convert.formats.writer import WriteOptions, write_hf_dir

from test_foundation import read_all_st


def _strided_bin(d):
    base = torch.arange(600, dtype=torch.float32).reshape(20, 30)
    sd = {"tied.a": base, "tied.b": base, "slice": base[5:9], "col": base[:, 3], "t": base.t(),
          "other": torch.randn(40, 50).to(torch.bfloat16), "empty": torch.empty(0, 4),
          "scalar": torch.tensor(3.5)}
    d.mkdir()
    torch.save(sd, d / "pytorch_model.bin")

    return sd


def test_raw_ranges_only_for_bytes_stored_as_the_tensor(tmp_path):
    _strided_bin(tmp_path / "m")
    src = open_source(tmp_path / "m", "bin")
    raw = {k for k in src.keys() if src.raw_range(k) is not None}
    # a transposed view, a strided column and an empty tensor must go through torch
    assert raw == {"tied.a", "tied.b", "slice", "other", "scalar"}
    # an edge that changes what a name holds drops the shortcut, even with the same thunk
    changed = src.derive(infos={**src.infos, "other": TensorInfo((50, 40), torch.bfloat16)})
    assert changed.raw_range("other") is None
    # an edge that wraps the thunk (any transform) has no raw range either
    wrapped = src.derive(thunks={**src.thunks, "slice": lambda: src.load("slice") * 2})
    assert wrapped.raw_range("slice") is None


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_fast_and_fallback_paths_write_identical_bytes(tmp_path, monkeypatch, kernel_copy):
    sd = _strided_bin(tmp_path / "m")
    monkeypatch.setattr(fastio, "_kernel_copy", kernel_copy)
    monkeypatch.setattr(fastio, "WRITEBACK_EVERY", 1000)   # exercise early writeback on tiny data
    out = tmp_path / "out"
    write_hf_dir(open_source(tmp_path / "m", "bin"), out, WriteOptions(max_shard_size="3KB"))
    got = read_all_st(out)
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v.contiguous()), k
    # the manifest's hash is the hash of the bytes on disk (hashed from what was copied)
    files = json.loads((out / "ling-convert.json").read_text())["files"]
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 1
    for f in shards:
        assert files[f.name] == sha256_file(f), f.name


def test_kernel_copy_paths_agree_on_a_tiny_model(tiny, tmp_path, monkeypatch):
    src = tiny("ling-mini-2", "bin", 2)
    outs = []
    for flag in (True, False):
        monkeypatch.setattr(fastio, "_kernel_copy", flag)
        out = tmp_path / f"out-{flag}"
        api.convert(src, out, to="safetensors", max_shard_size="200KB")
        outs.append({f.name: f.read_bytes() for f in out.glob("*.safetensors")})
    assert outs[0] == outs[1] and len(outs[0]) > 1


def test_copy_range_refuses_a_truncated_source(tmp_path):
    from ling_convert.core.errors import CorruptFileError
    src = tmp_path / "s"
    src.write_bytes(b"x" * 100)
    with open(tmp_path / "d", "wb") as d:
        with pytest.raises(CorruptFileError, match="ends first"):
            fastio.copy_range(src, 50, 80, d.fileno())


def _copied(src, n: int, tmp_path) -> bytes:
    with open(tmp_path / "dst", "w+b") as d:
        fastio.copy_range(src, 0, n, d.fileno())
        d.seek(0)
        return d.read()


def test_kept_open_sources_never_give_a_replaced_files_old_bytes(tmp_path):
    """Source files stay open between copies (readahead); a path whose file was replaced must be
    read from the new file, whether it was deleted and recreated or renamed over."""
    src = tmp_path / "s"
    src.write_bytes(b"a" * 64)
    assert _copied(src, 64, tmp_path) == b"a" * 64
    src.unlink()
    src.write_bytes(b"b" * 64)                     # may even get the old inode number back
    assert _copied(src, 64, tmp_path) == b"b" * 64
    (tmp_path / "new").write_bytes(b"c" * 64)
    (tmp_path / "new").replace(src)                 # renamed over: another inode
    assert _copied(src, 64, tmp_path) == b"c" * 64
    with open(src, "r+b") as f:                     # rewritten in place: the same file, new bytes
        f.write(b"d" * 64)
    assert _copied(src, 64, tmp_path) == b"d" * 64


def test_at_most_a_few_sources_stay_open(tmp_path):
    files = []
    for i in range(3 * fastio._SourceFiles.KEEP):
        f = tmp_path / f"s{i}"
        f.write_bytes(bytes([i]) * 8)
        files.append(f)
        assert _copied(f, 8, tmp_path) == bytes([i]) * 8
    assert len(fastio._sources.fds) <= fastio._SourceFiles.KEEP
    fastio._sources.close_all()
    assert not fastio._sources.fds


def test_a_finished_shard_keeps_no_source_open(tiny, tmp_path):
    """A caller may delete its source right after converting: no descriptor may pin the space."""
    api.convert(tiny("ling-mini-2", "bin", 2), tmp_path / "out", to="safetensors")
    assert not fastio._sources.fds


def test_a_shard_reads_its_tensors_in_disk_order(tmp_path, monkeypatch):
    """Names whose layer order is not file order (two .bin files, filled back to front) are copied
    file by file, offset by offset; the shard still holds every tensor unchanged."""
    d = tmp_path / "m"
    d.mkdir()
    sd = {f"model.layers.{i}.w": torch.full((64,), float(i)) for i in range(6)}
    files = {"pytorch_model-00001.bin": [5, 3, 1], "pytorch_model-00002.bin": [4, 2, 0]}
    for fname, layers in files.items():
        torch.save({f"model.layers.{i}.w": sd[f"model.layers.{i}.w"] for i in layers}, d / fname)
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {f"model.layers.{i}.w": f for f, ls in files.items() for i in ls}}))
    src = open_source(d, "bin")
    copied = []
    real = fastio.copy_range
    monkeypatch.setattr(fastio, "copy_range", lambda p, off, n, fd: (copied.append((p.name, off)), real(p, off, n, fd)))
    out = tmp_path / "out"
    write_hf_dir(src, out, WriteOptions())
    assert copied == sorted(copied) and len(copied) == 6
    got = read_all_st(out)
    assert all(torch.equal(got[k], v) for k, v in sd.items())
