"""Foundation: bin -> safetensors, sharded atomic writer, manifest, route planner, inspect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ling_convert import api
from ling_convert.converters import plan_route
from ling_convert.core.errors import RouteNotFoundError
from ling_convert.formats import open_source
from ling_convert.formats.safetensors import parse_size, plan_shards
from ling_convert.core.output import sha256_file
from ling_convert.core.source import TensorInfo
from ling_convert.testing import TINY_MODELS, tiny_state, tiny_config

from conftest import MODELS, assert_one_line_error


def read_all_st(d: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("shards", [1, 3])
def test_bin2st_bit_exact(tiny, tmp_path, model, shards):
    src = tiny(model, "bin", shards)
    out = tmp_path / "out"
    code = api.convert(src, out, to="safetensors", max_shard_size="100KB").output
    assert code == out
    got = read_all_st(out)
    want = dict(tiny_state(tiny_config(model)))
    assert set(got) == set(want)
    for k, t in want.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
    # expert_bias stays fp32 through the conversion.
    assert all(got[k].dtype == torch.float32 for k in got if k.endswith("expert_bias"))


@pytest.mark.parametrize("model", MODELS)
def test_index_valid_and_total_size(tiny, tmp_path, model):
    out = tmp_path / "out"
    api.convert(tiny(model, "bin", 2), out, max_shard_size="150KB")
    idx = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    n = len(shards)
    assert n > 1 and [s.name for s in shards] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    total = 0
    for s in shards:
        with safe_open(s, "pt") as h:
            assert h.metadata() == {"format": "pt"}
            for k in h.keys():
                assert idx["weight_map"][k] == s.name
                t = h.get_tensor(k)
                total += t.numel() * t.element_size()
    assert idx["metadata"]["total_size"] == total
    assert set(idx["weight_map"]) == set(open_source(out).keys())


def test_shards_respect_budget_and_layer_order():
    infos = {f"model.layers.{i}.w": TensorInfo((10,), torch.float32) for i in range(12)}
    shards = plan_shards(infos, 120)  # 40 bytes each -> 3 per shard
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    assert shards[0] == ["model.layers.0.w", "model.layers.1.w", "model.layers.2.w"]
    assert shards[3][-1] == "model.layers.11.w"  # natural, not lexicographic, order
    big = {"a": TensorInfo((100,), torch.float32), "b": TensorInfo((1,), torch.float32)}
    assert plan_shards(big, 10) == [["a"], ["b"]]  # an oversized tensor gets its own shard


def test_parse_size_decimal_like_hub():
    assert parse_size("5GB") == 5_000_000_000
    assert parse_size("500MB") == 500_000_000
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size(1234) == 1234


def test_manifest_and_aux_files(tiny, tmp_path):
    src = tiny("ling-mini-2", "bin", 2)
    out = tmp_path / "out"
    api.convert(src, out, max_shard_size="200KB")
    man = json.loads((out / "ling-convert.json").read_text())
    assert man["route"] == ["bin2st"] and man["source"]["format"] == "bin"
    assert man["source"]["path"] == str(src)
    # Every file written is hashed, and the hashes are right.
    written = {p.name for p in out.iterdir()} - {"ling-convert.json"}
    assert set(man["files"]) == written
    for name, sha in man["files"].items():
        assert sha256_file(out / name) == sha
    # Tokenizer and generation config copied verbatim and listed.
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
        assert name in man["aux_copied"]
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert man["config_changes"] == {}
    assert not list(tmp_path.glob(".*partial"))


def test_refuses_nonempty_output_unless_force(tiny, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    code, _, err = cli("bin2st", tiny("ling-lite", "bin"), out)
    assert_one_line_error(code, err, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "user data"
    code, _, err = cli("bin2st", tiny("ling-lite", "bin"), out, "--force")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_dry_run_reads_no_tensor_data(tiny, tmp_path, monkeypatch):
    import ling_convert.formats.hf_bin as hb
    calls = []
    monkeypatch.setattr(hb, "_read", lambda loc: calls.append(loc))
    r = api.convert(tiny("ling-lite", "bin", 2), tmp_path / "o", dry_run=True, max_shard_size="100KB")
    assert r.dry_run and r.route == ["bin2st"] and len(r.shards) >= 2
    assert sum(s["bytes"] for s in r.shards) == r.bytes
    assert calls == [] and not (tmp_path / "o").exists()


def test_route_planner():
    assert [e.name for e in plan_route("bin", "safetensors")] == ["bin2st"]
    assert plan_route("safetensors", "safetensors") == []
    with pytest.raises(RouteNotFoundError, match="no conversion route"):
        plan_route("safetensors", "bin")


@pytest.mark.parametrize("model", MODELS)
def test_inspect_counts(tiny, model, cli):
    code, out, err = cli("inspect", tiny(model, "bin", 2), "--json")
    assert code == 0, err
    info = json.loads(out)
    cfg = TINY_MODELS[model]
    assert info["architecture"] == cfg["architectures"][0]
    assert info["layers"] == cfg["num_hidden_layers"] and info["experts"] == cfg["num_experts"]
    assert info["missing_tensors"] == [] and info["extra_tensors"] == []
    total = sum(t.numel() for _, t in tiny_state(tiny_config(model)))
    assert info["parameters"]["total"] == total
    assert info["parameters"]["activated"] < info["parameters"]["main"]
    assert info["mtp_layers"] == int(cfg.get("num_nextn_predict_layers") or 0)


def test_formats_command_lists_graph(cli):
    code, out, _ = cli("formats", "--json")
    data = json.loads(out)
    assert code == 0 and "bin" in data["formats"] and "safetensors" in data["formats"]
    assert {"edge": "bin2st", "from": "bin", "to": "safetensors", "lossless": True} in data["edges"]


def test_bin_views_shared_storage_and_strides(tmp_path):
    """Tied weights, slices at an offset and transposed views read back exactly."""
    from ling_convert.formats.hf_bin import open_source as open_bin
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    sd = {"tied.a": base, "tied.b": base, "slice": base[2:4], "col": base[:, 3], "t": base.t(),
          "other": torch.randn(3, 3).to(torch.bfloat16), "empty": torch.empty(0, 4)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    src = open_bin(tmp_path)
    for k, v in sd.items():
        got = src.load(k)
        assert got.dtype == v.dtype and torch.equal(got, v.contiguous()), k
