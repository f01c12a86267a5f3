"""Bad input gets one line, exit 2, no traceback, nothing left behind; no pickle code runs."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error, run_subprocess


def _leftovers(tmp: Path, out: Path) -> list[str]:
    return [p.name for p in tmp.iterdir() if p.name == out.name or p.name.endswith(".partial")]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _check_fails(tmp_path, src, *needles, cmd="convert"):
    out = tmp_path / "out"
    r = run_subprocess(cmd, src, out)
    assert_one_line_error(r.returncode, r.stderr, *needles)
    assert _leftovers(tmp_path, out) == []
    return r


def test_truncated_safetensors(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "safetensors"), tmp_path / "src")
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    _check_fails(tmp_path, src, "model.safetensors", "past the end")


def test_header_length_past_eof(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "safetensors"), tmp_path / "src")
    f = src / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = struct.pack("<Q", len(data) * 2)
    f.write_bytes(bytes(data))
    _check_fails(tmp_path, src, "header length")


def test_offsets_past_eof(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "safetensors"), tmp_path / "src")
    f = src / "model.safetensors"
    data = f.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    b, e = header[name]["data_offsets"]
    header[name]["data_offsets"] = [b + 10**9, e + 10**9]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    _check_fails(tmp_path, src, name)


def test_index_names_missing_shard(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "safetensors", 2), tmp_path / "src")
    (src / "model-00002-of-00002.safetensors").unlink()
    _check_fails(tmp_path, src, "model-00002-of-00002.safetensors", "does not exist")


@pytest.mark.parametrize("evil", ["../x.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_path_escape(tiny, tmp_path, evil):
    src = _copy(tiny("ling-lite", "safetensors", 2), tmp_path / "src")
    (tmp_path / "x.safetensors").write_bytes((src / "model-00001-of-00002.safetensors").read_bytes())
    idx = json.loads((src / "model.safetensors.index.json").read_text())
    first = next(iter(idx["weight_map"]))
    idx["weight_map"][first] = evil
    (src / "model.safetensors.index.json").write_text(json.dumps(idx))
    _check_fails(tmp_path, src, "outside its directory")


def _evil_bin(path: Path, canary: Path) -> None:
    """A torch zip whose pickle asks for os.system: the loader must refuse it unexecuted."""
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {canary}",))
    buf = io.BytesIO()
    torch.save({"model.norm.weight": torch.ones(2)}, buf)
    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps({"model.norm.weight": Evil()}, protocol=2)
            zout.writestr(item, data)


def test_malicious_pickle_never_runs(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "bin"), tmp_path / "src")
    canary = tmp_path / "CANARY"
    _evil_bin(src / "pytorch_model.bin", canary)
    r = _check_fails(tmp_path, src, "pytorch_model.bin", "nothing was executed")
    assert not canary.exists()
    # inspect reads the same file: refused the same way.
    r = run_subprocess("inspect", src)
    assert r.returncode == 2 and not canary.exists() and "Traceback" not in r.stderr


def test_truncated_bin(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "bin"), tmp_path / "src")
    f = src / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:3000])
    _check_fails(tmp_path, src, "pytorch_model.bin")


def test_unknown_architecture(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "bin"), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    _check_fails(tmp_path, src, "LlamaForCausalLM", "BailingMoeV2ForCausalLM")


def test_model_type_alone_does_not_decide(tiny, tmp_path):
    # v2 configs say model_type "bailing_moe": dispatch must follow `architectures`.
    from ling_convert.model.arch import detect_architecture
    cfg = json.loads((tiny("ling-mini-2", "safetensors") / "config.json").read_text())
    assert cfg["model_type"] == "bailing_moe"
    assert detect_architecture(cfg).name == "bailing_moe_v2"


def test_missing_config_and_tensor(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "safetensors", 2), tmp_path / "src")
    (src / "config.json").unlink()
    _check_fails(tmp_path, src, "config.json is missing")
    src2 = _copy(tiny("ling-lite", "safetensors", 2), tmp_path / "src2")
    cfg = json.loads((src2 / "config.json").read_text())
    cfg["num_hidden_layers"] = 3
    (src2 / "config.json").write_text(json.dumps(cfg))
    _check_fails(tmp_path, src2, "model.layers.2.")


def test_config_wrong_type(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "bin"), tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    cfg["hidden_size"] = "sixty-four"
    (src / "config.json").write_text(json.dumps(cfg))
    _check_fails(tmp_path, src, "hidden_size", "number")


def test_debug_env_shows_traceback(tiny, tmp_path):
    src = _copy(tiny("ling-lite", "bin"), tmp_path / "src")
    (src / "config.json").write_text("{not json")
    r = run_subprocess("convert", src, tmp_path / "out", env={"LING_CONVERT_DEBUG": "1"})
    assert r.returncode == 2 and "Traceback" in r.stderr and "config.json" in r.stderr
