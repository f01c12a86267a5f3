"""`dcp2st --force-fp8` is byte-identical to Ling-V2's own converter on the same DCP.

`ling_v2_fp8` below re-implements, independently of ling_convert, the published recipe of
inclusionAI/Ling-V2 tools/convert_dcp_to_safetensors.py as published: DCP keys -> HF names (QKV de-interleaved per query group, fc1 chunked
into gate/up, stacked experts indexed, MTP as layer num_layers), then per_block_cast_to_fp8 on
every matching 2-D weight: zero-pad to 128, block amax as float clamped at 1e-4, / 448, rounded up
to 2^ceil(log2(.)) only for attention.dense and routed gate/up, q = (x / scale).to(e4m3),
cropped; float32 `_scale_inv`. The DCP is read with torch's own loader, as the tool does.
Shapes are off the 128 grid on purpose (ragged edge blocks).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dcp_fixtures as fx  # noqa: E402

from ling_convert.cli import main  # noqa: E402
from ling_convert.testing import write_tiny  # noqa: E402

V2 = "ling-mini-2"
# Several 128-blocks per weight with ragged edges: qkv [384, 288], experts [160, 288], dense fc1 [400, 288].
SHAPE = dict(hidden_size=288, intermediate_size=400, moe_intermediate_size=160,
             moe_shared_expert_intermediate_size=160, head_dim=48, num_experts=8)
BLOCK, FP8_MAX = 128, 448.0


# -- the independent recipe ------------------------------------------------------------

def _load_dcp(path: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    md = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    keys = {k for k, v in md.items() if isinstance(v, TensorStorageMetadata) and
            not any(s in k for s in ("optimizer", "_extra_state", "rng_state", "chained_0", "rerun_state_machine"))}
    return _load_state_dict_from_keys(keys, checkpoint_id=str(path))


def _qkv_to_hf(w: torch.Tensor, groups: int, heads: int, hd: int) -> torch.Tensor:
    q, k, v = [], [], []
    for g in w.chunk(groups, dim=0):        # each query group is [its q heads | k | v]
        a, b, c = g.split([heads // groups * hd, hd, hd])
        q.append(a), k.append(b), v.append(c)
    return torch.cat(q + k + v)


def _hf_names(dcp: dict, args: dict) -> dict[str, torch.Tensor]:
    """The weights Ling's converter quantises, under their HF names."""
    out, L = {}, args["num_layers"]
    for key, t in dcp.items():
        m = re.match(r"decoder\.layers\.(\d+)\.(.+)", key) or re.match(r"mtp\.layers\.(\d+)\.transformer_layer\.(.+)", key)
        if not m:
            continue
        n = int(m.group(1)) + (L if key.startswith("mtp.") else 0)
        p, s = f"model.layers.{n}.", m.group(2)
        if s == "self_attention.linear_qkv.weight":
            out[p + "attention.query_key_value.weight"] = _qkv_to_hf(
                t, args["num_query_groups"], args["num_attention_heads"], args["kv_channels"])
        elif s == "self_attention.linear_proj.weight":
            out[p + "attention.dense.weight"] = t
        elif s in ("mlp.linear_fc1.weight", "mlp.shared_experts.linear_fc1.weight"):
            pre = p + s.replace("linear_fc1.weight", "")
            out[pre + "gate_proj.weight"], out[pre + "up_proj.weight"] = t.chunk(2, dim=0)
        elif s in ("mlp.linear_fc2.weight", "mlp.shared_experts.linear_fc2.weight"):
            out[p + s.replace("linear_fc2", "down_proj")] = t
        elif s == "mlp.experts.experts.linear_fc1.weight":
            for e in range(args["num_experts"]):
                out[p + f"mlp.experts.{e}.gate_proj.weight"], out[p + f"mlp.experts.{e}.up_proj.weight"] = \
                    t[e].chunk(2, dim=0)
        elif s == "mlp.experts.experts.linear_fc2.weight":
            for e in range(args["num_experts"]):
                out[p + f"mlp.experts.{e}.down_proj.weight"] = t[e]
    return out


