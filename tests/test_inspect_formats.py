"""`inspect` reports total and activated parameters and per-dtype tensors and bytes for every
format it reads, counting the model each one holds (FP8 scales, GGUF stacking, Megatron layout)."""

from __future__ import annotations

import json

import pytest

import dcp_fixtures as fx

from ling_convert import api


@pytest.fixture(scope="module")
def lite_formats(tmp_path_factory, tiny):
    root, st = tmp_path_factory.mktemp("fmts"), tiny("ling-lite")
    out = {"safetensors": st, "bin": tiny("ling-lite", "bin")}
    for to, name, opts in (("fp8", "fp8", {}), ("gguf", "q8.gguf", {"outtype": "q8_0"}), ("dcp", "dcp", {}),
                           ("mindie", "mindie", {"variant": "lite"})):
        out[to] = api.convert(st, root / name, to=to, options=opts).output
    return out


@pytest.mark.parametrize("fmt", ["bin", "fp8", "gguf", "dcp", "mindie"])
def test_parameters_and_dtypes_for_every_format(lite_formats, cli, fmt):
    ref = api.inspect_checkpoint(lite_formats["safetensors"])
    code, out, err = cli("inspect", lite_formats[fmt], "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["format"] == fmt
    assert info["parameters"] == ref["parameters"] and info["parameters"]["activated"] < info["parameters"]["total"]
    assert sum(d["tensors"] for d in info["dtypes"].values()) == info["tensors"]
    assert sum(d["bytes"] for d in info["dtypes"].values()) == info["bytes"]
    if fmt == "fp8":
        assert info["dtypes"]["float8_e4m3fn"]["tensors"] > 0
    if fmt == "gguf":   # the stored ggml types and their bytes in the file, not the dequantised ones
        assert set(info["dtypes"]) == {"F32", "Q8_0"}
        assert info["bytes"] < ref["bytes"] * 0.6
    code, out, err = cli("inspect", lite_formats[fmt])
    assert code == 0, err
    assert "activated" in out and " tensors, " in out and "KB" in out


def test_megatron_dcp_counts_the_hf_model(tmp_path, tiny, cli):
    src = fx.write_dcp(tmp_path / "dcp", fx.megatron_state("ling-mini-2", rows=384), fx.expert_parallel)
    fx.write_common(src, fx.megatron_args("ling-mini-2"))
    ref = api.inspect_checkpoint(tiny("ling-mini-2"))
    info = api.inspect_checkpoint(src)
    assert info["parameters"] == ref["parameters"] and info["parameters"]["mtp"] > 0   # padding rows trimmed
