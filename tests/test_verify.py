"""`verify`: exact on lossless routes, and catches each deliberately wrong conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ling_convert.testing import tiny_config, tiny_state, write_tokenizer
from ling_convert.verify.logits import verify

from conftest import MODELS, assert_one_line_error


def write_variant(out: Path, model: str, edit=None, cfg_edit=None) -> Path:
    """The tiny model with `edit(state)` applied to its tensors and `cfg_edit(cfg)` to its config."""
    cfg = tiny_config(model)
    state = dict(tiny_state(cfg))
    if edit:
        edit(state)
    if cfg_edit:
        cfg_edit(cfg)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    write_tokenizer(out, cfg)
    return out


@pytest.mark.parametrize("model", MODELS)
def test_lossless_route_is_exact(tiny, model, cli):
    code, out, err = cli("verify", tiny(model, "bin", 2), tiny(model, "safetensors", 1), "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["passed"] and rep["exact"] and rep["max_abs"] == 0.0 and rep["edge_class"] == "exact"
    assert rep["top1"] == 1.0 and rep["kl_last"] == 0.0


def _swap_experts(s):
    for p in ("gate_proj", "up_proj", "down_proj"):
        a, b = f"model.layers.1.mlp.experts.0.{p}.weight", f"model.layers.1.mlp.experts.1.{p}.weight"
        s[a], s[b] = s[b], s[a]


def _drop_bias(s):
    for k in [k for k in s if k.endswith("expert_bias")]:
        s[k] = torch.zeros_like(s[k])


def _permute_qk_halves(s):
    # Swap the two rotate-half halves of every Q and K head (a classic converter bug).
    cfg = tiny_config("ling-lite")
    d, nh, nkv = 16, cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for k in [k for k in s if k.endswith("query_key_value.weight")]:
        w = s[k].clone()
        for h in range(nh + nkv):
            rows = w[h * d:(h + 1) * d]
            w[h * d:(h + 1) * d] = torch.cat([rows[d // 2:], rows[:d // 2]])
        s[k] = w


def _perturb_one(s):
    k = "model.layers.1.attention.dense.weight"
    s[k] = (s[k].float() + 1e-3 * torch.randn(s[k].shape, generator=torch.Generator().manual_seed(0))).to(s[k].dtype)


NEGATIVE = {
    "two experts swapped": ("ling-lite", _swap_experts, None),
    "expert_bias dropped": ("ling-mini-2", _drop_bias, None),
    "norm_head skipped": ("ling-lite", None, lambda c: c.update(norm_head=False)),
    "wrong rotary dim": ("ling-mini-2", None, lambda c: c.update(partial_rotary_factor=1.0)),
    "Q/K halves permuted": ("ling-lite", _permute_qk_halves, None),
    "one tensor perturbed by 1e-3": ("ling-lite", _perturb_one, None),
}


@pytest.mark.parametrize("case", list(NEGATIVE))
def test_negative_controls_caught(tiny, tmp_path, case, cli):
    model, edit, cfg_edit = NEGATIVE[case]
    bad = write_variant(tmp_path / "bad", model, edit, cfg_edit)
    code, out, err = cli("verify", tiny(model, "safetensors"), bad, "--json")
    rep = json.loads(out)
    assert code == 1 and not rep["passed"] and not rep["exact"], (case, rep)


def test_control_variant_without_edit_passes(tiny, tmp_path):
    # The negative-control writer itself is faithful: no edit -> exact.
    same = write_variant(tmp_path / "same", "ling-mini-2")
    assert verify(tiny("ling-mini-2", "safetensors"), same).exact


def test_layers_and_mtp(tiny, tmp_path):
    rep = verify(tiny("ling-mini-2", "bin"), tiny("ling-mini-2", "safetensors"), layers=2, mtp=False)
    assert rep.compared == "hidden@2" and rep.exact
    rep = verify(tiny("ling-mini-2", "bin"), tiny("ling-mini-2", "safetensors"), mtp=True)
    assert rep.exact and set(rep.mtp) == {"mtp0"} and rep.mtp["mtp0"]["exact"]

    def edit_mtp(s):
        s["model.layers.3.eh_proj.weight"] = s["model.layers.3.eh_proj.weight"] * 2
    bad = write_variant(tmp_path / "mtpbad", "ling-mini-2", edit_mtp)
    assert verify(tiny("ling-mini-2", "safetensors"), bad, weights=False).exact   # MTP never feeds the logits
    rep = verify(tiny("ling-mini-2", "safetensors"), bad)                          # but the weights pass sees it
    assert not rep.passed and "model.layers.3.eh_proj.weight" in rep.failure
    assert not verify(tiny("ling-mini-2", "safetensors"), bad, mtp=True).passed


def test_single_checkpoint_summary(tiny, cli):
    code, out, err = cli("verify", tiny("ling-lite", "safetensors"), "--json", "--tokens", "1,2,3")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["summary"]["shape"] == [1, 3, 320] and rep["summary"]["finite"]


def test_single_checkpoint_with_nonfinite_logits_fails(tmp_path, cli):
    def poison(s):
        s["model.norm.weight"] = s["model.norm.weight"].clone()
        s["model.norm.weight"][0] = float("nan")
    bad = write_variant(tmp_path / "nan", "ling-lite", poison)
    code, out, _ = cli("verify", bad, "--tokens", "1,2,3")
    assert code == 1 and "NaN or Inf" in out


def test_tol_override(tiny, tmp_path, cli):
    bad = write_variant(tmp_path / "bad", "ling-lite", _perturb_one)
    # --tol loosens the logits pass only; the weights pass still sees the perturbed tensor.
    code, out, _ = cli("verify", tiny("ling-lite", "safetensors"), bad, "--json", "--tol", "kl=1e-2,top1=0.5",
                       "--logits-only")
    assert code == 0 and json.loads(out)["passed"]
    code, out, _ = cli("verify", tiny("ling-lite", "safetensors"), bad, "--json", "--tol", "kl=1e-2,top1=0.5")
    assert code == 1 and not json.loads(out)["weights"]["passed"]


def test_bad_inputs(tiny, tmp_path, cli):
    code, _, err = cli("verify", tiny("ling-lite", "safetensors"), tiny("ling-mini-2", "safetensors"))
    assert_one_line_error(code, err, "architectures differ")
    other_vocab = write_variant(tmp_path / "v", "ling-lite", None, lambda c: c.update(vocab_size=319))
    code, _, err = cli("verify", tiny("ling-lite", "safetensors"), other_vocab)
    assert_one_line_error(code, err, "vocab_size")
    code, _, err = cli("verify", tiny("ling-lite", "safetensors"), "--tokens", "1,99999")
    assert_one_line_error(code, err, "99999", "out of range")

    def drop(s):
        del s["model.layers.1.attention.dense.weight"]
    missing = write_variant(tmp_path / "m", "ling-lite", drop)
    code, _, err = cli("verify", tiny("ling-lite", "safetensors"), missing)
    assert_one_line_error(code, err, "model.layers.1.attention.dense.weight")
    code, _, err = cli("verify", tiny("ling-lite", "safetensors"), "--tol", "banana")
    assert_one_line_error(code, err, "--tol")


@pytest.mark.parametrize("model", ["ling-lite", "ling-mini-2"])
def test_hybrid_without_linear_layers_verifies_exactly_against_its_base(tiny, tmp_path, cli, model):
    src = tiny(model, "safetensors")
    code, _, err = cli("to-hybrid-linear", src, tmp_path / "h0", "--layer-group-size", "1")
    assert code == 0, err
    code, out, err = cli("verify", src, tmp_path / "h0", "--json")
    assert code == 0 and json.loads(out)["exact"], err
    # With linear layers the model computes something else, and verify says so.
    code, _, err = cli("to-hybrid-linear", src, tmp_path / "h2", "--layer-group-size", "2")
    assert code == 0, err
    code, out, _ = cli("verify", src, tmp_path / "h2", "--json")
    assert code == 1 and not json.loads(out)["passed"]


@pytest.mark.parametrize("model", MODELS)
def test_fp8_default_tolerance_passes_correct_and_catches_divisor(tiny, tmp_path, cli, model):
    """The fp8 edge class's default criteria accept a correct quantization and reject scale misuse."""
    from safetensors.torch import load_file, save_file
    src = tiny(model, "safetensors")
    code, _, err = cli("quantize", src, tmp_path / "q", "--scheme", "fp8-block")
    assert code == 0, err
    code, out, _ = cli("verify", src, tmp_path / "q", "--json")
    rep = json.loads(out)
    assert code == 0 and rep["edge_class"] == "fp8" and rep["passed"], rep
    # Negative control: scales stored inverted (as if used as divisors).
    for f in (tmp_path / "q").glob("*.safetensors"):
        t = load_file(str(f))
        save_file({k: (1.0 / v if k.endswith("_scale_inv") else v) for k, v in t.items()}, str(f),
                  metadata={"format": "pt"})
    code, out, _ = cli("verify", src, tmp_path / "q", "--json")
    assert code == 1 and not json.loads(out)["passed"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "q4_0"])
def test_gguf_default_tolerances(tiny, tmp_path, cli, model, outtype):
    """Each GGUF type passes verify's default for its class (limits set from measurement)."""
    src = tiny(model, "safetensors")
    out = tmp_path / "m.gguf"
    code, _, err = cli("to-gguf", src, out, "--outtype", outtype)
    assert code == 0, err
    code, res, err = cli("verify", src, out, "--json")
    rep = json.loads(res)
    assert code == 0 and rep["passed"] and rep["edge_class"] == f"gguf-{outtype}", (rep, err)
