"""GGUF export/import (`to-gguf`, `from-gguf`) on the tiny Ling models.

Parity is checked with the reference forward on the GGUF read back through the
route planner (the path `verify` takes), against the source checkpoint.
Tolerances below were set from measurements (6 seeds x 3 models, 32 tokens):
max |dlogit| f32 9.5e-7, f16 5.0e-4, bf16 4.0e-3; mean KL q8_0 0.019, q4_0 0.34
(worst); top-1 agreement q8_0 0.84, q4_0 0.28 (worst).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch

from conftest import assert_one_line_error, run_subprocess
from ling_convert import api
from ling_convert.model.arch import head_dim
from ling_convert.model import gguf_ops
from ling_convert.api import to_gguf_file
from ling_convert.formats import open_source
from ling_convert.reference import run_reference
from ling_convert.testing import write_tiny

MODELS = ["ling-lite", "ling-plus", "ling-mini-2"]
OUTTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
TOL = {
    "f32": {"max_abs": 1e-5},
    "f16": {"max_abs": 2e-3, "kl": 1e-6},
    "bf16": {"max_abs": 1.5e-2, "kl": 1e-5},
    "q8_0": {"kl": 0.05, "top1": 0.75},
    "q4_0": {"kl": 0.5, "top1": 0.2},
}
TOKENS = torch.randint(0, 300, (32,), generator=torch.Generator().manual_seed(0))


# -- helpers --------------------------------------------------------------------------------

def metrics(a: torch.Tensor, b: torch.Tensor) -> dict:
    pa, pb = torch.log_softmax(a.double(), -1), torch.log_softmax(b.double(), -1)
    return {"max_abs": (a - b).abs().max().item(), "kl": (pa.exp() * (pa - pb)).sum(-1).mean().item(),
            "top1": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}


def within(m: dict, tol: dict) -> bool:
    return all(m[k] >= v if k == "top1" else m[k] <= v for k, v in tol.items())


def forward(path: Path, mtp: bool = False, **opts):
    src, _ = api.prepare(path, "safetensors", options=opts)   # a GGUF goes through `from-gguf`
    return run_reference(src.config, src.load, TOKENS, mtp=mtp)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """exported(model, outtype) -> GGUF path (cached for the module)."""
    root, cache = tmp_path_factory.mktemp("gguf"), {}

    def make(model: str, outtype: str) -> Path:
        if (model, outtype) not in cache:
            out = root / f"{model}-{outtype}.gguf"
            to_gguf_file(tiny(model), out, outtype=outtype)
            cache[model, outtype] = out
        return cache[model, outtype]
    return make


def kv(path: Path) -> dict:
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items()}


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """GGUF tensor name -> (type, ne) as llama.cpp sees it."""
    return {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in gguf.GGUFReader(path).tensors}


def rewrite(src: Path, dst: Path, drop_keys=(), drop_tensors=()) -> Path:
    """Copy a GGUF without some keys/tensors (a deliberately broken export)."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in drop_keys:
            continue
        vt = f.types[0]
        w.add_key_value(k, f.contents(), vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        if t.name not in drop_tensors:
            w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


# -- parity at every outtype -------------------------------------------------------------------

@pytest.mark.parametrize("outtype", OUTTYPES)
@pytest.mark.parametrize("model", MODELS)
def test_parity_with_reference(tiny, exported, model, outtype):
    mtp = model == "ling-mini-2"
    ref, got = forward(tiny(model), mtp=mtp), forward(exported(model, outtype), mtp=mtp)
    m = metrics(ref.logits, got.logits)
    assert within(m, TOL[outtype]), (model, outtype, m)
    for a, b in zip(ref.mtp_logits, got.mtp_logits):   # MTP layers travel in the GGUF too
        assert within(metrics(a, b), TOL[outtype])
    assert len(ref.mtp_logits) == len(got.mtp_logits) == int(mtp)


@pytest.mark.parametrize("model", MODELS)
def test_from_gguf_f32_is_bit_exact(tiny, exported, cli, tmp_path, model):
    code, _, err = cli("from-gguf", exported(model, "f32"), tmp_path / "hf")
    assert code == 0, err
    src, back = open_source(tiny(model)), open_source(tmp_path / "hf")
    assert sorted(src.keys()) == sorted(back.keys())
    for name in src.keys():
        want = src.load(name).float()
        if name == "lm_head.weight" and src.config.get("norm_head"):
            # norm_head is baked into `output` (as llama.cpp does); the config says so instead
            want = want / (want.norm(dim=0, keepdim=True) + gguf_ops.NORM_HEAD_EPS)
        assert torch.equal(back.load(name).float(), want), name
    assert not back.config.get("norm_head")
    man = json.loads((tmp_path / "hf" / "ling-convert.json").read_text())
    assert man["route"] == ["from-gguf"]
    if src.config.get("norm_head"):
        assert man["config_changes"]["norm_head"] == {"from": True, "to": False}


def test_from_gguf_without_norm_head_is_bit_exact_everywhere(tmp_path, cli):
    src_dir = write_tiny(tmp_path / "src", "ling-lite", norm_head=False)
    to_gguf_file(src_dir, tmp_path / "m.gguf", outtype="f32")
    assert cli("from-gguf", tmp_path / "m.gguf", tmp_path / "hf")[0] == 0
    src, back = open_source(src_dir), open_source(tmp_path / "hf")
    assert all(torch.equal(src.load(n).float(), back.load(n)) for n in src.keys())
    assert back.config == {**src.config}


# -- what llama.cpp reads: keys and tensors --------------------------------------------------------

COMMON_HEAD = ["GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture", "general.type",
               "general.name", "general.quantization_version", "general.file_type", "ling_convert.hf_config"]
TOKENIZER = ["tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
             "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
             "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
             "tokenizer.chat_template"]
V2_KEYS = {  # key -> value for the tiny ling-mini-2 (hidden 64, 4 heads x 16, 2 kv, rotary 0.5, 3 + 1 MTP layers)
    "context_length": 512, "embedding_length": 64, "block_count": 4, "feed_forward_length": 128,
    "attention.head_count": 4, "attention.head_count_kv": 2, "rope.freq_base": 600000.0,
    "attention.layer_norm_rms_epsilon": pytest.approx(1e-6), "expert_count": 8, "expert_used_count": 2,
    "expert_group_count": 4, "expert_group_used_count": 2, "expert_gating_func": 2, "attention.key_length": 16,
    "attention.value_length": 16, "rope.dimension_count": 8, "leading_dense_block_count": 1, "vocab_size": 320,
    "expert_feed_forward_length": 32, "expert_shared_feed_forward_length": 32, "expert_weights_scale": 2.5,
    "expert_shared_count": 1, "expert_weights_norm": True, "nextn_predict_layers": 1,
}
V1_KEYS = {  # tiny ling-plus: 6 heads x head_dim 16 != hidden 64, full rotary
    "context_length": 512, "embedding_length": 64, "block_count": 2, "feed_forward_length": 128,
    "attention.head_count": 6, "attention.head_count_kv": 2, "rope.freq_base": 600000.0,
    "attention.layer_norm_rms_epsilon": pytest.approx(1e-5), "expert_count": 4, "expert_used_count": 2,
    "attention.key_length": 16, "attention.value_length": 16, "rope.dimension_count": 16,
    "leading_dense_block_count": 0, "vocab_size": 320, "expert_feed_forward_length": 32,
    "expert_weights_scale": 1.0, "expert_shared_count": 1, "expert_weights_norm": True,
}


@pytest.mark.parametrize("model,arch,expected", [("ling-mini-2", "bailingmoe2", V2_KEYS),
                                                  ("ling-plus", "bailingmoe", V1_KEYS)])
def test_keys_full_list(exported, model, arch, expected):
    got = kv(exported(model, "q8_0"))
    assert list(got) == COMMON_HEAD + [f"{arch}.{k}" for k in expected] + TOKENIZER
    assert {k: got[f"{arch}.{k}"] for k in expected} == expected
    assert got["general.architecture"] == arch and got["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert got["tokenizer.ggml.model"] == "gpt2" and got["tokenizer.ggml.pre"] == arch
    tokens, types = got["tokenizer.ggml.tokens"], got["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 320                       # padded to vocab_size
    assert tokens[300] == "[PAD300]" and types[300] == gguf.TokenType.UNUSED
    eos = tokens.index("<|endoftext|>")
    assert got["tokenizer.ggml.eos_token_id"] == eos and types[eos] == gguf.TokenType.CONTROL
    assert types[0] == gguf.TokenType.NORMAL and got["tokenizer.ggml.merges"][0] == "Ġ t"
    assert "<role>" in got["tokenizer.chat_template"]


def expected_tensors(cfg: dict, v2: bool) -> dict[str, tuple[int, ...]]:
    """ne shapes from llama.cpp's loader, written out independently of schemas/gguf."""
    H, V, d = cfg["hidden_size"], cfg["vocab_size"], cfg.get("head_dim") or 16
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    E, F = cfg["num_experts"], cfg["moe_intermediate_size"]
    S, I = F * cfg["num_shared_experts"], cfg["intermediate_size"]
    out = {"token_embd.weight": (H, V), "output_norm.weight": (H,), "output.weight": (H, V)}
    n = cfg["num_hidden_layers"] + cfg.get("num_nextn_predict_layers", 0)
    for i in range(n):
        b = f"blk.{i}."
        out |= {b + "attn_norm.weight": (H,), b + "attn_output.weight": (nh * d, H), b + "ffn_norm.weight": (H,)}
        if v2:
            out |= {b + "attn_qkv.weight": (H, H + 2 * nkv * d), b + "attn_q_norm.weight": (d,),
                    b + "attn_k_norm.weight": (d,)}
        else:
            out |= {b + "attn_q.weight": (H, nh * d), b + "attn_k.weight": (H, nkv * d),
                    b + "attn_v.weight": (H, nkv * d)}
        if i < cfg["first_k_dense_replace"]:
            out |= {b + "ffn_gate.weight": (H, I), b + "ffn_up.weight": (H, I), b + "ffn_down.weight": (I, H)}
            continue
        out |= {b + "ffn_gate_inp.weight": (H, E), b + "ffn_gate_exps.weight": (H, F, E),
                b + "ffn_up_exps.weight": (H, F, E), b + "ffn_down_exps.weight": (F, H, E),
                b + "ffn_gate_shexp.weight": (H, S), b + "ffn_up_shexp.weight": (H, S),
                b + "ffn_down_shexp.weight": (S, H)}
        if v2:
            out[b + "exp_probs_b.bias"] = (E,)
        if i >= cfg["num_hidden_layers"]:
            out |= {b + "nextn.eh_proj.weight": (2 * H, H), b + "nextn.enorm.weight": (H,),
                    b + "nextn.hnorm.weight": (H,), b + "layer_output_norm.weight": (H,)}
    return out


@pytest.mark.parametrize("model", MODELS)
def test_tensor_names_shapes_and_types(tiny, exported, model):
    cfg = open_source(tiny(model)).config
    got = tensors(exported(model, "q8_0"))
    assert {n: s for n, (_, s) in got.items()} == expected_tensors(cfg, model == "ling-mini-2")
    for name, (qtype, ne) in got.items():
        f32 = len(ne) == 1 or name.endswith(("_norm.weight", ".bias", "ffn_gate_inp.weight"))
        assert qtype == ("F32" if f32 else "Q8_0"), name


# -- the Q/K permutation is llama.cpp's NORM rope, not just self-consistent ----------------------------

def test_rope_permute_turns_rotate_half_into_interleaved_pairs():
    d, n_head, x = 8, 2, torch.randn(5, 16)
    w = torch.randn(n_head * d, 16)
    theta = 1e4 ** (-torch.arange(0, d, 2).float() / d)   # [d/2]
    ang = torch.arange(5).float()[:, None] * theta          # [T, d/2]
    cos, sin = ang.cos(), ang.sin()

    def rotate_half(q):  # HF: pairs (i, i + d/2)
        a, b = q[..., : d // 2], q[..., d // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)

    def interleaved(q):  # llama.cpp LLAMA_ROPE_TYPE_NORM: pairs (2i, 2i + 1)
        a, b = q[..., 0::2], q[..., 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], -1).flatten(-2)

    hf = rotate_half((x @ w.T).view(5, n_head, d).transpose(0, 1))
    ll = interleaved((x @ gguf_ops.rope_permute(w, n_head).T).view(5, n_head, d).transpose(0, 1))
    # the same rotated vectors, dims reordered: every q.k score is unchanged
    torch.testing.assert_close(hf @ hf.transpose(1, 2), ll @ ll.transpose(1, 2))
    assert not torch.allclose(hf, ll)
    assert torch.equal(gguf_ops.rope_unpermute(gguf_ops.rope_permute(w, n_head), n_head), w)


# -- negative controls -------------------------------------------------------------------------------

def test_negative_qk_not_permuted_is_caught(tiny, exported, tmp_path, monkeypatch):
    good = metrics(forward(tiny("ling-lite")).logits, forward(exported("ling-lite", "f32")).logits)
    op = gguf_ops.OPS["split_qkv_rope_permute"]
    no_perm = lambda cfg, ts: list(torch.split(ts[0], list(gguf_ops.qkv_rows(cfg)), 0))  # noqa: E731
    monkeypatch.setitem(gguf_ops.OPS, "split_qkv_rope_permute", op.__class__(**{**op.__dict__, "forward": no_perm}))
    bad_path = tmp_path / "noperm.gguf"
    to_gguf_file(tiny("ling-lite"), bad_path, outtype="f32")
    monkeypatch.undo()
    bad = metrics(forward(tiny("ling-lite")).logits, forward(bad_path).logits)
    assert within(good, TOL["f32"]) and not within(bad, TOL["f32"]), (good, bad)
    assert bad["max_abs"] > 1e-2


@pytest.mark.parametrize("drop", [{"drop_tensors": ("blk.1.exp_probs_b.bias", "blk.2.exp_probs_b.bias",
                                                    "blk.3.exp_probs_b.bias")},
                                  {"drop_keys": ("bailingmoe2.expert_weights_scale",)}])
def test_negative_missing_routing_data_is_caught(tiny, exported, tmp_path, cli, drop):
    bad = rewrite(exported("ling-mini-2", "f32"), tmp_path / "bad.gguf", **drop)
    missing = (drop.get("drop_tensors") or drop["drop_keys"])[0]
    # fail closed: reading it as HF refuses and names what is missing
    code, _, err = cli("from-gguf", bad, tmp_path / "hf")
    assert_one_line_error(code, err, missing, "--llama-defaults")
    assert not (tmp_path / "hf").exists()
    # read the way llama.cpp runs it: loads, but the logits are wrong, and parity catches it
    ref = forward(tiny("ling-mini-2")).logits
    m = metrics(ref, forward(bad, llama_defaults=True).logits)
    assert not within(m, TOL["f32"]) and m["max_abs"] > 0.05, m
    assert cli("from-gguf", bad, tmp_path / "hf2", "--llama-defaults")[0] == 0
    notes = json.loads((tmp_path / "hf2" / "ling-convert.json").read_text())["notes"]["gguf"]["llama_defaults"]
    assert any(missing in i["key"] for i in notes)


def test_file_without_embedded_config_is_read_from_llama_keys(tiny, exported, tmp_path):
    bare = rewrite(exported("ling-mini-2", "f32"), tmp_path / "bare.gguf", drop_keys=("ling_convert.hf_config",))
    src = api.prepare(bare, "safetensors")[0]
    want = open_source(tiny("ling-mini-2")).config
    for k in ("hidden_size", "num_hidden_layers", "num_nextn_predict_layers", "routed_scaling_factor",
              "n_group", "topk_group", "first_k_dense_replace", "moe_intermediate_size", "partial_rotary_factor"):
        assert src.config[k] == want[k], k
    assert head_dim(src.config) == head_dim(want) and src.config["architectures"] == want["architectures"]
    m = metrics(forward(tiny("ling-mini-2")).logits, forward(bare).logits)
    assert within(m, TOL["f32"]), m


# -- options: --no-mtp, split files, F16 fallback, YaRN ---------------------------------------------------

def test_no_mtp_writes_block_count_and_nextn_consistently(tiny, tmp_path, cli):
    code, _, err = cli("to-gguf", tiny("ling-mini-2"), tmp_path / "m.gguf", "--no-mtp", "--outtype", "f32")
    assert code == 0, err
    got = kv(tmp_path / "m.gguf")
    assert got["bailingmoe2.block_count"] == 3 and got["bailingmoe2.nextn_predict_layers"] == 0
    assert not [n for n in tensors(tmp_path / "m.gguf") if n.startswith("blk.3.")]
    assert api.prepare(tmp_path / "m.gguf", "safetensors")[0].config["num_nextn_predict_layers"] == 0
    m = metrics(forward(tiny("ling-mini-2")).logits, forward(tmp_path / "m.gguf").logits)
    assert within(m, TOL["f32"])


def test_split_files_load_from_the_first_shard(tiny, exported, tmp_path, cli):
    code, _, err = cli("to-gguf", tiny("ling-mini-2"), tmp_path / "s.gguf", "--outtype", "f32",
                       "--split-max-size", "40K")
    assert code == 0, err
    files = sorted(tmp_path.glob("s-*-of-*.gguf"))
    assert len(files) > 2 and not (tmp_path / "s.gguf").exists()
    assert kv(files[0])["split.count"] == len(files)
    assert sum(len(tensors(f)) for f in files) == len(tensors(exported("ling-mini-2", "f32")))
    whole = api.prepare(exported("ling-mini-2", "f32"), "safetensors")[0]
    split = api.prepare(files[0], "safetensors")[0]
    assert all(torch.equal(whole.load(n), split.load(n)) for n in whole.keys())
    code, _, err = cli("to-gguf", tiny("ling-mini-2"), tmp_path / "s.gguf", "--split-max-size", "80K")
    assert_one_line_error(code, err, "already exists", "--force")
    assert cli("to-gguf", tiny("ling-mini-2"), tmp_path / "s.gguf", "--split-max-size", "80K", "--force")[0] == 0
    assert len(list(tmp_path.glob("s-*-of-*.gguf"))) < len(files)   # the old, longer set is gone


def test_rerun_replaces_splits_a_killed_rename_left_only_when_identical(tiny, tmp_path, cli):
    args = ("--outtype", "f32", "--split-max-size", "40K")
    ref = tmp_path / "ref"
    ref.mkdir()
    assert cli("to-gguf", tiny("ling-mini-2"), ref / "s.gguf", *args)[0] == 0
    files = sorted(ref.glob("s-*-of-*.gguf"))
    # A run killed while renaming: later splits in place, the first (the one readers open) not yet.
    killed = tmp_path / "killed"
    killed.mkdir()
    for f in files[1:]:
        (killed / f.name).write_bytes(f.read_bytes())
    code, _, err = cli("to-gguf", tiny("ling-mini-2"), killed / "s.gguf", *args)
    assert code == 0, err
    assert all((killed / f.name).read_bytes() == f.read_bytes() for f in files)
    # Someone else's file of the same name is never replaced without --force, and is left as it was.
    other = tmp_path / "other"
    other.mkdir()
    (other / files[1].name).write_bytes(b"not ours")
    code, _, err = cli("to-gguf", tiny("ling-mini-2"), other / "s.gguf", *args)
    assert_one_line_error(code, err, "--force")
    assert (other / files[1].name).read_bytes() == b"not ours"
    assert sorted(p.name for p in other.iterdir()) == [files[1].name]


def test_rows_not_fitting_the_block_fall_back_to_f16(tmp_path):
    src = write_tiny(tmp_path / "src", "ling-mini-2", moe_intermediate_size=48, moe_shared_expert_intermediate_size=48)
    to_gguf_file(src, tmp_path / "m.gguf", outtype="q8_0")
    got = tensors(tmp_path / "m.gguf")
    assert got["blk.1.ffn_down_exps.weight"][0] == "F16" and got["blk.1.ffn_down_shexp.weight"][0] == "F16"
    assert got["blk.1.ffn_up_exps.weight"][0] == "Q8_0"
    fb = json.loads((tmp_path / "m.gguf.ling-convert.json").read_text())["gguf"]["fallbacks"]
    assert set(fb) == {f"blk.{i}.{t}.weight" for i in (1, 2, 3) for t in ("ffn_down_exps", "ffn_down_shexp")}
    assert "48" in fb["blk.1.ffn_down_exps.weight"] and "F16" in fb["blk.1.ffn_down_exps.weight"]
    assert within(metrics(forward(src).logits, forward(tmp_path / "m.gguf").logits), TOL["q8_0"])


def test_yarn_rope_scaling_keys(tmp_path, exported):
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128, "beta_fast": 32, "beta_slow": 1}
    src = write_tiny(tmp_path / "src", "ling-mini-2", rope_scaling=yarn)
    to_gguf_file(src, tmp_path / "m.gguf", outtype="f32")
    got = kv(tmp_path / "m.gguf")
    k = "bailingmoe2.rope.scaling."
    assert {x: got[k + x] for x in ("type", "factor", "original_context_length", "yarn_beta_fast", "yarn_beta_slow")} \
        == {"type": "yarn", "factor": 4.0, "original_context_length": 128, "yarn_beta_fast": 32.0,
            "yarn_beta_slow": 1.0}
    assert api.prepare(tmp_path / "m.gguf", "safetensors")[0].config["rope_scaling"] == yarn
    assert not [x for x in kv(exported("ling-mini-2", "f32")) if ".rope.scaling." in x]   # unscaled: no keys


@pytest.mark.parametrize("fmt,route", [("bin", ["bin2st", "to-gguf"]), ("dcp", ["dcp2st", "to-gguf"])])
def test_any_source_format_reaches_gguf_in_one_command(tiny, tmp_path, cli, fmt, route):
    from ling_convert.formats import all_formats
    if fmt not in all_formats():
        pytest.skip(f"format {fmt} not in this build")
    src = tiny("ling-lite", "bin", 2) if fmt == "bin" else \
        api.convert(tiny("ling-lite"), tmp_path / "dcp", to="dcp").output
    code, _, err = cli("to-gguf", src, tmp_path / "m.gguf", "--outtype", "bf16")
    assert code == 0, err
    man = json.loads((tmp_path / "m.gguf.ling-convert.json").read_text())
    assert man["route"] == route and man["gguf"]["tensor_types"]["BF16"] > 0
    assert within(metrics(forward(tiny("ling-lite")).logits, forward(tmp_path / "m.gguf").logits), TOL["bf16"])


# -- bad input -----------------------------------------------------------------------------------------------

def _nothing_left(d: Path, *names: str) -> bool:
    return not any((d / n).exists() for n in names) and not list(d.glob(".*.partial"))


@pytest.mark.parametrize("model,arch", [("ling-lite", "BailingMoeLinearForCausalLM"),
                                        ("ling-mini-2", "BailingMoeLinearV2ForCausalLM")])
def test_hybrid_linear_is_refused(tmp_path, cli, model, arch):
    src = write_tiny(tmp_path / "hyb", model)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "architectures": [arch]}))
    code, _, err = cli("to-gguf", src, tmp_path / "h.gguf")
    assert_one_line_error(code, err, "not supported by llama.cpp", arch)
    assert _nothing_left(tmp_path, "h.gguf", "h.gguf.ling-convert.json")
    code, _, err = cli("convert", src, tmp_path / "h.gguf", "--to", "gguf")   # the generic path refuses too
    assert code == 2 and _nothing_left(tmp_path, "h.gguf"), err


