"""Reference forward vs an independent numpy implementation, negative controls, layer streaming, MTP.

Tiny random Ling checkpoints are built inline (seed-fixed); ``independent_ref`` is the oracle.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import pathlib
import re
import weakref

import numpy as np
import pytest
import torch

from ling_convert.reference import ARCHITECTURES, ReferenceOutput, normalize_rope_scaling, run_reference

# Loaded by path so the import works whether or not tests/ is a package.
_spec = importlib.util.spec_from_file_location("independent_ref",
                                               pathlib.Path(__file__).with_name("independent_ref.py"))
independent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(independent)

ATOL = 1e-4
# A broken run must miss the oracle by far more than the tolerance.
CLEARLY = 100 * ATOL

# ------------------------------------------------------------------ tiny checkpoints


def v1_config(**over) -> dict:
    cfg = {
        "architectures": ["BailingMoeForCausalLM"], "model_type": "bailing_moe",
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": None, "vocab_size": 97, "intermediate_size": 48, "moe_intermediate_size": 16,
        "num_experts": 6, "num_experts_per_tok": 2, "num_shared_experts": 1, "first_k_dense_replace": 0,
        "norm_topk_prob": True, "norm_head": False, "tie_word_embeddings": False, "use_bias": False,
        "use_qkv_bias": False, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
        "rope_scaling": None,
    }
    cfg.update(over)
    return cfg


def v2_config(**over) -> dict:
    cfg = {
        # NOTE: published v2 configs say model_type "bailing_moe" too; dispatch must use architectures.
        "architectures": ["BailingMoeV2ForCausalLM"], "model_type": "bailing_moe",
        "hidden_size": 48, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 101, "intermediate_size": 64, "moe_intermediate_size": 16,
        "num_experts": 8, "num_experts_per_tok": 2, "num_shared_experts": 1, "first_k_dense_replace": 1,
        "n_group": 1, "topk_group": 1, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
        "norm_topk_prob": True, "use_qk_norm": True, "partial_rotary_factor": 0.5,
        "tie_word_embeddings": False, "use_bias": False, "use_qkv_bias": False, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "max_position_embeddings": 64, "rope_scaling": None,
        "num_nextn_predict_layers": 0,
    }
    cfg.update(over)
    return cfg


def make_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 state dict with canonical HF names for ``cfg`` (v1 or v2, MTP included)."""
    g = torch.Generator().manual_seed(seed)
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or H // nh
    E, F, L = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["num_hidden_layers"]
    v2 = cfg["architectures"][0] == "BailingMoeV2ForCausalLM"

    def lin(out: int, inp: int) -> torch.Tensor:
        return torch.randn(out, inp, generator=g) / math.sqrt(inp)

    def norm(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    sd = {"model.word_embeddings.weight": torch.randn(cfg["vocab_size"], H, generator=g)}

    def mlp(p: str, width: int) -> None:
        sd[p + "gate_proj.weight"], sd[p + "up_proj.weight"] = lin(width, H), lin(width, H)
        sd[p + "down_proj.weight"] = lin(H, width)

    def block(p: str, dense: bool) -> None:
        sd[p + "input_layernorm.weight"] = norm(H)
        sd[p + "attention.query_key_value.weight"] = lin((nh + 2 * nkv) * d, H)
        if cfg.get("use_qkv_bias"):
            sd[p + "attention.query_key_value.bias"] = 0.1 * torch.randn((nh + 2 * nkv) * d, generator=g)
        sd[p + "attention.dense.weight"] = lin(H, nh * d)
        if cfg.get("use_bias"):
            sd[p + "attention.dense.bias"] = 0.1 * torch.randn(H, generator=g)
        if v2 and cfg.get("use_qk_norm"):
            sd[p + "attention.query_layernorm.weight"] = norm(d)
            sd[p + "attention.key_layernorm.weight"] = norm(d)
        sd[p + "post_attention_layernorm.weight"] = norm(H)
        if dense:
            mlp(p + "mlp.", cfg["intermediate_size"])
            return
        sd[p + "mlp.gate.weight"] = 2.0 * lin(E, H)  # spread the router so top-k is well separated
        if v2:
            sd[p + "mlp.gate.expert_bias"] = 0.3 * torch.randn(E, generator=g)
        for e in range(E):
            mlp(f"{p}mlp.experts.{e}.", F)
        if cfg.get("num_shared_experts"):
            mlp(p + "mlp.shared_experts.", F * cfg["num_shared_experts"])

    for i in range(L):
        block(f"model.layers.{i}.", dense=i < (cfg.get("first_k_dense_replace") or 0))
    for j in range(cfg.get("num_nextn_predict_layers") or 0):
        p = f"model.layers.{L + j}."
        sd[p + "enorm.weight"], sd[p + "hnorm.weight"] = norm(H), norm(H)
        sd[p + "eh_proj.weight"] = lin(H, 2 * H)
        block(p, dense=False)
        sd[p + "final_layernorm.weight"] = norm(H)
    sd["model.norm.weight"] = norm(H)
    if not cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = lin(cfg["vocab_size"], H)
    return sd


def tokens_for(cfg: dict, batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


def weight_of(sd: dict):
    # clone: the reference must own what it gets, so the streaming test can watch it die.
    return lambda name: sd[name].clone()


def oracle(cfg: dict, sd: dict, tokens: torch.Tensor, **kw) -> dict:
    return independent.forward(cfg, {k: v.double().numpy() for k, v in sd.items()}, tokens.numpy(), **kw)


def max_gap(ref: torch.Tensor, expected: np.ndarray) -> float:
    return float(np.max(np.abs(ref.double().numpy() - expected)))


def assert_matches(out: ReferenceOutput, exp: dict) -> None:
    np.testing.assert_allclose(out.hidden.numpy(), exp["hidden"], atol=ATOL, rtol=ATOL)
    if exp["logits"] is None:
        assert out.logits is None
    else:
        assert out.logits.dtype == torch.float32
        np.testing.assert_allclose(out.logits.numpy(), exp["logits"], atol=ATOL, rtol=ATOL)
    assert len(out.mtp_logits) == len(exp["mtp_logits"])
    for got, want in zip(out.mtp_logits, exp["mtp_logits"]):
        np.testing.assert_allclose(got.numpy(), want, atol=ATOL, rtol=ATOL)


def assert_clearly_differs(out: ReferenceOutput, exp: dict) -> None:
    gap = max_gap(out.logits, exp["logits"])
    assert gap > CLEARLY, f"broken run is within {gap:.2e} of the oracle; the check cannot catch it"


# ------------------------------------------------------------------ parity across config branches

YARN_RAMP = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
V1_CASES = {
    "base": {},
    "dense_lead_layer": {"first_k_dense_replace": 1},
    "qkv_bias_and_dense_bias": {"use_qkv_bias": True, "use_bias": True},
    "norm_head": {"norm_head": True},
    "tied_embeddings": {"tie_word_embeddings": True},
    "explicit_head_dim_ne_hidden": {"head_dim": 12},  # 4 heads * 12 = 48 != hidden 32
    "head_dim_zero_means_derived": {"head_dim": 0},
    "no_norm_topk_prob": {"norm_topk_prob": False},
    "no_shared_experts": {"num_shared_experts": None},
    "top1": {"num_experts_per_tok": 1},
    "mha": {"num_key_value_heads": 4},
    # rope_theta 100 puts the YaRN ramp mid-way through the pairs (fractional blend).
    "yarn_type_spelling": {"rope_theta": 100.0, "rope_scaling": YARN_RAMP},
    "yarn_mscale_betas": {"rope_scaling": {
        "type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16,
        "beta_fast": 8, "beta_slow": 2, "mscale": 0.707, "mscale_all_dim": 1.0}},
    "linear": {"rope_scaling": {"type": "linear", "factor": 2.0}},
}
V2_CASES = {
    "base": {},
    "group_routing": {"n_group": 4, "topk_group": 2},
    "group_routing_top3": {"n_group": 2, "topk_group": 1, "num_experts_per_tok": 3},
    "top1_no_renorm": {"num_experts_per_tok": 1},
    "rotary_dim_only": {"partial_rotary_factor": None, "rotary_dim": 8},
    "rotary_dim_wins_over_factor": {"rotary_dim": 4, "partial_rotary_factor": 0.5},
    "full_rotary": {"partial_rotary_factor": None},
    "no_qk_norm": {"use_qk_norm": False},
    "no_dense_layers": {"first_k_dense_replace": 0},
    "tied_embeddings": {"tie_word_embeddings": True},
    "qkv_bias": {"use_qkv_bias": True, "use_bias": True},
    "mtp_one_layer": {"num_nextn_predict_layers": 1},
    "mtp_two_layers": {"num_nextn_predict_layers": 2},
    "yarn_rope_type_spelling": {"rope_theta": 100.0, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}},
    "linear": {"rope_scaling": {"rope_type": "linear", "factor": 3.0}},
}


@pytest.mark.parametrize("case", sorted(V1_CASES))
def test_v1_matches_independent(case):
    cfg = v1_config(**V1_CASES[case])
    sd = make_weights(cfg)
    toks = tokens_for(cfg)
    assert_matches(run_reference(cfg, weight_of(sd), toks), oracle(cfg, sd, toks))


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_v2_matches_independent(case):
    cfg = v2_config(**V2_CASES[case])
    sd = make_weights(cfg)
    toks = tokens_for(cfg)
    out = run_reference(cfg, weight_of(sd), toks, mtp=True)
    assert len(out.mtp_logits) == cfg["num_nextn_predict_layers"]
    assert_matches(out, oracle(cfg, sd, toks, mtp=True))


@pytest.mark.parametrize("make,scaling", [(v1_config, YARN_RAMP),
                                          (v2_config, {"rope_type": "linear", "factor": 3.0})])
def test_rope_scaling_cases_are_not_vacuous(make, scaling):
    # The scaled and unscaled runs must differ, or the scaling parity cases prove nothing.
    cfg = make(rope_theta=100.0)
    sd, toks = make_weights(cfg), tokens_for(cfg)
    plain = run_reference(cfg, weight_of(sd), toks)
    scaled = run_reference({**cfg, "rope_scaling": scaling}, weight_of(sd), toks)
    assert (plain.logits - scaled.logits).abs().max() > CLEARLY


def test_unbatched_tokens_and_low_precision_weights():
    cfg = v2_config()
    sd = make_weights(cfg)
    toks = tokens_for(cfg)
    batched = run_reference(cfg, weight_of(sd), toks)
    single = run_reference(cfg, weight_of(sd), toks[0])
    assert single.logits.shape == (1, toks.shape[1], cfg["vocab_size"])
    torch.testing.assert_close(single.logits[0], batched.logits[0], atol=1e-5, rtol=1e-5)
    for dtype in (torch.bfloat16, torch.float16):
        low = {k: (v if k.endswith("expert_bias") else v.to(dtype)) for k, v in sd.items()}
        upcast = {k: v.float() for k, v in low.items()}
        out = run_reference(cfg, weight_of(low), toks)
        assert out.logits.dtype == torch.float32
        assert torch.equal(out.logits, run_reference(cfg, weight_of(upcast), toks).logits)


# ------------------------------------------------------------------ negative controls


def swap_experts(sd: dict, a: int, b: int) -> dict:
    out = dict(sd)
    for name in sd:
        m = re.match(r"(.*\.mlp\.experts\.)(\d+)(\..*)", name)
        if m and int(m.group(2)) in (a, b):
            other = b if int(m.group(2)) == a else a
            out[name] = sd[f"{m.group(1)}{other}{m.group(3)}"]
    return out


def interleave_qk_rows(sd: dict, cfg: dict) -> dict:
    """Reorder each Q and K head's rows from rotate_half pairs to interleaved pairs (the classic permute bug)."""
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    perm = torch.arange(d).view(2, d // 2).t().reshape(-1)  # [0, d/2, 1, d/2+1, ...]
    out = dict(sd)
    for name, w in sd.items():
        if name.endswith("attention.query_key_value.weight"):
            heads = w.view(nh + 2 * nkv, d, -1).clone()  # [heads, d, H]
            heads[:nh + nkv] = heads[:nh + nkv, perm]  # Q and K heads only; V untouched
            out[name] = heads.view_as(w)
    return out


@pytest.mark.parametrize("make", [v1_config, v2_config])
def test_negative_two_experts_swapped(make):
    cfg = make()
    sd, toks = make_weights(cfg), tokens_for(cfg)
    exp = oracle(cfg, sd, toks)
    assert_matches(run_reference(cfg, weight_of(sd), toks), exp)
    assert_clearly_differs(run_reference(cfg, weight_of(swap_experts(sd, 0, 1)), toks), exp)


@pytest.mark.parametrize("groups", [(1, 1), (4, 2)])
def test_negative_expert_bias_dropped(groups):
    cfg = v2_config(n_group=groups[0], topk_group=groups[1])
    sd, toks = make_weights(cfg), tokens_for(cfg)
    no_bias = {k: (torch.zeros_like(v) if k.endswith("expert_bias") else v) for k, v in sd.items()}
    assert_clearly_differs(run_reference(cfg, weight_of(no_bias), toks), oracle(cfg, sd, toks))


def test_negative_norm_head_skipped():
    cfg = v1_config(norm_head=True)
    sd, toks = make_weights(cfg), tokens_for(cfg)
    assert_clearly_differs(run_reference({**cfg, "norm_head": False}, weight_of(sd), toks), oracle(cfg, sd, toks))


@pytest.mark.parametrize("truth,wrong", [
    ({"partial_rotary_factor": 0.5}, {"partial_rotary_factor": 1.0}),
    # Ling-1T style: rotary_dim set, no factor; HF's path that ignores rotary_dim rotates the full head.
    ({"partial_rotary_factor": None, "rotary_dim": 8}, {"partial_rotary_factor": None, "rotary_dim": None}),
])
def test_negative_wrong_rotary_dim(truth, wrong):
    cfg = v2_config(**truth)
    sd, toks = make_weights(cfg), tokens_for(cfg)
    assert_clearly_differs(run_reference({**cfg, **wrong}, weight_of(sd), toks), oracle(cfg, sd, toks))


@pytest.mark.parametrize("make", [v1_config, v2_config])
def test_negative_qk_halves_permuted(make):
    cfg = make()
    sd, toks = make_weights(cfg), tokens_for(cfg)
    broken = interleave_qk_rows(sd, cfg)
    assert_clearly_differs(run_reference(cfg, weight_of(broken), toks), oracle(cfg, sd, toks))


# ------------------------------------------------------------------ layer streaming

LAYER_RE = re.compile(r"model\.layers\.(\d+)\.")


class RecordingWeights:
    """A ``weight`` callable that logs requests and checks earlier layers' tensors are already freed."""

    def __init__(self, sd: dict):
        self.sd, self.calls, self.handed = sd, [], []

    def __call__(self, name: str) -> torch.Tensor:
        m = LAYER_RE.match(name)
        layer = int(m.group(1)) if m else None
        if layer is not None or name in ("model.norm.weight", "lm_head.weight"):
            for old_layer, ref, old in self.handed:
                if old_layer is not None and (layer is None or old_layer < layer):
                    assert ref() is None, f"{old} still alive when {name} was requested"
        t = self.sd[name].clone()
        self.handed.append((layer, weakref.ref(t), name))
        self.calls.append(name)
        return t

    def layer_sequence(self) -> list[int]:
        return [int(m.group(1)) for m in map(LAYER_RE.match, self.calls) if m]


@pytest.mark.parametrize("make,over", [(v1_config, {"first_k_dense_replace": 1}),
                                       (v2_config, {"num_nextn_predict_layers": 1})])
def test_weights_stream_one_layer_at_a_time(make, over):
    cfg = make(**over)
    sd, toks = make_weights(cfg), tokens_for(cfg)
    rec = RecordingWeights(sd)
    run_reference(cfg, rec, toks, mtp=bool(cfg.get("num_nextn_predict_layers")))
    seq = rec.layer_sequence()
    assert seq == sorted(seq), "layers were requested out of order"
    n_total = cfg["num_hidden_layers"] + (cfg.get("num_nextn_predict_layers") or 0)
    assert sorted(set(seq)) == list(range(n_total))
    assert set(rec.calls) <= set(sd), "requested a name the checkpoint does not have"


@pytest.mark.parametrize("make", [v1_config, v2_config])
def test_layers_1_returns_first_layer_hidden_only(make):
    cfg = make()
    sd, toks = make_weights(cfg), tokens_for(cfg)
    rec = RecordingWeights(sd)
    out = run_reference(cfg, rec, toks, layers=1)
    assert out.logits is None and out.mtp_logits == []
    assert_matches(out, oracle(cfg, sd, toks, layers=1))
    assert set(rec.layer_sequence()) == {0}
    assert not {"model.norm.weight", "lm_head.weight"} & set(rec.calls)
    full = run_reference(cfg, weight_of(sd), toks)
    assert (full.hidden - out.hidden).abs().max() > CLEARLY  # really stopped early
    with pytest.raises(ValueError):
        run_reference(cfg, weight_of(sd), toks, layers=cfg["num_hidden_layers"] + 1)


# ------------------------------------------------------------------ MTP isolation


def test_mtp_weights_never_touch_main_logits():
    cfg = v2_config(num_nextn_predict_layers=1)
    sd, toks = make_weights(cfg), tokens_for(cfg)
    L = cfg["num_hidden_layers"]
    perturbed = {k: (v + 0.5 * torch.randn_like(v) if (m := LAYER_RE.match(k)) and int(m.group(1)) >= L else v)
                 for k, v in sd.items()}
    base = run_reference(cfg, weight_of(sd), toks, mtp=True)
    moved = run_reference(cfg, weight_of(perturbed), toks, mtp=True)
    assert torch.equal(base.logits, moved.logits) and torch.equal(base.hidden, moved.hidden)
    assert (base.mtp_logits[0] - moved.mtp_logits[0]).abs().max() > CLEARLY
    plain = run_reference(cfg, weight_of(sd), toks)
    assert plain.mtp_logits == [] and torch.equal(plain.logits, base.logits)


# ------------------------------------------------------------------ dispatch and config handling


def test_dispatch_on_architectures_not_model_type():
    assert set(ARCHITECTURES) >= {"BailingMoeForCausalLM", "BailingMoeV2ForCausalLM"}
    cfg = v1_config()
    sd, toks = make_weights(cfg), tokens_for(cfg)
    for bad in ({**cfg, "architectures": ["LlamaForCausalLM"]}, {**cfg, "architectures": []},
                {**cfg, "architectures": ["BailingMoeV2_5ForCausalLM"]}):
        with pytest.raises(ValueError):
            run_reference(bad, weight_of(sd), toks)


def test_head_dim_mismatch_with_tensor_shapes_fails():
    # Ling-plus trap: weights built for head_dim 12, config derives 32/4 = 8.
    cfg = v1_config(head_dim=12)
    sd, toks = make_weights(cfg), tokens_for(cfg)
    with pytest.raises(ValueError, match="head_dim"):
        run_reference({**cfg, "head_dim": None}, weight_of(sd), toks)


def test_v2_missing_routing_key_fails():
    cfg = v2_config()
    del cfg["n_group"]
    with pytest.raises(ValueError, match="n_group"):
        run_reference(cfg, weight_of(make_weights(v2_config())), tokens_for(cfg))


def test_normalize_rope_scaling_spellings():
    legacy = {"rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32768}}
    before = copy.deepcopy(legacy)
    assert normalize_rope_scaling(legacy) == {"rope_type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": 32768}
    assert legacy == before  # input untouched
    assert normalize_rope_scaling({"rope_scaling": {"rope_type": "linear", "factor": 2}}) == {
        "rope_type": "linear", "factor": 2.0}
    assert normalize_rope_scaling({"rope_scaling": None}) is None
    assert normalize_rope_scaling({}) is None
    assert normalize_rope_scaling({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}) is None
    v5 = {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e6}}
    assert normalize_rope_scaling(v5) == {"rope_type": "yarn", "factor": 2.0}
    with pytest.raises(ValueError):
        normalize_rope_scaling({"rope_scaling": {"type": "longrope", "factor": 2.0}})
