"""The README's "add a format" recipe, followed once: a toy format registered here, reached by the planner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ling_convert import api, converters, formats
from ling_convert.converters import converter, plan_route
from ling_convert.core.errors import RouteNotFoundError
from ling_convert.core.output import StagedOutput
from ling_convert.core.source import Source, TensorInfo
from ling_convert.formats import Format, open_source, read_config, register
from ling_convert.testing import write_tiny

INDEX = "toy.json"   # name -> [file, dtype, shape]; one raw little-endian file per tensor


# -- step 1: the format module (detect, lazy reader, writer, register) -------------------------

def detect(path: Path) -> bool:
    return (Path(path) / INDEX).is_file()


def _raw(file: Path, dtype: torch.dtype, shape: tuple[int, ...]):
    return lambda: torch.frombuffer(bytearray(file.read_bytes()), dtype=dtype).reshape(shape)


def open_toy(path: Path) -> Source:
    path = Path(path)
    infos, thunks = {}, {}
    for name, (fname, dtype, shape) in json.loads((path / INDEX).read_text()).items():
        infos[name] = TensorInfo(tuple(shape), getattr(torch, dtype))
        thunks[name] = _raw(path / fname, getattr(torch, dtype), tuple(shape))
    return Source(path=path, format="toy", config=read_config(path), infos=infos, thunks=thunks)


def write_toy(src: Source, out: Path, opts) -> Path:
    index = {}
    with StagedOutput(out, sources=src.inputs(), force=opts.force) as staged:
        for i, name in enumerate(src.keys()):
            t = src.load(name).contiguous()
            staged.write_bytes(f"{i}.raw", t.reshape(-1).view(torch.uint8).numpy().tobytes())
            index[name] = [f"{i}.raw", str(t.dtype).removeprefix("torch."), list(t.shape)]
        staged.write_json("config.json", src.config)
        staged.write_json(INDEX, index)
        return staged.commit({"format": "toy", "tensors": len(index)})


# -- step 2: the edge from an existing node -----------------------------------------------------

def st2toy(src: Source, opts: dict) -> Source:
    """HF safetensors -> toy raw dir (same names, same bytes)."""
    return src.derive(format="toy")


@pytest.fixture
def toy_registered(monkeypatch):
    formats.all_formats(), converters.all_edges()          # the shipped nodes and edges first
    monkeypatch.setattr(formats, "_FORMATS", dict(formats._FORMATS))   # undone after the test
    monkeypatch.setattr(converters, "_EDGES", dict(converters._EDGES))
    register(Format("toy", "toy raw dir (test)", detect, open_toy, write_toy, priority=10))
    converter("safetensors", "toy", lossless=True)(st2toy)


def test_no_route_to_an_unregistered_format():
    with pytest.raises(RouteNotFoundError):
        plan_route("bin", "toy")


def test_a_format_added_by_the_recipe_converts_through_the_planner(tmp_path, toy_registered):
    src = write_tiny(tmp_path / "bin", "ling-mini-2", fmt="bin")
    result = api.convert(src, tmp_path / "toy", to="toy")
    assert result.route == ["bin2st", "st2toy"]          # planned: bin -> safetensors -> toy
    back = open_source(tmp_path / "toy")                  # detected by the registered detect()
    assert back.format == "toy"
    orig = open_source(src)
    assert set(back.keys()) == set(orig.keys())
    for name in orig.keys():
        assert torch.equal(back.load(name), orig.load(name)), name
    assert back.config == orig.config


def test_a_misspelt_option_is_an_error_not_ignored(tmp_path):
    from ling_convert.core.errors import BadInputError
    src = write_tiny(tmp_path / "bin", "ling-lite", fmt="bin")
    with pytest.raises(BadInputError, match="unknown option 'outtpye'"):
        api.convert(src, tmp_path / "out.gguf", to="gguf", options={"outtpye": "q8_0"})
    assert not (tmp_path / "out.gguf").exists()
    api.convert(src, tmp_path / "ok", to="safetensors", options={"config_from": str(src)})   # a known one passes


def test_hybrid_linear_is_an_edge_the_planner_routes_to(tmp_path):
    src = write_tiny(tmp_path / "bin", "ling-lite", fmt="bin")
    assert [e.name for e in plan_route("bin", "hybrid-linear")] == ["bin2st", "to-hybrid-linear"]
    plan = api.convert(src, tmp_path / "h", to="hybrid-linear", dry_run=True, options={"layer_group_size": 1})
    assert plan.route == ["bin2st", "to-hybrid-linear"] and plan.shards and not (tmp_path / "h").exists()
