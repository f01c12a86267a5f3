"""Every metadata-only path on header-true, data-sparse checkpoints at real published shapes.

Tiny models have tens of tensors, so a cost that grows with the tensor count never shows
there. These checkpoints (ling_convert/testing_shapes.py) carry the real names, shapes and
dtypes of Ling-mini-2.0 (15,596 tensors in 7 shards), Ring-mini-linear-2.0 and Ling-lite, with
the data left as file holes. Timing lives in benchmarks/bench_shapes.py; here the structural
checks count the per-checkpoint work instead (it must not be redone per tensor).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ling_convert import api
from ling_convert.cli import main
from ling_convert.converters import plan_route
from ling_convert.core import source as source_mod
from ling_convert.formats import safetensors as st
from ling_convert.formats.safetensors import reader as st_reader
from ling_convert.model import arch as arch_mod
from ling_convert.testing_shapes import published_tensor_count, write_sparse

MINI, LINEAR, LITE = "ling-mini-2.0", "ring-mini-linear-2.0", "ling-lite"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return {m: write_sparse(root / m, m) for m in (MINI, LINEAR, LITE)}


def _cli(args, capsys) -> str:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    assert code == 0, cap.err[-2000:]
    return cap.out


def test_fixture_holds_the_published_tensors_as_holes(shapes):
    d = shapes[MINI]
    shards = sorted(d.glob("*.safetensors"))
    assert len(shards) == 7
    src = api.open_checkpoint(d)
    assert len(src.infos) == published_tensor_count(MINI) == 15596
    assert src.infos["model.layers.5.mlp.experts.255.down_proj.weight"].shape == (2048, 512)
    assert str(src.infos["model.layers.5.mlp.gate.expert_bias"].dtype) == "torch.float32"
    apparent = sum(p.stat().st_size for p in shards)
    on_disk = sum(p.stat().st_blocks * 512 for p in shards)
    assert apparent > 30e9 and on_disk < 50e6       # 34 GB of shapes, a few MB of headers


@pytest.mark.parametrize("model", [MINI, LINEAR, LITE])
def test_inspect_and_config_validate(shapes, model, capsys):
    info = json.loads(_cli(["inspect", shapes[model], "--json"], capsys))
    assert info["tensors"] == published_tensor_count(model)
    assert info["missing_tensors"] == [] and info["extra_tensors"] == []
    if model != LINEAR:          # no config schema for the hybrid-linear architectures yet
        assert "ok" in _cli(["config", "validate", shapes[model]], capsys)


DRY_RUNS = [
    ("convert --to fp8", lambda s, o: ["convert", s, o, "--to", "fp8", "--dry-run"]),
    ("convert --to gguf", lambda s, o: ["convert", s, o, "--to", "gguf", "--dry-run"]),
    ("convert --to dcp", lambda s, o: ["convert", s, o, "--to", "dcp", "--dry-run"]),
    ("convert --to safetensors", lambda s, o: ["convert", s, o, "--to", "safetensors", "--dry-run"]),
    ("quantize", lambda s, o: ["quantize", s, o, "--dry-run"]),
    ("quantize --scale-fmt ling", lambda s, o: ["quantize", s, o, "--scale-fmt", "ling", "--dry-run"]),
    ("st2dcp", lambda s, o: ["st2dcp", s, o, "--dry-run"]),
]


@pytest.mark.parametrize("label,argv", DRY_RUNS, ids=[d[0] for d in DRY_RUNS])
def test_every_dry_run_on_ling_mini_shapes(shapes, tmp_path, capsys, label, argv):
    out = tmp_path / "out"
    text = _cli(argv(shapes[MINI], out), capsys)
    assert "dry run" in text and not out.exists()


def test_dry_runs_of_the_hybrid_and_mindie_edges(shapes, tmp_path, capsys):
    out = tmp_path / "out"
    assert "dry run" in _cli(["to-hybrid-linear", shapes[MINI], out, "--dry-run"], capsys)
    _cli(["to-mindie", "lite", shapes[LITE], out, "--fold-norm-head", "--dry-run"], capsys)
    # hybrid-linear: FP8, DCP and GGUF refuse it in one line (no policy / key rules / llama.cpp arch yet)
    assert "dry run" in _cli(["convert", shapes[LINEAR], out, "--to", "safetensors", "--dry-run"], capsys)
    assert not out.exists()


def test_route_planning(shapes):
    src = api.open_checkpoint(shapes[MINI])
    assert src.format == "safetensors"
    assert [e.name for e in plan_route(src.format, "dcp")] == ["st2dcp"]
    assert [e.name for e in plan_route("fp8", "gguf")] == ["dequantize", "to-gguf"]
    lazy, route = api.prepare(shapes[MINI], "gguf")
    assert [e.name for e in route] == ["to-gguf"] and len(lazy.infos) < 400   # experts stacked per layer


def test_per_checkpoint_work_is_not_redone_per_tensor(shapes, monkeypatch):
    """inspect rebuilt the expected-name list for every tensor (313 s on these shapes); the index
    checked a shard's path once per tensor. Both now happen once per checkpoint / per shard."""
    calls = {"expected": 0, "contained": 0}
    expected, contained = arch_mod.Architecture.expected_names, st_reader.contained

    def count_expected(self, cfg):
        calls["expected"] += 1
        return expected(self, cfg)

    def count_contained(*a, **k):
        calls["contained"] += 1
        return contained(*a, **k)
    monkeypatch.setattr(arch_mod.Architecture, "expected_names", count_expected)
    monkeypatch.setattr(st_reader, "contained", count_contained)
    info = api.inspect_checkpoint(shapes[MINI])
    assert info["missing_tensors"] == [] and info["extra_tensors"] == []
    assert calls["expected"] <= 2
    assert calls["contained"] <= 7


def test_sizes_are_computed_once_per_tensor(shapes, monkeypatch):
    """Planning sums sizes for every tensor several times; each TensorInfo computes its size once."""
    src = api.open_checkpoint(shapes[MINI])
    seen = {"prod": 0}
    prod = source_mod.math.prod

    def counting_prod(shape):
        seen["prod"] += 1
        return prod(shape)
    monkeypatch.setattr(source_mod.math, "prod", counting_prod)
    infos = {n: source_mod.TensorInfo(i.shape, i.dtype) for n, i in src.infos.items()}
    built = seen["prod"]
    for _ in range(3):
        list(st.plan_shards(infos, 5 * 10**9))
    assert seen["prod"] == built
