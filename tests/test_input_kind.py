"""A command given the wrong kind of input says what the input really is and which command fits;
`convert` and `config show` take --config-from for a Megatron DCP without a usable config."""

from __future__ import annotations

import json

import pytest

import dcp_fixtures as fx
from conftest import assert_one_line_error

from ling_convert import api


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    from ling_convert.testing import write_tiny
    st = write_tiny(root / "st", "ling-lite")
    bin_ = write_tiny(root / "bin", "ling-lite", fmt="bin")
    gguf = api.convert(st, root / "m.gguf", to="gguf").output
    v1 = fx.write_dcp(root / "dcp-v1", fx.megatron_state("ling-lite", rows=384), fx.single)   # no config, no args
    v2 = fx.write_dcp(root / "dcp-v2", fx.megatron_state("ling-mini-2", rows=384), fx.single)
    fx.write_common(v2, fx.megatron_args("ling-mini-2"))
    return {"st": st, "bin": bin_, "gguf": gguf, "dcp-v1": v1, "dcp-v2": v2, "root": root}


@pytest.mark.parametrize("cmd, src, needles", [
    ("bin2st", "nowhere", ["nowhere: path does not exist"]),
    ("bin2st", "st", ["already a safetensors checkpoint, nothing to convert", "`ling-convert quantize`", "st2dcp"]),
    ("bin2st", "gguf", ["this is a gguf checkpoint, not bin", "`ling-convert from-gguf`"]),
    ("dcp2st", "st", ["already a safetensors checkpoint"]),
    ("dcp2st", "bin", ["this is a bin checkpoint, not dcp", "`ling-convert bin2st`"]),
    ("from-gguf", "dcp-v2", ["this is a dcp checkpoint, not gguf", "`ling-convert dcp2st`"]),
    ("from-gguf", "root", ["a directory, not a GGUF file", "m.gguf"]),
    ("from-mindie", "bin", ["this is a bin checkpoint, not mindie", "`ling-convert bin2st`"]),
    ("dequantize", "st", ["already a safetensors checkpoint"]),
])
def test_wrong_kind_of_input_is_named(cli, kinds, tmp_path, cmd, src, needles):
    path = kinds.get(src, tmp_path / src)
    code, out, err = cli(cmd, path, tmp_path / "out")
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_convert_dcp_to_gguf_with_config_from(cli, kinds, tiny, tmp_path):
    code, _, err = cli("convert", kinds["dcp-v1"], tmp_path / "a.gguf", "--to", "gguf")
    assert_one_line_error(code, err, "--config-from")
    code, out, err = cli("convert", kinds["dcp-v1"], tmp_path / "a.gguf", "--to", "gguf",
                         "--config-from", tiny("ling-lite"))
    assert code == 0, err
    assert "dcp -> dcp2st -> to-gguf" in out
    assert api.inspect_checkpoint(tmp_path / "a.gguf")["architecture"] == "BailingMoeForCausalLM"


def test_config_show_of_a_dcp(cli, kinds, tiny):
    code, _, err = cli("config", "show", kinds["dcp-v1"])
    assert_one_line_error(code, err, "no config", "--config-from")
    code, out, err = cli("config", "show", kinds["dcp-v1"], "--config-from", tiny("ling-lite"), "--json")
    assert code == 0, err
    (name, cfg), = json.loads(out)["configs"].items()
    assert cfg == json.loads((tiny("ling-lite") / "config.json").read_text())
    code, out, err = cli("config", "show", kinds["dcp-v2"], "--json")
    assert code == 0, err
    (name, cfg), = json.loads(out)["configs"].items()
    assert "common.pt args" in name and cfg["architectures"] == ["BailingMoeV2ForCausalLM"]