def test_bad_input_never_shows_a_traceback(tmp_path):
    src = write_tiny(tmp_path / "src", "ling-mini-2", tokenizer=False)
    r = run_subprocess("to-gguf", src, tmp_path / "m.gguf")
    assert_one_line_error(r.returncode, r.stderr, "--tokenizer-dir")


def test_missing_tokenizer_names_the_flag(tmp_path, cli, tiny):
    src = write_tiny(tmp_path / "src", "ling-mini-2", tokenizer=False)
    code, _, err = cli("to-gguf", src, tmp_path / "m.gguf")
    assert_one_line_error(code, err, "tokenizer.json", "--tokenizer-dir")
    assert _nothing_left(tmp_path, "m.gguf")
    code, _, err = cli("to-gguf", src, tmp_path / "m.gguf", "--tokenizer-dir", tiny("ling-mini-2"))
    assert code == 0, err


def test_existing_output_needs_force(tiny, tmp_path, cli):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep me")
    code, _, err = cli("to-gguf", tiny("ling-lite"), out)
    assert_one_line_error(code, err, "already exists", "--force")
    assert out.read_bytes() == b"keep me" and _nothing_left(tmp_path, "m.gguf.ling-convert.json")
    assert cli("to-gguf", tiny("ling-lite"), out, "--force")[0] == 0
    assert out.read_bytes()[:4] == b"GGUF"