def per_block_cast_to_fp8(x: torch.Tensor, ue8m0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = x.shape
    pm, pn = math.ceil(m / BLOCK) * BLOCK, math.ceil(n / BLOCK) * BLOCK
    padded = torch.zeros((pm, pn), dtype=x.dtype)
    padded[:m, :n] = x
    view = padded.view(pm // BLOCK, BLOCK, pn // BLOCK, BLOCK)
    amax = view.abs().float().amax(dim=(1, 3), keepdim=True).clamp(min=1e-4)
    scale = amax / FP8_MAX
    if ue8m0:
        scale = torch.pow(2.0, torch.ceil(torch.log2(scale.clamp(min=1e-10))))
    q = (view / scale).to(torch.float8_e4m3fn)
    return q.view(pm, pn)[:m, :n].contiguous(), scale.view(pm // BLOCK, pn // BLOCK)


def ling_v2_fp8(dcp_dir: Path, args: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, w in _hf_names(_load_dcp(dcp_dir), args).items():
        ue8m0 = name.endswith("attention.dense.weight") or ("mlp.experts" in name and "down_proj" not in name)
        out[name], out[name + "_scale_inv"] = per_block_cast_to_fp8(w, ue8m0)
    return out


# -- the comparison ----------------------------------------------------------------------

def _ours(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            tensors.update({k: sf.get_tensor(k) for k in sf.keys()})
    return tensors


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("lingfp8")
    hf = write_tiny(root / "hf", V2, **SHAPE)
    dcp = fx.write_dcp(root / "dcp", fx.megatron_state(V2, rows=384, **SHAPE), fx.tensor_parallel)
    args = fx.megatron_args(V2, **SHAPE)
    fx.write_common(dcp, args)
    return dcp, hf, args, ling_v2_fp8(dcp, args)


def _dcp2st(case, out: Path, *extra) -> dict[str, torch.Tensor]:
    dcp, hf, _, _ = case
    assert main(["dcp2st", str(dcp), str(out), "--force-fp8", "--tokenizer-dir", str(hf), *extra]) == 0
    return _ours(out)


def test_default_dcp2st_fp8_is_byte_identical_to_ling_v2(case, tmp_path):
    ling = case[3]
    ours = _dcp2st(case, tmp_path / "out", "--max-shard-size", "2MB")
    assert sum(n.endswith("_scale_inv") for n in ling) > 80
    for name, t in ling.items():
        assert ours[name].dtype == t.dtype and ours[name].shape == t.shape, name
        assert _raw(ours[name]) == _raw(t), name
    # Our own additions stay: total_size counts the bytes written, bf16 modules are declared.
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(len(_raw(t)) for t in ours.values())
    qc = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]
    assert qc["ignored_layers"] == qc["modules_to_not_convert"]
    assert {"lm_head", "model.layers.1.mlp.gate"} <= set(qc["ignored_layers"]) and "scale_fmt" not in qc


def test_float_scales_differ_exactly_where_ling_uses_ue8m0(case, tmp_path):
    """Negative control: exact scales match Ling's tool only on the tensors it does not round."""
    ling = case[3]
    ours = _dcp2st(case, tmp_path / "out", "--scale-fmt", "float")
    differ = {n for n, t in ling.items() if n.endswith("_scale_inv") and _raw(ours[n]) != _raw(t)}
    rounded = {n + "_scale_inv" for n in ling if not n.endswith("_scale_inv") and
               (n.endswith("attention.dense.weight") or ("mlp.experts" in n and "down_proj" not in n))}
    assert differ and differ <= rounded
    assert all(_raw(ours[n]) == _raw(ling[n]) for n in ling if n.endswith("_scale_inv") and n not in rounded)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"].get("scale_fmt") is None
