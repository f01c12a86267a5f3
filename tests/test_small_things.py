"""Small things users hit: `config diff` exit codes, --dry-run on to-gguf and yarn, 0 refused alike
for --block-size and --workers, yarn on a MindIE dir, MindIE eos/pad ids from the tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest

import dcp_fixtures as fx
from conftest import assert_one_line_error

from ling_convert import api

SERVICE = "mindie-service/config.json"


def _cfg(d):
    return json.loads((d / "config.json").read_text())


def test_config_diff_exits_1_when_configs_differ(cli, tiny):
    code, out, _ = cli("config", "diff", tiny("ling-lite"), tiny("ling-lite", "bin"))
    assert (code, out.strip()) == (0, "no differences")
    code, out, _ = cli("config", "diff", tiny("ling-lite"), tiny("ling-plus"))
    assert code == 1 and "num_attention_heads" in out
    code, out, _ = cli("config", "diff", tiny("ling-lite"), tiny("ling-plus"), "--json")
    assert code == 1 and json.loads(out)


def test_to_gguf_and_yarn_dry_run_write_nothing(cli, tiny, tmp_path):
    code, out, err = cli("to-gguf", tiny("ling-lite"), tmp_path / "m.gguf", "--outtype", "q8_0", "--dry-run")
    assert code == 0, err
    assert "safetensors -> to-gguf" in out and "dry run" in out and not (tmp_path / "m.gguf").exists()
    src = shutil.copytree(tiny("ling-lite"), tmp_path / "src")
    before = (src / "config.json").read_bytes()
    code, out, err = cli("yarn", src, "--factor", "4", "--dry-run")
    assert code == 0, err
    assert "max_position_embeddings" in out and "dry run: nothing written" in out
    assert (src / "config.json").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("args", [("quantize", "{st}", "{out}", "--workers", "0"),
                                  ("dequantize", "{fp8}", "{out}", "--workers", "0"),
                                  ("dcp2st", "{dcp}", "{out}", "--workers", "0")])
def test_workers_0_is_refused_everywhere(cli, tiny, tmp_path, args):
    fp8 = api.convert(tiny("ling-lite"), tmp_path / "fp8", to="fp8").output
    dcp = fx.write_dcp(tmp_path / "dcp", fx.megatron_state("ling-mini-2", rows=384), fx.single)
    fx.write_common(dcp, fx.megatron_args("ling-mini-2"))
    paths = {"st": tiny("ling-lite"), "fp8": fp8, "dcp": dcp, "out": tmp_path / "out"}
    code, _, err = cli(*(a.format(**paths) for a in args))
    assert_one_line_error(code, err, "--workers 0 must be at least 1")
    assert not (tmp_path / "out").exists()


def test_block_size_0_is_refused(cli, tiny, tmp_path):
    code, _, err = cli("quantize", tiny("ling-lite"), tmp_path / "out", "--block-size", "0")
    assert_one_line_error(code, err, "block size 0 must be positive")


@pytest.fixture
def mindie_dir(tiny, tmp_path):
    src = shutil.copytree(tiny("ling-lite"), tmp_path / "hf")
    cfg = _cfg(src)
    for k in ("eos_token_id", "pad_token_id"):
        cfg.pop(k)
    (src / "config.json").write_text(json.dumps(cfg))
    return api.convert(src, tmp_path / "mindie", to="mindie", options={"variant": "lite"}).output


def test_mindie_config_takes_eos_pad_from_the_tokenizer(mindie_dir, tiny):
    want = _cfg(tiny("ling-lite"))["eos_token_id"]         # <|endoftext|>, as tokenizer_config.json names it
    cfg = _cfg(mindie_dir)
    assert cfg["eos_token_id"] == cfg["pad_token_id"] == want != 100001
    notes = json.loads((mindie_dir / "ling-convert.json").read_text())
    assert "set eos_token_id" in json.dumps(notes)


def test_yarn_on_a_mindie_dir_scales_service_sequence_lengths(cli, mindie_dir, tmp_path):
    dep = lambda d: json.loads((d / SERVICE).read_text())["BackendConfig"]["ModelDeployConfig"]  # noqa: E731
    before, mpe = dep(mindie_dir), _cfg(mindie_dir)["max_position_embeddings"]
    code, out, err = cli("yarn", mindie_dir, "--factor", "4", "--out", tmp_path / "y4")
    assert code == 0, err
    after = dep(tmp_path / "y4")
    assert _cfg(tmp_path / "y4")["max_position_embeddings"] == 4 * mpe
    assert after["maxSeqLen"] == min(4 * before["maxSeqLen"], 4 * mpe) > before["maxSeqLen"]
    assert after["maxInputTokenLen"] == min(4 * before["maxInputTokenLen"], after["maxSeqLen"])
    assert SERVICE in out
    code, _, err = cli("yarn", tmp_path / "y4", "--remove", "--out", tmp_path / "back")
    assert code == 0, err
    assert dep(tmp_path / "back") == before