def test_v1_dense_lead_layers_are_refused(tmp_path, cli):
    src = write_tiny(tmp_path / "src", "ling-lite", first_k_dense_replace=1)
    code, _, err = cli("to-gguf", src, tmp_path / "m.gguf")
    assert_one_line_error(code, err, "dense", "first_k_dense_replace")
    assert _nothing_left(tmp_path, "m.gguf")


def test_corrupt_gguf_is_one_line(tmp_path, cli, exported):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(exported("ling-lite", "f32").read_bytes()[:5000])
    code, _, err = cli("from-gguf", bad, tmp_path / "hf")
    assert_one_line_error(code, err, "cut.gguf")
    assert not (tmp_path / "hf").exists()


# -- llama.cpp itself (optional: llama-cpp-python has no wheel; skipped where it is not built) ----------------
# Measured with llama-cpp-python 0.3.36 (llama.cpp 0c1e57098), F32 KV cache, vs the reference on the source:
# f32 max |dlogit| 1.7e-6 (lite), 1.9e-6 (plus), 5.3e-6 (mini-2); q8_0 mean KL <= 2.0e-3, top-1 >= 0.875.

def _llama_logits(path: Path) -> torch.Tensor:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False,
                          type_k=0, type_v=0)   # F32 KV cache: the default f16 cache adds ~1e-3
    llm.eval(TOKENS.tolist())
    return torch.from_numpy(llm.scores[: len(TOKENS)].copy())[None]


