"""`verify` judges every weight: the weights pass, the every-expert pass, the logits pass's first
diverging layer, and negative controls that only these passes catch (the logits pass alone, i.e. the
old `verify`, lets each of them through: asserted with --logits-only)."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ling_convert.verify.bounds import cast_bound, e4m3_bound, q4_0_bound, q8_0_bound
from ling_convert.quant.fp8_block import dequantize, quantize

from test_verify import write_variant

V2 = "ling-mini-2"
DEAD = (1, 7)          # (layer, expert) no prompt can route to: its expert_bias is far below the rest


def _bury(s, layer=DEAD[0], experts=(DEAD[1],)):
    b = s[f"model.layers.{layer}.mlp.gate.expert_bias"].clone()
    for e in experts:
        b[e] = -1e4
    s[f"model.layers.{layer}.mlp.gate.expert_bias"] = b


def _perturb(s, name, eps=1e-3):
    g = torch.Generator().manual_seed(1)
    s[name] = (s[name].float() + eps * torch.randn(s[name].shape, generator=g)).to(s[name].dtype)


def _verify(cli, a, b, *extra):
    code, out, err = cli("verify", a, b, "--json", *extra)
    return code, json.loads(out) if out.strip() else {}, err


# -- negative controls ---------------------------------------------------------------------

def test_unroutable_expert_perturbed_is_named(tmp_path, cli):
    name = f"model.layers.{DEAD[0]}.mlp.experts.{DEAD[1]}.down_proj.weight"
    a = write_variant(tmp_path / "a", V2, _bury)
    b = write_variant(tmp_path / "b", V2, lambda s: (_bury(s), _perturb(s, name)))
    code, rep, _ = _verify(cli, a, b, "--logits-only")
    assert code == 0 and rep["exact"], "the logits cannot see an expert no prompt routes to"
    code, rep, _ = _verify(cli, a, b)
    assert code == 1 and name in rep["failure"]
    assert [r["tensor"] for r in rep["weights"]["failed"]] == [name]
    assert rep["experts"]["failed"] == [f"model.layers.{DEAD[0]}.mlp.experts.{DEAD[1]}"]
    assert rep["logits"]["passed"] and rep["logits"]["exact"]


def test_unrouted_experts_swapped_are_named(tmp_path, cli):
    layer, e, f = DEAD[0], 6, 7

    def swap(s):
        _bury(s, layer, (e, f))
        for p in ("gate_proj", "up_proj", "down_proj"):
            x, y = f"model.layers.{layer}.mlp.experts.{e}.{p}.weight", f"model.layers.{layer}.mlp.experts.{f}.{p}.weight"
            s[x], s[y] = s[y], s[x]
    a = write_variant(tmp_path / "a", V2, lambda s: _bury(s, layer, (e, f)))
    b = write_variant(tmp_path / "b", V2, swap)
    assert _verify(cli, a, b, "--logits-only")[0] == 0
    code, rep, _ = _verify(cli, a, b)
    assert code == 1 and rep["experts"]["swapped"] == [[layer, e, f]]
    assert f"layer {layer}: experts {e} and {f} swapped" in rep["failure"]
    failed = {r["tensor"] for r in rep["weights"]["failed"]}
    assert f"model.layers.{layer}.mlp.experts.{e}.up_proj.weight" in failed
    assert f"model.layers.{layer}.mlp.experts.{f}.up_proj.weight" in failed


def test_fp8_scale_block_doubled_names_the_weight(tiny, tmp_path, cli):
    src = tiny(V2, "safetensors")
    assert cli("quantize", src, tmp_path / "q", "--scheme", "fp8-block", "--block-size", "32")[0] == 0
    weight = "model.layers.2.mlp.experts.5.up_proj.weight"
    for f in (tmp_path / "q").glob("*.safetensors"):
        t = load_file(str(f))
        if weight + "_scale_inv" in t:
            s = t[weight + "_scale_inv"].clone()
            s[0, 1] *= 2
            t[weight + "_scale_inv"] = s
            save_file(t, str(f), metadata={"format": "pt"})
    code, rep, _ = _verify(cli, src, tmp_path / "q")
    assert code == 1 and rep["edge_class"] == "fp8" and weight in rep["failure"]
    assert [r["tensor"] for r in rep["weights"]["failed"]] == [weight]
    assert _verify(cli, src, tmp_path / "q", "--logits-only")[0] == 0


def _scale_one_block(path, tensor: str, factor: float) -> None:
    """Multiply the float16 scale of the first q8_0 block of `tensor` in place."""
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == tensor)
    assert gguf.GGMLQuantizationType(t.tensor_type) == gguf.GGMLQuantizationType.Q8_0
    with open(path, "r+b") as f:
        f.seek(int(t.data_offset))
        d = np.frombuffer(f.read(2), dtype=np.float16)
        f.seek(int(t.data_offset))
        f.write((d * np.float16(factor)).tobytes())


def test_q8_0_block_scale_changed_fails(tiny, tmp_path, cli):
    src = tiny(V2, "safetensors")
    out = tmp_path / "m.gguf"
    assert cli("to-gguf", src, out, "--outtype", "q8_0")[0] == 0
    _scale_one_block(out, "blk.2.ffn_up_exps.weight", 1.25)
    code, rep, _ = _verify(cli, src, out)
    assert code == 1 and rep["edge_class"] == "gguf-q8_0"
    assert any(r["tensor"].startswith("model.layers.2.mlp.experts.0.up_proj") for r in rep["weights"]["failed"])
    assert _verify(cli, src, out, "--logits-only")[0] == 0


# -- edge class from the manifest, output shape --------------------------------------------

def test_safetensors_imported_from_q8_0_is_judged_as_q8_0(tiny, tmp_path, cli):
    src = tiny("ling-lite", "safetensors")
    assert cli("to-gguf", src, tmp_path / "m.gguf", "--outtype", "q8_0")[0] == 0
    assert cli("convert", tmp_path / "m.gguf", tmp_path / "st", "--to", "safetensors")[0] == 0
    code, rep, err = _verify(cli, src, tmp_path / "st")
    assert code == 0 and rep["edge_class"] == "gguf-q8_0", (rep.get("failure"), err)
    assert rep["weights"]["rules"].get("gguf:Q8_0") and rep["weights"]["passed"]


def test_first_diverging_layer_is_reported(tiny, tmp_path, cli):
    bad = write_variant(tmp_path / "bad", "ling-lite", lambda s: _perturb(s, "model.layers.1.attention.dense.weight"))
    code, rep, _ = _verify(cli, tiny("ling-lite", "safetensors"), bad, "--logits-only")
    assert code == 1 and rep["logits"]["first_diverging_layer"] == 1
    assert [h["max_abs"] == 0.0 for h in rep["logits"]["hidden"]] == [True, False]
    assert "first diverging layer 1" in rep["failure"] and not rep["weights"] and not rep["experts"]


def test_pass_switches_and_single_checkpoint(tiny, cli):
    a, b = tiny("ling-lite", "bin"), tiny("ling-lite", "safetensors")
    code, rep, _ = _verify(cli, a, b, "--weights-only")
    assert code == 0 and rep["weights"]["compared"] > 0 and not rep["logits"] and not rep["experts"]
    code, rep, _ = _verify(cli, a, b)
    assert code == 0 and rep["weights"]["passed"] and rep["experts"]["passed"] and rep["logits"]["passed"]
    code, out, err = cli("verify", a, b)
    assert code == 0 and "layer 1: prompt routes 4/4 experts; all 4 compared directly" in out
    assert all(p in out for p in ("weights", "experts", "logits"))
    code, out, _ = cli("verify", a, "--json", "--tokens", "1,2,3")
    rep = json.loads(out)
    assert code == 0 and set(rep) == {"a", "tokens", "summary"}
    assert cli("verify", a, b, "--logits-only", "--weights-only")[0] == 2


# -- the bounds themselves: correct encoders always inside, wrong ones outside --------------

def _sample(seed: int, rows=64, cols=256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.logspace(-9, 3, cols)          # reaches the e4m3 subnormal range of each block
    return (torch.randn(rows, cols, generator=g) * mag).bfloat16().float()


@pytest.mark.parametrize("seed", range(4))
def test_fp8_bound_holds_and_catches_a_doubled_scale(seed):
    x = _sample(seed)
    q, s = quantize(x, 32)
    se = s.repeat_interleave(32, 0).repeat_interleave(32, 1)
    assert ((x - dequantize(q, s, 32, dtype=torch.float32)).abs() <= e4m3_bound(x, se)).all()
    s[1, 2] *= 2
    over = (x - dequantize(q, s, 32, dtype=torch.float32)).abs() > e4m3_bound(x, se)
    assert over[32:64, 64:96].any() and not over[:32].any()


@pytest.mark.parametrize("qtype,bound", [("Q8_0", q8_0_bound), ("Q4_0", q4_0_bound)])
@pytest.mark.parametrize("seed", range(4))
def test_gguf_bounds_hold_and_catch_a_changed_block(qtype, bound, seed):
    qt = gguf.GGMLQuantizationType[qtype]
    x = _sample(seed)
    enc = gguf.quantize(x.numpy(), qt)
    assert ((x - torch.from_numpy(gguf.dequantize(enc, qt))).abs() <= bound(x)).all()
    enc = enc.copy()
    enc.view(np.uint8)[5, 2 * 18 if qtype == "Q4_0" else 2 * 34:][:2].view(np.float16)[0] *= np.float16(1.5)
    over = (x - torch.from_numpy(gguf.dequantize(enc, qt))).abs() > bound(x)
    assert over[5].any() and not over[:5].any()


def test_cast_bound_is_half_an_ulp():
    x = _sample(0)
    for dt in (torch.float16, torch.bfloat16):
        assert ((x - x.to(dt).float()).abs() <= cast_bound(x, dt)).all()
    assert not (((x + cast_bound(x, torch.float16) * 3) - x.half().float()).abs()
                <= cast_bound(x, torch.float16)).all()
