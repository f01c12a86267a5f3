"""Property tests: the Megatron and GGUF key maps, mapped then inverse-mapped, are the identity on every
valid tensor name (and, through their named ops, on the tensors) of random small Ling configs.

Valid names come from `Architecture.expected_names(cfg)`, shapes from `testing.tensor_shapes(cfg)`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ling_convert.model import ops
from ling_convert.model.arch import detect_architecture
from ling_convert.converters.gguf import FromGgufOptions, from_gguf, to_gguf
from ling_convert.formats.gguf.writer import GgufOptions
from ling_convert.converters.dcp_keymap import KeyMap
from ling_convert.core.source import Source, TensorInfo
from ling_convert.testing import tensor_shapes, tiny_config

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def configs(draw, gguf: bool = False):
    """A random small config of a random Ling family (within what the target format supports)."""
    model = draw(st.sampled_from(["ling-lite", "ling-plus", "ling-mini-2"]))
    v2 = model == "ling-mini-2"
    layers = draw(st.integers(1, 4))
    kv = draw(st.sampled_from([1, 2]))
    heads = kv * draw(st.integers(1, 3))
    d = draw(st.sampled_from([8, 16]))
    over = {"num_hidden_layers": layers, "num_key_value_heads": kv, "num_attention_heads": heads,
            "head_dim": d, "hidden_size": heads * d}
    if v2:   # group-limited routing: experts split evenly over n_group groups
        n_group = draw(st.sampled_from([1, 2, 4]))
        over |= {"n_group": n_group, "topk_group": draw(st.integers(1, n_group)),
                 "num_experts": n_group * draw(st.integers(1, 3)),
                 "num_nextn_predict_layers": draw(st.integers(0, 2)),
                 "first_k_dense_replace": draw(st.integers(0, layers - 1))}
        over["num_experts_per_tok"] = draw(st.integers(1, over["num_experts"] // n_group * over["topk_group"]))
    else:    # llama.cpp's bailingmoe has no dense lead layers
        over |= {"num_experts": draw(st.integers(2, 6)),
                 "first_k_dense_replace": 0 if gguf else draw(st.integers(0, layers - 1))}
        over["num_experts_per_tok"] = draw(st.integers(1, over["num_experts"]))
    return tiny_config(model, **over)


def _names(cfg: dict) -> list[str]:
    return list(detect_architecture(cfg).expected_names(cfg))


# -- Megatron (schemas/megatron via megatron/keymap.py) -----------------------------------

def _to_megatron(km: KeyMap, name: str) -> tuple:
    hit = km.match_hf(name)
    assert hit is not None, f"no Megatron rule exports {name}"
    rule, slot, vals = hit
    key = rule.megatron.format(**vals)
    return key, tuple(vals[a] for a in rule.axes), slot


def _to_hf(km: KeyMap, key: str, axes: tuple, slot: int) -> str:
    hit = km.match_megatron(key)
    assert hit is not None, f"no rule imports {key}"
    rule, vals = hit
    return rule.hf[slot].format(**vals, **dict(zip(rule.axes, axes)))


@SETTINGS
@given(configs())
def test_megatron_names_round_trip(cfg):
    km = KeyMap(cfg)
    names = _names(cfg)
    there = {n: _to_megatron(km, n) for n in names}
    assert len(set(there.values())) == len(names)            # no two names share a (key, axis, slot)
    for n, (key, axes, slot) in there.items():
        assert _to_hf(km, key, axes, slot) == n


@SETTINGS
@given(configs(), st.integers(0, 2**31 - 1))
def test_megatron_ops_round_trip(cfg, seed):
    """HF -> Megatron with each rule's op inverted, then forward again: the same tensors."""
    km, shapes = KeyMap(cfg), tensor_shapes(cfg)
    g = torch.Generator().manual_seed(seed)
    groups: dict[tuple, dict[int, str]] = {}
    for n in _names(cfg):
        key, axes, slot = _to_megatron(km, n)
        groups.setdefault((key, axes), {})[slot] = n
    for (key, _), slots in groups.items():
        rule, _ = km.match_megatron(key)
        assert sorted(slots) == list(range(len(rule.hf))), (key, slots)   # every op input is present
        fn, params = km.op(rule)
        hf = [torch.randn(shapes[slots[i]], generator=g) for i in range(len(rule.hf))]
        mg = ops.apply(fn, hf, inverse=True, **params)
        back = ops.apply(fn, mg, **params)
        assert len(back) == len(hf) and all(torch.equal(a, b) for a, b in zip(back, hf)), key


# -- GGUF (schemas/gguf via converters/gguf.py, model/gguf_ops.py) --------------------------------

def _source(cfg: dict, seed: int) -> tuple[Source, dict]:
    g = torch.Generator().manual_seed(seed)
    data = {n: torch.randn(s, generator=g) for n, s in tensor_shapes(cfg).items()}
    infos = {n: TensorInfo(tuple(t.shape), torch.float32) for n, t in data.items()}
    return Source(Path("mem"), "safetensors", cfg, infos, {n: (lambda n=n: data[n]) for n in data}), data


@SETTINGS
@given(configs(gguf=True), st.integers(0, 2**31 - 1))
def test_gguf_map_round_trip(cfg, seed):
    """to-gguf then from-gguf (lazy edges, no files): same names, shapes and, in f32, the same values;
    lm_head differs only where norm_head is baked into output.weight (a declared, one-way op)."""
    src, data = _source(cfg, seed)
    gg = to_gguf(src, GgufOptions())
    back = from_gguf(gg.derive(format="gguf"), FromGgufOptions())
    assert set(back.infos) == set(src.infos)
    assert all(back.infos[n].shape == src.infos[n].shape for n in src.infos)
    baked = {"lm_head.weight"} if cfg.get("norm_head") else set()
    for n in src.infos:
        if n not in baked:
            assert torch.equal(back.load(n), data[n]), n
