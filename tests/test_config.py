"""Config rewrites (`yarn`), the normaliser, JSON-Schema validation, `config show|diff|validate`."""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ling_convert.model.config_rewrite import apply_yarn, normalize_config, normalize_rope_scaling, remove_yarn
from ling_convert.model.config_schema import check_config, validate_config
from ling_convert.core.errors import BadInputError, ConfigSchemaError, UnsupportedError
from ling_convert.core.output import sha256_file
from ling_convert.testing import tiny_config

from conftest import MODELS, assert_one_line_error, run_subprocess

YARN4 = {"type": "yarn", "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _hashes(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file()}


def _leftovers(parent: Path, out: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == out.name or p.name.endswith(".partial")]


# ---------------------------------------------------------------- pure rewrites


@pytest.mark.parametrize("model", MODELS)
def test_apply_remove_idempotent_on_tiny_configs(model):
    cfg = tiny_config(model)
    before = copy.deepcopy(cfg)
    once = apply_yarn(cfg, 4)
    assert cfg == before, "apply_yarn mutated its input"
    assert once["rope_scaling"] == YARN4
    assert once["max_position_embeddings"] == 4 * 512
    assert apply_yarn(once, 4) == once  # idempotent: the original context is read back from rope_scaling
    assert list(apply_yarn(once, 4)["rope_scaling"]) == list(once["rope_scaling"])  # same JSON key order
    back = remove_yarn(once)
    assert back == cfg and list(back) == list(cfg)
    assert remove_yarn(back) == cfg  # removing twice is a no-op
    assert once["rope_scaling"]["type"] == "yarn"  # remove_yarn did not mutate its input either


def test_refactor_keeps_original_and_extras():
    cfg = apply_yarn(tiny_config("ling-mini-2"), 4)
    cfg["rope_scaling"]["beta_fast"] = 16
    two = apply_yarn(cfg, 2)
    assert two["rope_scaling"]["factor"] == 2.0 and two["rope_scaling"]["beta_fast"] == 16.0
    assert two["rope_scaling"]["original_max_position_embeddings"] == 512
    assert two["max_position_embeddings"] == 1024
    explicit = apply_yarn(tiny_config("ling-lite"), 2.5, original_max_position_embeddings=4096)
    assert explicit["max_position_embeddings"] == 10240
    assert explicit["rope_scaling"]["original_max_position_embeddings"] == 4096


@settings(max_examples=60, deadline=None)
@given(factor=st.floats(1.0001, 64), original=st.integers(1, 1 << 20), v5=st.booleans())
def test_yarn_properties(factor, original, v5):
    cfg = tiny_config("ling-lite", max_position_embeddings=original)
    if v5:  # transformers-5 form: everything under rope_parameters, no rope_scaling key
        del cfg["rope_scaling"], cfg["rope_theta"]
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 600000.0}
    once = apply_yarn(cfg, factor)
    assert apply_yarn(once, factor) == once
    assert remove_yarn(once) == cfg
    s = normalize_rope_scaling(once)
    assert s["rope_type"] == "yarn" and s["factor"] == factor
    assert once["max_position_embeddings"] == round(factor * original)


