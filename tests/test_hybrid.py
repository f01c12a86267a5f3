"""softmax -> hybrid-linear: linear-attention math (two forms + an fp64 oracle), the conversion, its CLI.

Tiny v1 / v2 checkpoints come from `ling_convert.testing`; every parity check has a negative control.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, run_subprocess
from ling_convert import api
from ling_convert.model import arch
from ling_convert.converters import hybrid
from ling_convert.core.errors import UnsupportedError
from ling_convert.formats import open_source
from ling_convert.reference import ARCHITECTURES, run_reference
from ling_convert.reference import bailing_moe_linear as hl
from ling_convert.reference.common import CommonArgs, LayerWeights, attention_block, rms_norm, rope_cos_sin
from ling_convert.core.source import TensorInfo
from ling_convert.testing import write_tiny

QKV = "attention.query_key_value.weight"
TOKENS = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(7))


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 2e-6) -> bool:
    """Equal to float32 precision: max error within `rel` of the output's scale."""
    return (a - b).abs().max().item() <= rel * max(1.0, a.abs().max().item())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Source and converted checkpoints, built once: {key: (src_path, out_path)}."""
    root = tmp_path_factory.mktemp("hyb")
    built = {}
    for key, model, opts in (("lite", "ling-lite", {}), ("plus", "ling-plus", {}),
                             ("mini", "ling-mini-2", {"group_norm_size": 2}),
                             ("lite0", "ling-lite", {"layer_group_size": 1}),
                             ("mini0", "ling-mini-2", {"linear_layers": ""})):
        src = root / f"{model}-src"
        if not src.exists():
            write_tiny(src, model)
        out = root / f"{key}-hybrid"
        api.to_hybrid_linear(src, out, **opts)
        built[key] = (src, out)
    return built


def opened(path: Path):
    s = open_source(path)
    return s, s.load


# ------------------------------------------------------------------ decay and the two forms


def test_slopes_and_layer_factor_match_hand_values():
    assert hl.alibi_slopes(16) == pytest.approx([2 ** (-(h + 1) / 2) for h in range(16)], rel=1e-12)
    assert hl.alibi_slopes(4) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8]
    # 6 heads: the 4-head slopes, then slopes 0 and 2 of the 8-head list (2^-1, 2^-3).
    assert hl.alibi_slopes(6) == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    g0, g27 = hl.layer_log_decay(16, 0, 28), hl.layer_log_decay(16, 27, 28)
    assert g0[0].item() == pytest.approx(-(2 ** -0.5) * (1 + 1e-5), rel=1e-6)
    assert g27[0].item() == pytest.approx(-(2 ** -0.5) * 1e-5, rel=1e-4)  # last layer barely decays
    assert hl.layer_log_decay(4, 0, 1)[0].item() == pytest.approx(-0.25 * (1 + 1e-5), rel=1e-6)


def fp64_oracle(q, k, v, g, scale):
    """O = scale ((Q K^T) * D) V with D[t, j] = exp(g (t - j)), j <= t; numpy float64, no chunking, no state."""
    q, k, v, g = (x.double().numpy() for x in (q, k, v, g))
    t = q.shape[2]
    gap = np.arange(t)[:, None] - np.arange(t)[None, :]
    d = np.where(gap >= 0, np.exp(g[:, None, None] * gap), 0.0)  # [h, T, T]
    return torch.from_numpy(scale * ((q @ np.swapaxes(k, -1, -2)) * d) @ v)


def random_qkvg(b=2, h=3, t=29, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=gen) for _ in range(3))
    return q, k, v, hl.layer_log_decay(h, 1, 5)


@pytest.mark.parametrize("chunk", [1, 4, 16, 29, 64])
def test_recurrent_and_chunked_forms_agree_with_oracle(chunk):
    q, k, v, g = random_qkvg()
    want = fp64_oracle(q, k, v, g, 8 ** -0.5).float()
    rec, s_rec = hl.linear_attention_recurrent(q, k, v, g, 8 ** -0.5)
    par, s_par = hl.linear_attention_chunked(q, k, v, g, 8 ** -0.5, chunk=chunk)
    assert close(rec, want) and close(par, want) and close(rec, par)
    assert close(s_rec, s_par)


def test_prefill_state_then_token_by_token_decode_matches_full_prefill():
    q, k, v, g = random_qkvg(t=20)
    full, _ = hl.linear_attention_chunked(q, k, v, g, 0.5, chunk=8)
    head, state = hl.linear_attention_chunked(q[:, :, :13], k[:, :, :13], v[:, :, :13], g, 0.5, chunk=8)
    steps = []
    for i in range(13, 20):  # decode: one token at a time on the carried state
        o, state = hl.linear_attention_recurrent(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], g, 0.5, state)
        steps.append(o)
    assert close(torch.cat([head, *steps], dim=2), full)


def test_negative_control_a_wrong_decay_is_caught():
    q, k, v, g = random_qkvg()
    good, _ = hl.linear_attention_chunked(q, k, v, g, 0.25)
    # mlx-lm's layer offset (l - 1) for layer 1 of 5 is a plausible slip; the forms must tell it apart.
    shifted, _ = hl.linear_attention_recurrent(q, k, v, hl.layer_log_decay(3, 0, 5), 0.25)
    assert not close(good, shifted, rel=1e-3)


def test_group_rms_norm_is_per_slice():
    x, w = torch.randn(2, 5, 12), torch.randn(12)
    assert torch.allclose(hl.group_rms_norm(x, w, 1e-6, 1), rms_norm(x, w, 1e-6))
    parts = [rms_norm(x[..., i * 4:(i + 1) * 4], w[i * 4:(i + 1) * 4], 1e-6) for i in range(3)]
    assert torch.allclose(hl.group_rms_norm(x, w, 1e-6, 3), torch.cat(parts, -1))
    assert not torch.allclose(hl.group_rms_norm(x, w, 1e-6, 3), rms_norm(x, w, 1e-6))


# ------------------------------------------------------------------ the conversion


@pytest.mark.parametrize("key", ["lite", "plus", "mini"])
def test_reused_tensors_are_bit_identical_and_qkv_is_a_kv_repeat(models, key):
    src_path, out_path = models[key]
    s, h = open_source(src_path), open_source(out_path)
    cfg = s.config
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], arch.head_dim(cfg)
    linear = arch.detect_architecture(h.config).linear_layers(h.config)
    assert linear, "the default pattern must convert at least one layer"
    for name in s.keys():
        a, b = s.load(name), h.load(name)
        layer = arch._layer_of(name)
        if name.endswith(QKV) and layer in linear:
            assert b.shape == (3 * nh * d, cfg["hidden_size"]) and b.dtype == a.dtype
            assert torch.equal(b[:nh * d], a[:nh * d])  # Q rows untouched
            assert torch.equal(hybrid.collapse_mha_to_gqa(b, nh, nkv, d), a)
            for j in range(nh):  # linear head j reads source KV head j // (nh / nkv)
                src_k = (nh + j // (nh // nkv)) * d
                assert torch.equal(b[(nh + j) * d:(nh + j + 1) * d], a[src_k:src_k + d])
        else:
            assert a.dtype == b.dtype and torch.equal(a, b), name
    extra = set(h.keys()) - set(s.keys())
    assert extra == {f"model.layers.{i}.attention.{t}.weight" for i in linear for t in ("g_proj", "g_norm")}


@pytest.mark.parametrize("key", ["lite", "plus", "mini"])
def test_output_is_a_complete_hybrid_checkpoint(models, key):
    h, _ = api.prepare(models[key][1], "safetensors")  # readers route it; check_complete ran inside
    a = arch.detect_architecture(h.config)
    assert a.name in ("bailing_moe_linear", "bailing_moe_linear_v2")
    assert set(a.expected_names(h.config)) == set(h.keys())
    assert ARCHITECTURES[h.config["architectures"][0]] in (hl.forward_v1, hl.forward_v2)


@pytest.mark.parametrize("key", ["lite", "plus", "mini"])
def test_softmax_layers_map_the_same_input_to_the_same_output(models, key):
    (s, sw), (h, hw) = opened(models[key][0]), opened(models[key][1])
    n = h.config["num_hidden_layers"]
    linear = arch.detect_architecture(h.config).linear_layers(h.config)
    x = torch.randn(2, 11, h.config["hidden_size"], generator=torch.Generator().manual_seed(3))
    for i in range(n):
        same = torch.equal(hl.run_layer(s.config, sw, i, x), hl.run_layer(h.config, hw, i, x))
        # Negative control: a linear layer must differ, or this comparison would prove nothing.
        assert same == (i not in linear), i


@pytest.mark.parametrize("key", ["lite", "plus", "mini"])
def test_full_hybrid_runs_and_both_linear_forms_agree(models, key):
    h, hw = opened(models[key][1])
    fwd = ARCHITECTURES[h.config["architectures"][0]]
    mtp = bool(h.config.get("num_nextn_predict_layers"))
    rec = fwd(h.config, hw, TOKENS, linear_form="recurrent", mtp=mtp)
    par = fwd(h.config, hw, TOKENS, linear_form="chunked", mtp=mtp)
    assert torch.isfinite(par.logits).all() and close(rec.logits, par.logits, rel=5e-6)
    assert all(close(a, b, rel=5e-6) for a, b in zip(rec.mtp_logits, par.mtp_logits))
    assert torch.equal(run_reference(h.config, hw, TOKENS).logits, par.logits)  # dispatch via the registry


@pytest.mark.parametrize("key", ["lite0", "mini0"])
def test_zero_linear_layers_reproduce_the_source_logits_exactly(models, key):
    (s, sw), (h, hw) = opened(models[key][0]), opened(models[key][1])
    assert arch.detect_architecture(h.config).linear_layers(h.config) == frozenset()
    mtp = bool(s.config.get("num_nextn_predict_layers"))
    a, b = run_reference(s.config, sw, TOKENS, mtp=mtp), run_reference(h.config, hw, TOKENS, mtp=mtp)
    assert torch.equal(a.logits, b.logits)
    assert all(torch.equal(x, y) for x, y in zip(a.mtp_logits, b.mtp_logits))
    # Negative control: the default pattern (one linear layer or more) does change the logits.
    d, dw = opened(models[key.rstrip("0")][1])
    assert not torch.equal(a.logits, run_reference(d.config, dw, TOKENS).logits)


def _gqa_args(cfg: dict, heads_kv: int) -> CommonArgs:
    return CommonArgs.from_dict({**cfg, "num_key_value_heads": heads_kv})


@pytest.mark.parametrize("expand, ok", [(hybrid.expand_kv_to_mha, True),
                                        # deliberately wrong: tiling heads (0,1,0,1) instead of (0,0,1,1)
                                        (lambda w, nh, nkv, d: torch.cat(
                                            [w[:nh * d], w[nh * d:(nh + nkv) * d].repeat(nh // nkv, 1),
                                             w[(nh + nkv) * d:].repeat(nh // nkv, 1)]), False)])
def test_kv_expansion_keeps_what_each_query_head_reads(models, expand, ok):
    s, sw = opened(models["plus"][0])  # 6 heads / 2 KV heads: a tiled repeat would mix heads up
    cfg = s.config
    nh, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], arch.head_dim(cfg)
    x = torch.randn(1, 9, cfg["hidden_size"], generator=torch.Generator().manual_seed(5))
    cos, sin = rope_cos_sin(600000.0, d, None, 9)
    prefix = "model.layers.0."
    mha = {prefix + QKV: expand(s.load(prefix + QKV).float(), nh, nkv, d)}
    gqa = attention_block(x, LayerWeights(sw, prefix), _gqa_args(cfg, nkv), cos, sin)
    as_mha = attention_block(x, LayerWeights(lambda n: mha.get(n, sw(n)), prefix), _gqa_args(cfg, nh), cos, sin)
    assert close(gqa, as_mha, rel=1e-6) == ok


def test_new_parameters_are_seeded_and_documented(models, tmp_path):
    src = models["lite"][0]
    name = "model.layers.0.attention.g_proj.weight"
    first = open_source(models["lite"][1]).load(name)
    again = api.to_hybrid_linear(src, tmp_path / "again")
    assert torch.equal(open_source(tmp_path / "again").load(name), first)
    api.to_hybrid_linear(src, tmp_path / "seed9", init="normal:9")
    assert not torch.equal(open_source(tmp_path / "seed9").load(name), first)
    api.to_hybrid_linear(src, tmp_path / "zeros", init="zeros")
    assert not open_source(tmp_path / "zeros").load(name).any()
    assert first.float().std().item() == pytest.approx(0.006, rel=0.1)  # tiny config initializer_range
    norm = open_source(models["lite"][1]).load("model.layers.0.attention.g_norm.weight")
    assert torch.equal(norm, torch.ones_like(norm))
    notes = json.loads((models["lite"][1] / "ling-convert.json").read_text())["notes"]["hybrid_linear"]
    gate = notes["linear_layer_tensors"]["attention.g_proj.weight"]
    assert (gate["init"], gate["seed"], gate["std"]) == ("normal", 0, 0.006) and gate["why"]
    assert notes["linear_layers"] == [0] and notes["softmax_layers"] == [1] and again.plan == notes


def test_tensors_stay_lazy_until_written(tmp_path):
    src = open_source(write_tiny(tmp_path / "lite", "ling-lite"))
    reads = []

    def counted(name, thunk):
        return lambda: (reads.append(name), thunk())[1]
    src.thunks = {n: counted(n, f) for n, f in src.thunks.items()}
    out = hybrid.to_hybrid(src, hybrid.plan_hybrid(src, layer_group_size=2))
    assert reads == []  # planning and wrapping read nothing
    out.load("model.layers.0." + QKV)
    assert reads == ["model.layers.0." + QKV]


def test_config_rewrite_and_remote_code(models, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(models["mini"][0], src)
    (src / "modeling_bailing_moe_v2.py").write_text("# softmax remote code\n")
    api.to_hybrid_linear(src, tmp_path / "plain", layer_group_size=2)
    cfg = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert cfg["architectures"] == ["BailingMoeLinearV2ForCausalLM"] and cfg["model_type"] == "bailing_moe_linear"
    assert (cfg["layer_group_size"], cfg["group_norm_size"], cfg["linear_silu"]) == (2, 1, False)
    assert "auto_map" not in cfg and not list((tmp_path / "plain").glob("*.py"))
    assert (tmp_path / "plain" / "tokenizer.json").is_file()
    code = tmp_path / "code"
    code.mkdir()
    for f in ("configuration_bailing_moe_linear_v2.py", "modeling_bailing_moe_linear_v2.py"):
        (code / f).write_text("# hybrid remote code\n")
    api.to_hybrid_linear(src, tmp_path / "coded", layer_group_size=2, modeling_dir=code)
    cfg = json.loads((tmp_path / "coded" / "config.json").read_text())
    assert cfg["auto_map"]["AutoConfig"] == "configuration_bailing_moe_linear_v2.BailingMoeLinearV2Config"
    assert sorted(p.name for p in (tmp_path / "coded").glob("*.py")) == sorted(p.name for p in code.glob("*.py"))


def test_layer_list_selects_its_group_size(models, tmp_path):
    r = api.to_hybrid_linear(models["mini"][0], tmp_path / "x", linear_layers="1,0", dry_run=True)
    assert (r.plan["layer_group_size"], r.plan["linear_layers"]) == (3, [0, 1]) and r.output is None
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing left


@pytest.mark.parametrize("args, needles", [
    (["--linear-layers", "0,7"], ["out of range", "0..2"]),
    (["--linear-layers", "1"], ["not a layer_group_size pattern"]),
    (["--layer-group-size", "9"], ["out of range 1..3"]),
    (["--layer-group-size", "2", "--linear-layers", "0"], ["both given"]),
    (["--init", "uniform"], ["--init"]),
])
def test_bad_options_are_one_line_errors(models, cli, tmp_path, args, needles):
    out = tmp_path / "out"
    code, _, err = cli("to-hybrid-linear", models["mini"][0], out, *args)
    assert_one_line_error(code, err, *needles)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_already_hybrid_and_unsupported_sources_are_refused(models, cli, tmp_path):
    code, _, err = cli("to-hybrid-linear", models["lite"][1], tmp_path / "twice")
    assert_one_line_error(code, err, "already hybrid-linear")
    odd = tmp_path / "llama"
    shutil.copytree(models["lite"][0], odd)
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))
    r = run_subprocess("to-hybrid-linear", odd, tmp_path / "never")
    assert_one_line_error(r.returncode, r.stderr, "unknown architecture")
    assert not (tmp_path / "twice").exists() and not (tmp_path / "never").exists()
    assert not list(tmp_path.glob(".*partial"))


def test_sources_the_recipe_cannot_carry_are_refused(cli, tmp_path):
    src = write_tiny(tmp_path / "src", "ling-lite", use_qkv_bias=True)
    code, _, err = cli("to-hybrid-linear", src, tmp_path / "out")
    assert_one_line_error(code, err, "biases")
    assert not (tmp_path / "out").exists()
    plain = open_source(write_tiny(tmp_path / "plain", "ling-lite"))
    fp8 = plain.derive(infos={**plain.infos, "model.layers.0.attention.dense.weight_scale_inv":
                              TensorInfo((1, 1), torch.float32)})
    with pytest.raises(UnsupportedError, match="quantized"):
        hybrid.plan_hybrid(fp8)