@pytest.mark.parametrize("model,outtype,tol", [("ling-lite", "f32", {"max_abs": 1e-4}),
                                               ("ling-plus", "f32", {"max_abs": 1e-4}),
                                               ("ling-mini-2", "f32", {"max_abs": 1e-4}),
                                               ("ling-mini-2", "q8_0", TOL["q8_0"])])
def test_llama_cpp_runs_the_export(tiny, exported, model, outtype, tol):
    m = metrics(forward(tiny(model)).logits, _llama_logits(exported(model, outtype)))
    assert within(m, tol), m


def test_llama_cpp_loads_no_mtp_and_split_files(tiny, tmp_path, cli):
    pytest.importorskip("llama_cpp")
    ref = forward(tiny("ling-mini-2")).logits
    assert cli("to-gguf", tiny("ling-mini-2"), tmp_path / "n.gguf", "--outtype", "f32", "--no-mtp")[0] == 0
    assert cli("to-gguf", tiny("ling-mini-2"), tmp_path / "s.gguf", "--outtype", "f32",
               "--split-max-size", "100K")[0] == 0
    for path in (tmp_path / "n.gguf", sorted(tmp_path.glob("s-00001-of-*.gguf"))[0]):
        assert within(metrics(ref, _llama_logits(path)), {"max_abs": 1e-4}), path