@pytest.mark.parametrize("raw", [
    {"rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 512}},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512.0}},
    {"rope_scaling": YARN4},
    {"rope_scaling": None, "rope_parameters": {"rope_type": "yarn", "factor": 4, "rope_theta": 6e5,
                                               "original_max_position_embeddings": 512}},
])
def test_legacy_spellings_normalise_to_one_form(raw):
    want = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    got = normalize_rope_scaling(raw)
    assert got == want and type(got["original_max_position_embeddings"]) is int
    assert normalize_config(raw)["rope_scaling"] == YARN4
    assert "rope_parameters" not in normalize_config(raw)


def test_unscaled_spellings_and_errors():
    for raw in ({}, {"rope_scaling": None}, {"rope_scaling": {"rope_type": "default"}},
                {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}):
        assert normalize_rope_scaling(raw) is None
    assert normalize_config({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})["rope_theta"] == 1e6
    with pytest.raises(BadInputError, match="disagree"):
        normalize_rope_scaling({"rope_scaling": {"type": "yarn", "rope_type": "linear", "factor": 2}})
    with pytest.raises(BadInputError, match="rope_scaling.factor"):
        normalize_rope_scaling({"rope_scaling": {"type": "yarn", "factor": "4"}})
    with pytest.raises(UnsupportedError, match="linear"):
        apply_yarn({"max_position_embeddings": 512, "rope_scaling": {"type": "linear", "factor": 2}}, 4)
    for bad in (1, 0.5, -2, "x", float("nan"), float("inf"), True, None):
        with pytest.raises(BadInputError, match="--factor"):
            apply_yarn(tiny_config("ling-lite"), bad)
    with pytest.raises(BadInputError, match="max_position_embeddings"):
        apply_yarn({"rope_scaling": None}, 4)


def test_normaliser_matches_reference():
    """One source of truth: the reference forward must read the same normalised dict."""
    ref = pytest.importorskip("ling_convert.reference.common")
    cases = [{"rope_scaling": None}, {"rope_scaling": {"type": "yarn", "factor": 4}},
             {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, apply_yarn(tiny_config("ling-lite"), 4),
             {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
             {"rope_parameters": {"rope_type": "yarn", "factor": 8, "rope_theta": 1e6,
                                  "original_max_position_embeddings": 4096}}]
    for c in cases:
        assert ref.normalize_rope_scaling(c) == normalize_rope_scaling(c), c


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("model", MODELS)
def test_tiny_configs_validate_before_and_after_yarn(model):
    cfg = tiny_config(model)
    assert check_config(cfg).endswith("bailing_moe_v2" if "2" in model else "bailing_moe")
    check_config(apply_yarn(cfg, 4))
    fp8 = {**cfg, "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                          "weight_block_size": [128, 128]}}
    check_config(fp8)


def _lines(cfg) -> list[str]:
    return [p.line() for p in validate_config(cfg)]


def test_schema_errors_name_field_and_expected_value():
    cfg = tiny_config("ling-mini-2", hidden_size="64")
    del cfg["num_experts"]
    lines = _lines(cfg)
    assert "field 'hidden_size': expected integer >= 1, got \"64\"" in lines
    assert "field 'num_experts': expected integer >= 1, missing" in lines
    bad = tiny_config("ling-mini-2", score_function="softmax", num_key_value_heads=3)
    lines = _lines(bad)
    assert "field 'score_function': expected \"sigmoid\", got \"softmax\"" in lines
    assert "field 'num_key_value_heads': expected a divisor of num_attention_heads (4), got 3" in lines
    assert _lines(tiny_config("ling-lite", architectures=["BailingMoeForCausalLM"], model_type="bailing")) == [
        "field 'model_type': expected \"bailing_moe\", got \"bailing\""]


def test_schema_checks_yarn_and_fp8_blocks():
    yarn = apply_yarn(tiny_config("ling-lite"), 4)
    stale = {**yarn, "max_position_embeddings": 512}  # factor changed by hand, context not
    assert _lines(stale) == ["field 'max_position_embeddings': expected 2048 (= rope_scaling.factor 4.0 x "
                             "original_max_position_embeddings 512), got 512"]
    no_orig = {**yarn, "rope_scaling": {"type": "yarn", "factor": 0.5}}
    lines = _lines(no_orig)
    assert "field 'rope_scaling.original_max_position_embeddings': expected integer >= 1, missing" in lines
    assert "field 'rope_scaling.factor': expected number > 1, got 0.5" in lines
    q = {**yarn, "quantization_config": {"quant_method": "fp8", "fmt": "e5m2", "weight_block_size": [128]}}
    lines = _lines(q)
    assert "field 'quantization_config.fmt': expected \"e4m3\", got \"e5m2\"" in lines
    assert "field 'quantization_config.activation_scheme': expected \"dynamic\", missing" in lines
    assert any(ln.startswith("field 'quantization_config.weight_block_size': expected array of 2 items")
               for ln in lines)
    with pytest.raises(ConfigSchemaError, match="3 problems"):
        check_config(q, "x/config.json")


# ---------------------------------------------------------------- yarn on HF dirs


def test_yarn_out_copies_everything_and_rewrites_config(tiny, tmp_path, cli):
    src = tiny("ling-mini-2")
    before = _hashes(src)
    out = tmp_path / "out"
    code, o, e = cli("yarn", src, "--factor", "4", "--out", out)
    assert code == 0, e
    assert "config.json: max_position_embeddings: 512 -> 2048" in o
    assert _hashes(src) == before, "--out touched the source"
    got = _hashes(out)
    assert {k: v for k, v in got.items() if k not in ("config.json", "ling-convert.json")} == \
           {k: v for k, v in before.items() if k != "config.json"}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg == apply_yarn(json.loads((src / "config.json").read_text()), 4)
    manifest = json.loads((out / "ling-convert.json").read_text())
    assert manifest["operation"] == "yarn" and manifest["factor"] == 4.0
    assert manifest["files"]["config.json"] == got["config.json"]
    assert [r["field"] for r in manifest["config_changes"]["config.json"]] == ["max_position_embeddings",
                                                                               "rope_scaling"]


def test_yarn_in_place_then_remove_restores_bytes(tiny, tmp_path, cli):
    d = _copy(tiny("ling-lite"), tmp_path / "m")
    (d / "ling-convert.json").write_text(json.dumps({"tool": "ling-convert", "files": {
        "config.json": sha256_file(d / "config.json")}}))
    os.chmod(d / "config.json", 0o750)
    original = (d / "config.json").read_bytes()
    weights = sha256_file(d / "model.safetensors")
    assert cli("yarn", d, "--factor", "4", "--in-place")[0] == 0
    assert json.loads((d / "config.json").read_text())["rope_scaling"] == YARN4
    assert stat.S_IMODE((d / "config.json").stat().st_mode) == 0o750
    manifest = json.loads((d / "ling-convert.json").read_text())
    assert manifest["files"]["config.json"] == sha256_file(d / "config.json")  # kept truthful
    code, o, _ = cli("yarn", d, "--factor", "4", "--in-place")
    assert code == 0 and "config.json: unchanged" in o and "nothing to do" in o
    assert cli("yarn", d, "--remove", "--in-place")[0] == 0
    assert (d / "config.json").read_bytes() == original
    assert sha256_file(d / "model.safetensors") == weights
    assert [e["operation"] for e in json.loads((d / "ling-convert.json").read_text())["edits"]] == [
        "yarn", "yarn --remove"]
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


def test_yarn_on_mindie_style_dir_rewrites_both_configs(tiny, tmp_path, cli):
    d = _copy(tiny("ling-lite"), tmp_path / "mindie")
    hf = json.loads((d / "config.json").read_text())
    mindie_cfg = {**hf, "max_position_embeddings": 256, "norm_head": True}  # the variant may differ
    (d / "config.json.bak").write_text(json.dumps(hf, indent=2))
    (d / "config.json").write_text(json.dumps(mindie_cfg, indent=2))
    for name in ("config.json", "config.json.bak"):
        os.chmod(d / name, 0o750)
    out = tmp_path / "out"
    code, o, e = cli("yarn", d, "--factor", "4", "--out", out)
    assert code == 0, e
    assert json.loads((out / "config.json.bak").read_text()) == apply_yarn(hf, 4)
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 1024
    assert stat.S_IMODE((out / "config.json.bak").stat().st_mode) == 0o750
    assert cli("yarn", d, "--factor", "4", "--in-place")[0] == 0
    assert cli("yarn", d, "--remove", "--in-place")[0] == 0
    assert json.loads((d / "config.json").read_text()) == mindie_cfg
    assert json.loads((d / "config.json.bak").read_text()) == hf


def test_validate_real_mindie_dir_after_yarn(tiny, tmp_path, cli):
    mindie = pytest.importorskip("ling_convert.formats.mindie.checkpoint")
    if not hasattr(mindie, "validate_mindie_dir"):
        pytest.skip("MindIE validator not in this tree")
    d = tmp_path / "m"
    code, _, e = cli("to-mindie", "lite", tiny("ling-lite"), d)
    assert code == 0, e
    assert cli("yarn", d, "--factor", "4", "--in-place")[0] == 0
    code, o, e = cli("config", "validate", d)
    assert code == 0, e
    assert "ok: config.json.bak" in o and "(mindie)" in o
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["rope_scaling"] == YARN4


# ---------------------------------------------------------------- GGUF


def _make_gguf(path: Path) -> dict:
    import gguf
    w = gguf.GGUFWriter(path, "bailingmoe2")
    w.add_context_length(4096)
    w.add_rope_freq_base(600000.0)
    w.add_block_count(3)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(40)])
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": rng.standard_normal((8, 32), dtype=np.float32),
               "blk.0.attn_norm.weight": rng.standard_normal(32).astype(np.float16)}
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.add_tensor("blk.0.ffn_up.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {**tensors, "blk.0.ffn_up.weight": q8}


def _kv(path: Path) -> dict:
    from gguf import GGUFReader
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


def test_gguf_rewrite_keys_and_stream_tensors(tmp_path, cli):
    from gguf import GGUFReader
    src = tmp_path / "m.gguf"
    tensors = _make_gguf(src)
    before = src.read_bytes()
    out = tmp_path / "m-yarn.gguf"
    code, o, e = cli("yarn", src, "--factor", "4", "--out", out)
    assert code == 0, e
    assert src.read_bytes() == before
    kv_old, kv_new = _kv(src), _kv(out)
    assert kv_new["bailingmoe2.rope.scaling.type"] == "yarn"
    assert kv_new["bailingmoe2.rope.scaling.factor"] == 4.0
    assert kv_new["bailingmoe2.rope.scaling.original_context_length"] == 4096
    assert kv_new["bailingmoe2.context_length"] == 16384
    untouched = {k: v for k, v in kv_new.items() if "rope.scaling" not in k and k != "bailingmoe2.context_length"}
    assert untouched == {k: v for k, v in kv_old.items() if k != "bailingmoe2.context_length"}
    r = GGUFReader(out)
    assert [t.name for t in r.tensors] == list(tensors)
    for t in r.tensors:
        assert np.asarray(t.data).tobytes() == tensors[t.name].tobytes(), t.name
    assert (tmp_path / "m-yarn.gguf.ling-convert.json").is_file()
    # In place, twice (idempotent), then --remove: the original bytes come back.
    assert cli("yarn", out, "--factor", "4", "--in-place")[1].count("unchanged") == 1
    assert cli("yarn", out, "--remove", "--in-place")[0] == 0
    assert out.read_bytes() == before
    code, o, _ = cli("config", "diff", src, out)
    assert code == 0 and "no differences" in o


def test_gguf_copy_without_copy_file_range(tmp_path, cli, monkeypatch):
    """The bounded-buffer fallback (filesystems without copy_file_range) writes the same bytes."""
    src = tmp_path / "m.gguf"
    _make_gguf(src)
    assert cli("yarn", src, "--factor", "4", "--out", tmp_path / "a.gguf")[0] == 0

    def no_copy_file_range(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    assert cli("yarn", src, "--factor", "4", "--out", tmp_path / "b.gguf")[0] == 0
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


@pytest.mark.parametrize("keep", [40, -100])
def test_gguf_validate_and_corrupt_input(tmp_path, cli, keep):
    src = tmp_path / "m.gguf"
    _make_gguf(src)
    assert cli("config", "validate", src)[0] == 0
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(src.read_bytes()[:keep])  # header cut short / tensor data cut short
    out = tmp_path / "o.gguf"
    code, _, e = cli("yarn", bad, "--factor", "4", "--out", out)
    assert_one_line_error(code, e, "bad.gguf")
    assert _leftovers(tmp_path, out) == []


# ---------------------------------------------------------------- show / diff / validate


def test_config_diff_lists_changed_fields(tiny, tmp_path, cli):
    a = tiny("ling-lite")
    b = tmp_path / "b"
    cli("yarn", a, "--factor", "4", "--out", b)
    code, o, _ = cli("config", "diff", a, b)
    assert code == 1           # like diff(1): the configs differ
    assert "changed  max_position_embeddings: 512 -> 2048" in o
    assert "changed  rope_scaling: null -> {" in o
    code, o, _ = cli("config", "diff", a, b, "--json")
    assert [r["field"] for r in json.loads(o)] == ["max_position_embeddings", "rope_scaling"]
    # Spelling-only differences vanish under --normalized.
    c = tmp_path / "c.json"
    spelled = json.loads((b / "config.json").read_text())
    del spelled["rope_scaling"]["type"]
    c.write_text(json.dumps(spelled))
    assert cli("config", "diff", b / "config.json", c)[1].startswith("removed  rope_scaling.type")
    assert cli("config", "diff", b / "config.json", c, "--normalized")[1].strip() == "no differences"


def test_config_show_normalized(tmp_path, cli):
    cfg = tiny_config("ling-mini-2")
    del cfg["rope_scaling"], cfg["rope_theta"]
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 2, "original_max_position_embeddings": 256,
                              "rope_theta": 1e6}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    code, o, _ = cli("config", "show", p, "--normalized", "--json")
    shown = json.loads(o)["configs"]["config.json"]
    assert shown["rope_scaling"] == {"type": "yarn", "rope_type": "yarn", "factor": 2.0,
                                     "original_max_position_embeddings": 256}
    assert shown["rope_theta"] == 1e6 and "rope_parameters" not in shown


def test_config_validate_cli_one_line(tiny, tmp_path, cli):
    d = _copy(tiny("ling-mini-2"), tmp_path / "m")
    assert cli("config", "validate", d)[0] == 0
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_hidden_layers"] = "3"
    del cfg["vocab_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    code, _, e = cli("config", "validate", d)
    assert_one_line_error(code, e, "field 'num_hidden_layers': expected integer >= 1, got \"3\"",
                          "field 'vocab_size': expected integer >= 1, missing")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, needle", [
    (["--factor", "1", "--in-place"], "expected a finite number > 1, got '1'"),
    (["--factor", "0.5", "--out", "{out}"], "--factor"),
    (["--factor", "-3", "--out", "{out}"], "--factor"),
    (["--factor", "four", "--out", "{out}"], "got 'four'"),
    (["--factor", "nan", "--out", "{out}"], "--factor"),
    (["--factor", "4", "--out", "{out}", "--in-place"], "exactly one of --out OUT and --in-place"),
    (["--factor", "4"], "exactly one of --out OUT and --in-place"),
    (["--in-place"], "--factor is required"),
    (["--remove", "--factor", "4", "--in-place"], "--remove takes no --factor"),
    (["--factor", "4", "--original-max-position-embeddings", "x", "--out", "{out}"], "positive integer"),
    (["--factor", "4", "--out", "{src}"], "overlaps the input"),
])
def test_bad_yarn_arguments(tiny, tmp_path, cli, args, needle):
    src = _copy(tiny("ling-lite"), tmp_path / "src")
    before = _hashes(src)
    out = tmp_path / "out"
    code, _, e = cli("yarn", src, *[a.format(out=out, src=src) for a in args])
    assert_one_line_error(code, e, needle)
    assert _hashes(src) == before
    assert _leftovers(tmp_path, out) == []


def test_missing_config_and_existing_output(tiny, tmp_path, cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, e = cli("yarn", empty, "--factor", "4", "--in-place")
    assert_one_line_error(code, e, "no config.json")
    code, _, e = cli("yarn", tmp_path / "nope", "--factor", "4", "--in-place")
    assert_one_line_error(code, e, "does not exist")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    code, _, e = cli("yarn", tiny("ling-lite"), "--factor", "4", "--out", out)
    assert_one_line_error(code, e, "not empty")
    assert (out / "keep").read_text() == "x" and not (tmp_path / ".out.partial").exists()
    assert cli("yarn", tiny("ling-lite"), "--factor", "4", "--out", out, "--force")[0] == 0
    assert not (out / "keep").exists() and json.loads((out / "config.json").read_text())["rope_scaling"] == YARN4
    broken = _copy(tiny("ling-lite"), tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    code, _, e = cli("yarn", broken, "--factor", "4", "--in-place")
    assert_one_line_error(code, e, "not valid JSON")
    # A MindIE dir whose second file cannot take YaRN: named, and neither file is touched.
    m = _copy(tiny("ling-lite"), tmp_path / "m")
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json.bak").write_text(json.dumps({**cfg, "rope_scaling": {"type": "linear", "factor": 2}}))
    before = _hashes(m)
    code, _, e = cli("yarn", m, "--factor", "4", "--in-place")
    assert_one_line_error(code, e, "config.json.bak", "'linear' RoPE scaling")
    assert _hashes(m) == before
    del cfg["max_position_embeddings"]
    (m / "config.json").write_text(json.dumps(cfg))
    code, _, e = cli("yarn", m, "--factor", "4", "--in-place")
    assert_one_line_error(code, e, "m/config.json", "max_position_embeddings")


def test_bad_input_no_traceback_subprocess(tiny, tmp_path):
    src = tiny("ling-lite")
    out = tmp_path / "out"
    r = run_subprocess("yarn", src, "--factor", "abc", "--out", out)
    assert_one_line_error(r.returncode, r.stderr, "--factor")
    assert _leftovers(tmp_path, out) == []


# ---------------------------------------------------------------- the reference honours the rewrite


@pytest.mark.parametrize("model", MODELS)
def test_reference_logits_follow_yarn(tiny, tmp_path, model, cli):
    verify = pytest.importorskip("ling_convert.verify.logits")
    src = tiny(model)
    out = tmp_path / "yarn"
    assert cli("yarn", src, "--factor", "4", "--out", out)[0] == 0
    rep = verify.verify(src, out, seq_len=16)
    assert not rep.exact and rep.max_abs > 1e-3  # RoPE was rebuilt from the rewritten config
    assert cli("yarn", out, "--remove", "--in-place")[0] == 0
    assert verify.verify(src, out, seq_len=16).exact  # and back: bit-exact again
