"""MindIE layouts: to-mindie {lite|plus} [--base] and from-mindie on the tiny v1 models.

Expected values are stated here explicitly; they come from inclusionAI/Ling inference/mindie/
(model_*_config.json, config*.json) and the README's MindIE section.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

from ling_convert import api
from ling_convert.cli import main
from ling_convert.converters import all_edges
from ling_convert.formats import detect_format
from ling_convert.formats import safetensors as st
from ling_convert.formats.mindie.checkpoint import validate_mindie_dir
from ling_convert.formats.mindie.config import recipe_config, to_mindie_config
from ling_convert.core.schemas import schemas_dir
from ling_convert.testing import tiny_config, write_tiny

TOKENS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 64]])
EIGHT = [0, 1, 2, 3, 4, 5, 6, 7]

# Tiny checkpoints: (tiny model, config overrides). Base-shaped models carry the HF base quirks
# the public files show: lite-base has head_dim 0, rms 1e-05 and 0.1 dropouts.
MODELS = {
    "lite-chat": ("ling-lite", {}),
    "lite-base": ("ling-lite", {"head_dim": 0, "rms_norm_eps": 1e-05, "embedding_dropout": 0.1,
                                "output_dropout": 0.1}),
    "plus-chat": ("ling-plus", {}),
    "plus-base": ("ling-plus", {"rms_norm_eps": 1e-05}),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mindie")


@pytest.fixture(scope="module")
def src(root):
    cache = {}

    def make(key: str, fmt: str = "safetensors", shards: int = 2, **extra) -> Path:
        name = f"{key}-{fmt}-{shards}-" + "-".join(f"{k}{v}" for k, v in sorted(extra.items()))
        if name not in cache:
            model, over = MODELS.get(key, (key, {}))
            cache[name] = write_tiny(root / name, model, fmt=fmt, shards=shards, **{**over, **extra})
        return cache[name]
    return make


def run(*args) -> int:
    return main([str(a) for a in args])


def to_mindie(src_dir: Path, out: Path, variant: str, *extra) -> Path:
    assert run("to-mindie", variant, src_dir, out, *extra) == 0
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    s = st.open_source(path)
    return {n: s.load(n) for n in s.keys()}


def assert_bit_exact(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    for n in ta:
        assert ta[n].dtype == tb[n].dtype and torch.equal(ta[n].view(torch.uint8), tb[n].view(torch.uint8)), n


def schema(name: str) -> dict:
    return json.loads((schemas_dir() / "mindie" / f"{name}.schema.json").read_text())


def flat(tree, prefix="") -> dict:
    if isinstance(tree, dict):
        return {k2: v2 for k, v in tree.items() for k2, v2 in flat(v, f"{prefix}{k}.").items()}
    if isinstance(tree, list) and tree and isinstance(tree[0], dict):
        return {k2: v2 for i, v in enumerate(tree) for k2, v2 in flat(v, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def logits(path: Path) -> torch.Tensor:
    from ling_convert.reference import run_reference
    s, _ = api.prepare(path, "safetensors")
    return run_reference(s.config, s.load, TOKENS).logits


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name in (out.name, f".{out.name}.partial")]


# -- the four variants ---------------------------------------------------------------------

# Model-config fields the public recipe fixes for every variant and that do not depend on size or
# tokenizer (published "common" values); the tiny HF configs share them, so MindIE must keep them.
RECIPE_FIXED = {"architectures": ["BailingMoeForCausalLM"], "model_type": "bailing_moe", "first_k_dense_replace": 0,
                "hidden_act": "silu", "norm_topk_prob": True, "rope_scaling": None, "rope_theta": 600000,
                "tie_word_embeddings": False, "use_bias": False, "use_qkv_bias": False, "norm_head": True,
                "norm_softmax": False, "attention_dropout": 0.0, "pretraining_tp": 1, "use_cache": True,
                "torch_dtype": "bfloat16"}

# Per variant: the size fields MindIE reads, as the tiny models have them, and the keys dropped.
EXPECTED_MODEL = {
    "lite-chat": ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "vocab_size": 320, "num_experts": 4, "num_shared_experts": 1, "num_experts_per_tok": 2,
                   "moe_intermediate_size": 32, "intermediate_size": 128, "max_position_embeddings": 512,
                   "rms_norm_eps": 1e-06, "embedding_dropout": 0.0, "output_dropout": 0.0}, set()),
    "lite-base": ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                   "vocab_size": 320, "num_experts": 4, "num_shared_experts": 1, "num_experts_per_tok": 2,
                   "moe_intermediate_size": 32, "intermediate_size": 128, "max_position_embeddings": 512,
                   "rms_norm_eps": 1e-05, "embedding_dropout": 0.1, "output_dropout": 0.1}, {"head_dim"}),
    "plus-chat": ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
                   "head_dim": 16, "vocab_size": 320, "num_experts": 4, "num_shared_experts": 1,
                   "num_experts_per_tok": 2, "moe_intermediate_size": 32, "rms_norm_eps": 1e-05}, set()),
    "plus-base": ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2,
                   "head_dim": 16, "vocab_size": 320, "num_experts": 4, "num_shared_experts": 1,
                   "num_experts_per_tok": 2, "moe_intermediate_size": 32, "rms_norm_eps": 1e-05}, set()),
}

# Service config per variant (single-node lite, two-node plus), as lite/config*.json and plus/config*.json.
EXPECTED_SERVICE = {
    "lite": {"Version": "1.1.0", "ServerConfig.ipAddress": "127.0.0.1", "ServerConfig.managementIpAddress": "127.0.0.2",
             "ServerConfig.port": 1025, "ServerConfig.managementPort": 1026, "ServerConfig.metricsPort": 1027,
             "ServerConfig.interCommTLSEnabled": True, "ServerConfig.interCommPort": 1121,
             "ServerConfig.httpsEnabled": False, "ServerConfig.openAiSupport": "vllm",
             "BackendConfig.npuDeviceIds": [EIGHT], "BackendConfig.multiNodesInferEnabled": False,
             "BackendConfig.interNodeTLSEnabled": True, "BackendConfig.multiNodesInferPort": 1120,
             "BackendConfig.ModelDeployConfig.ModelConfig.0.worldSize": 8,
             "BackendConfig.ModelDeployConfig.ModelConfig.0.modelName": "bailing_moe",
             "BackendConfig.ModelDeployConfig.ModelConfig.0.backendType": "atb",
             "BackendConfig.ModelDeployConfig.ModelConfig.0.trustRemoteCode": False,
             # 14000 / 8192 in the recipe, capped at the tiny model's max_position_embeddings 512
             "BackendConfig.ModelDeployConfig.maxSeqLen": 512, "BackendConfig.ModelDeployConfig.maxInputTokenLen": 512,
             "BackendConfig.ScheduleConfig.maxPrefillTokens": 8192, "BackendConfig.ScheduleConfig.cacheBlockSize": 128},
}
EXPECTED_SERVICE["plus"] = {**EXPECTED_SERVICE["lite"], "ServerConfig.interCommTLSEnabled": False,
                            "BackendConfig.multiNodesInferEnabled": True, "BackendConfig.interNodeTLSEnabled": False,
                            "BackendConfig.ModelDeployConfig.ModelConfig.0.worldSize": 16}


@pytest.mark.parametrize("key", list(MODELS))
def test_to_mindie_variant(src, tmp_path, key):
    variant, kind = key.split("-")
    s = src(key)
    out = to_mindie(s, tmp_path / "out", variant, *(["--base"] if kind == "base" else []))
    hf = json.loads((s / "config.json").read_text())
    cfg = json.loads((out / "config.json").read_text())

    # weights: bit-exact, and MindIE finds every tensor of the source
    assert_bit_exact(s, out)
    # model config: the recipe's fixed fields, the sizes, the dropped keys; nothing else changes
    fields, dropped = EXPECTED_MODEL[key]
    assert {k: cfg[k] for k in RECIPE_FIXED} == RECIPE_FIXED
    assert {k: cfg.get(k) for k in fields} == fields
    assert cfg == {k: v for k, v in hf.items() if k not in dropped}
    assert json.loads((out / "config.json.bak").read_text()) == hf
    jsonschema.validate(cfg, schema("model_config"))

    # service config: field by field as the recipe's file for this variant, modelWeightPath -> OUT
    svc = json.loads((out / "mindie-service/config.json").read_text())
    jsonschema.validate(svc, schema("service_config"))
    f = flat(svc)
    assert {k: f[k] for k in EXPECTED_SERVICE[variant]} == EXPECTED_SERVICE[variant]
    assert f["BackendConfig.ModelDeployConfig.ModelConfig.0.modelWeightPath"] == str(out.resolve())

    # rank table only for plus (placeholders until the node / NPU IPs are given)
    assert (out / "rank_table.json").exists() == (variant == "plus")
    problems = validate_mindie_dir(out)
    if variant == "plus":
        rt = json.loads((out / "rank_table.json").read_text())
        jsonschema.validate(rt, schema("rank_table"))
        assert [d["rank_id"] for s_ in rt["server_list"] for d in s_["device"]] == [str(i) for i in range(16)]
        assert problems == ["rank_table.json: 20 placeholder(s) left to fill, e.g. <IP of node 0>"]
    else:
        assert problems == []

    # identical reference logits through the route planner (mindie -> from-mindie -> canonical)
    assert torch.equal(logits(s), logits(out))


def test_service_config_differs_from_recipe_only_where_declared(src, tmp_path):
    """Flattened, lite's service config differs from the public lite/config.json in 3 fields only."""
    from ling_convert.formats.mindie.config import thaw
    from ling_convert.core import schemas
    recipe = flat(thaw(schemas.load("mindie/service_config_template.json")["template"]))
    recipe["BackendConfig.ModelDeployConfig.ModelConfig.0.modelWeightPath"] = \
        "/home/HwHiAiUser/Ascend/Ling_lite_safetensor"
    out = to_mindie(src("lite-chat"), tmp_path / "o", "lite")
    ours = flat(json.loads((out / "mindie-service/config.json").read_text()))
    assert sorted(recipe) == sorted(ours) and len(ours) == 81  # leaves in the public file
    diff = {k for k in ours if ours[k] != recipe[k]}
    assert diff == {"BackendConfig.ModelDeployConfig.ModelConfig.0.modelWeightPath",
                    "BackendConfig.ModelDeployConfig.maxSeqLen", "BackendConfig.ModelDeployConfig.maxInputTokenLen"}


def test_modes_as_the_recipe_requires(src, tmp_path):
    out = to_mindie(src("plus-chat"), tmp_path / "o", "plus", "--max-shard-size", "100KB")
    mode = lambda p: stat.S_IMODE((out / p).stat().st_mode)  # noqa: E731
    for name in ("config.json", "config.json.bak", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "special_tokens_map.json", "ling-convert.json",
                 "model.safetensors.index.json"):
        assert mode(name) == 0o750, name
    assert mode("mindie-service/config.json") == 0o640
    assert mode("rank_table.json") == 0o640
    assert all(mode(p.name) & 0o111 == 0 for p in out.glob("*.safetensors"))  # weights are not made executable
    os.chmod(out / "tokenizer.json", 0o644)
    assert validate_mindie_dir(out)[-1] == "tokenizer.json: mode 644, the recipe requires 750 (chmod 750)"


def test_rank_table_from_servers(src, tmp_path):
    out = to_mindie(src("plus-chat"), tmp_path / "o", "plus", "--world-size", 4, "--npu-ids", "0,1",
                    "--servers", "10.0.0.1,10.0.0.2:172.17.0.3",
                    "--device-ips", "192.168.1.1,192.168.1.2;192.168.2.1,192.168.2.2", "--port", 2000)
    rt = json.loads((out / "rank_table.json").read_text())
    assert rt == {"server_count": "2", "status": "completed", "version": "1.0", "server_list": [
        {"server_id": "10.0.0.1", "container_ip": "10.0.0.1", "device": [
            {"device_id": "0", "device_ip": "192.168.1.1", "rank_id": "0"},
            {"device_id": "1", "device_ip": "192.168.1.2", "rank_id": "1"}]},
        {"server_id": "10.0.0.2", "container_ip": "172.17.0.3", "device": [
            {"device_id": "0", "device_ip": "192.168.2.1", "rank_id": "2"},
            {"device_id": "1", "device_ip": "192.168.2.2", "rank_id": "3"}]}]}
    f = flat(json.loads((out / "mindie-service/config.json").read_text()))
    assert f["ServerConfig.ipAddress"] == f["ServerConfig.managementIpAddress"] == "10.0.0.1"  # primary node
    assert (f["ServerConfig.port"], f["ServerConfig.managementPort"], f["ServerConfig.metricsPort"]) == (2000, 2001, 2002)
    assert f["BackendConfig.npuDeviceIds"] == [[0, 1]]
    assert f["BackendConfig.ModelDeployConfig.ModelConfig.0.worldSize"] == 4
    assert validate_mindie_dir(out) == []

    # the same table handed back with --rank-table is accepted as is
    again = to_mindie(src("plus-chat"), tmp_path / "o2", "plus", "--world-size", 4, "--npu-ids", "0,1",
                      "--rank-table", out / "rank_table.json")
    assert json.loads((again / "rank_table.json").read_text()) == rt


def test_target_dir_and_options(src, tmp_path):
    out = to_mindie(src("lite-chat"), tmp_path / "o", "lite", "--target-dir", "/models/Ling_lite",
                    "--world-size", 4, "--max-seq-len", 256)
    f = flat(json.loads((out / "mindie-service/config.json").read_text()))
    assert f["BackendConfig.ModelDeployConfig.ModelConfig.0.modelWeightPath"] == "/models/Ling_lite"
    assert f["BackendConfig.npuDeviceIds"] == [[0, 1, 2, 3]]
    assert (f["BackendConfig.ModelDeployConfig.maxSeqLen"], f["BackendConfig.ModelDeployConfig.maxInputTokenLen"]) \
        == (256, 256)


def test_bin_source_via_route_planner(src, tmp_path):
    b = src("lite-chat", fmt="bin")
    out = to_mindie(b, tmp_path / "o", "lite", "--max-shard-size", "100KB")
    assert len(list(out.glob("*.safetensors"))) > 1 and (out / "model.safetensors.index.json").exists()
    ref = {}
    for f in b.glob("*.bin"):
        ref.update(torch.load(f, weights_only=True))
    got = tensors(out)
    assert sorted(ref) == sorted(got) and all(torch.equal(ref[n], got[n]) for n in ref)
    assert json.loads((out / "ling-convert.json").read_text())["route"] == ["bin2st", "to-mindie"]


def test_dry_run_writes_nothing(src, tmp_path, capsys):
    out = tmp_path / "o"
    assert run("to-mindie", "plus", src("plus-chat"), out, "--dry-run") == 0
    assert "to-mindie" in capsys.readouterr().out and leftovers(out) == []


# -- round trip and reading ----------------------------------------------------------------

@pytest.mark.parametrize("key", ["lite-base", "plus-chat"])
def test_round_trip_restores_hf_dir(src, tmp_path, key):
    s = src(key)
    mid = to_mindie(s, tmp_path / "mid", key.split("-")[0])
    back = tmp_path / "back"
    assert run("from-mindie", mid, back) == 0
    assert_bit_exact(s, back)
    assert json.loads((back / "config.json").read_text()) == json.loads((s / "config.json").read_text())
    names = {p.name for p in back.iterdir()}
    assert not names & {"config.json.bak", "rank_table.json", "mindie-service"}
    for aux in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"):
        assert (back / aux).read_bytes() == (s / aux).read_bytes()
    assert detect_format(mid).name == "mindie" and detect_format(back).name == "safetensors"


def test_redeploy_a_mindie_dir(src, tmp_path):
    """to-mindie on a MindIE dir: the route is empty; the writer goes back to HF and applies the options."""
    s = src("plus-chat")
    first = to_mindie(s, tmp_path / "first", "plus")
    again = to_mindie(first, tmp_path / "again", "lite", "--world-size", 4)
    assert not (again / "rank_table.json").exists()
    assert json.loads((again / "config.json.bak").read_text()) == json.loads((s / "config.json").read_text())
    assert flat(json.loads((again / "mindie-service/config.json").read_text()))[
        "BackendConfig.ModelDeployConfig.ModelConfig.0.worldSize"] == 4
    assert_bit_exact(s, again)


def test_round_trip_without_backup_inverts_rewrites(src, tmp_path):
    s = src("lite-base")
    mid = to_mindie(s, tmp_path / "mid", "lite", "--base")
    (mid / "config.json.bak").unlink()
    back = tmp_path / "back"
    assert run("from-mindie", mid, back) == 0
    hf = json.loads((s / "config.json").read_text())
    got = json.loads((back / "config.json").read_text())
    # head_dim 0 means hidden/heads: dropping it is the one rewrite with nothing to restore
    assert got == {k: v for k, v in hf.items() if k != "head_dim"} and hf["head_dim"] == 0
    assert torch.equal(logits(s), logits(back))


def test_reads_public_recipe_plus_base_spelling(src, tmp_path):
    """A dir made by the public recipe for plus-base (n_routed_experts / n_shared_experts)."""
    d = tmp_path / "recipe"
    shutil.copytree(src("plus-base"), d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json.bak").write_text(json.dumps(cfg))
    cfg["n_routed_experts"], cfg["n_shared_experts"] = cfg.pop("num_experts"), cfg.pop("num_shared_experts")
    (d / "config.json").write_text(json.dumps(cfg))
    assert detect_format(d).name == "mindie"
    opened = api.open_checkpoint(d)
    assert (opened.config["num_experts"], opened.config["num_shared_experts"]) == (4, 1)
    problems = validate_mindie_dir(d)
    assert any("n_routed_experts" in p or "num_experts" in p for p in problems), problems


def test_full_size_recipe_equivalence():
    """The declared rewrites turn the HF configs into the public MindIE files, except the declared deviations."""
    lite_base = recipe_config("lite", base=True)
    assert (lite_base["hidden_size"], lite_base["num_hidden_layers"], lite_base["rms_norm_eps"],
            lite_base["embedding_dropout"], lite_base["num_shared_experts"]) == (2048, 28, 1e-05, 0.1, 2)
    # Ling-lite-base on the Hub = the public file + "head_dim": 0 (19 bytes, llama.cpp PR #12678)
    got, applied = to_mindie_config({**lite_base, "head_dim": 0})
    assert got == lite_base and applied == ["dropped head_dim=0"]
    lite_chat = recipe_config("lite", base=False)
    assert to_mindie_config(lite_chat) == (lite_chat, [])

    # Ling-plus-base refs/pr/2: num_* spelling, rms 1e-05, head_dim 128 (56 x 128 != 5376): all kept
    plus_base = recipe_config("plus", base=True)
    assert (plus_base["n_routed_experts"], plus_base["n_shared_experts"], plus_base["num_attention_heads"]) == (64, 1, 56)
    hf = {k: v for k, v in plus_base.items() if not k.startswith("n_")}
    hf.update(num_experts=64, num_shared_experts=1, rms_norm_eps=1e-05, head_dim=128)
    got, _ = to_mindie_config(hf)
    assert got == hf
    diff = {k for k in set(got) | set(plus_base) if got.get(k) != plus_base.get(k)}
    assert diff == {"num_experts", "num_shared_experts", "n_routed_experts", "n_shared_experts", "rms_norm_eps",
                    "head_dim"}


def test_missing_keys_get_hf_defaults_where_mindie_differs():
    hf = tiny_config("ling-lite")
    for k in ("first_k_dense_replace", "norm_topk_prob", "num_shared_experts", "max_position_embeddings", "use_bias"):
        del hf[k]
    before = json.dumps(hf, sort_keys=True)
    got, applied = to_mindie_config(hf)
    assert json.dumps(hf, sort_keys=True) == before  # input not mutated
    assert {k: got[k] for k in ("first_k_dense_replace", "norm_topk_prob", "num_shared_experts",
                                "max_position_embeddings", "use_bias")} == \
        {"first_k_dense_replace": 0, "norm_topk_prob": True, "num_shared_experts": 0,
         "max_position_embeddings": 16384, "use_bias": True}
    assert len(applied) == 5


# -- norm_head false: refused, or folded on request ---------------------------------------

def test_norm_head_false_fold(src, tmp_path):
    s = src("lite-chat", norm_head=False)
    assert run("to-mindie", "lite", s, tmp_path / "refused") == 2
    out = to_mindie(s, tmp_path / "o", "lite", "--fold-norm-head")
    assert json.loads((out / "config.json").read_text())["norm_head"] is True
    ref = logits(s)
    folded = (logits(out) - ref).abs().max().item()
    # negative control: claiming norm_head without folding (what MindIE would compute) is far off
    from ling_convert.reference import run_reference
    o = st.open_source(s)
    unfolded = (run_reference({**o.config, "norm_head": True}, o.load, TOKENS).logits - ref).abs().max().item()
    assert folded < 0.02 * ref.abs().max().item() and unfolded > 20 * folded, (folded, unfolded)
    # the op's declared inverse gives the original norm back up to bf16 rounding
    from ling_convert.converters.mindie import fold_norm_head, unfold_norm_head
    g, back = o.load("model.norm.weight"), unfold_norm_head(fold_norm_head(o)).load("model.norm.weight")
    assert not torch.equal(fold_norm_head(o).load("model.norm.weight"), g)
    assert torch.allclose(back.float(), g.float(), rtol=2 ** -7, atol=0)


# -- bad input: one line, exit 2, nothing left behind ------------------------------------------

def _dup_rank_table(path: Path) -> Path:
    devs = lambda base: [{"device_id": str(i), "device_ip": f"192.168.{base}.{i + 1}",  # noqa: E731
                          "rank_id": str(8 * (base - 1) + i)} for i in range(8)]
    rt = {"server_count": "2", "status": "completed", "version": "1.0",
          "server_list": [{"server_id": "10.0.0.1", "container_ip": "10.0.0.1", "device": devs(1)},
                          {"server_id": "10.0.0.2", "container_ip": "10.0.0.2", "device": devs(2)}]}
    rt["server_list"][1]["device"][0]["rank_id"] = "3"
    path.write_text(json.dumps(rt))
    return path


BAD = {
    "world-size-not-multiple": (("plus", "plus-chat", "--world-size", 12), "not a multiple of the 8 NPU"),
    "duplicate-rank-ids": (("plus", "plus-chat", "--rank-table", "RT"), "rank_id 3 is used 2 times"),
    "duplicate-servers": (("plus", "plus-chat", "--servers", "10.0.0.1,10.0.0.1"), "lists 10.0.0.1 twice"),
    "servers-vs-world": (("plus", "plus-chat", "--world-size", 16, "--servers", "10.0.0.1,10.0.0.2,10.0.0.3"),
                         "needs 2"),
    "v2-model": (("lite", "ling-mini-2"), "only BailingMoeForCausalLM"),
    "unknown-variant": (("mega", "lite-chat"), "unknown MindIE variant 'mega'"),
    "bad-npu-ids": (("lite", "lite-chat", "--npu-ids", "0,x"), "--npu-ids"),
    "port-collision": (("lite", "lite-chat", "--port", 1119), "inter-node ports"),
    "seq-len": (("lite", "lite-chat", "--max-seq-len", 4096), "max_position_embeddings"),
    "relative-target": (("lite", "lite-chat", "--target-dir", "models/x"), "absolute container path"),
    "norm-head-false": (("lite", "lite-chat:norm_head", ), "--fold-norm-head"),
    "device-ips-alone": (("plus", "plus-chat", "--device-ips", "1.1.1.1"), "--device-ips needs --servers"),
    "bad-server-ip": (("plus", "plus-chat", "--servers", "10.0.0.1,host-b"), "'host-b' is not an IPv4"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line(src, tmp_path, capsys, case):
    (variant, model, *extra), needle = BAD[case]
    s = src(model.split(":")[0], norm_head=False) if ":" in model else src(model)
    extra = [_dup_rank_table(tmp_path / "rt.json") if a == "RT" else a for a in extra]
    out = tmp_path / "out"
    assert run("to-mindie", variant, s, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert leftovers(out) == []


def test_non_empty_output_refused(src, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run("to-mindie", "lite", src("lite-chat"), out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not (tmp_path / ".out.partial").exists()


def test_subprocess_no_traceback(src, tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "LING_CONVERT_DEBUG"}
    r = subprocess.run([sys.executable, "-m", "ling_convert", "to-mindie", "plus", str(src("plus-chat")), str(out),
                        "--world-size", "12"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and leftovers(out) == []


# -- validation of hand-edited dirs -------------------------------------------------------

def test_validate_catches_edits(src, tmp_path):
    out = to_mindie(src("plus-chat"), tmp_path / "o", "plus", "--world-size", 4, "--npu-ids", "0,1",
                    "--servers", "10.0.0.1,10.0.0.2", "--device-ips", "1.1.1.1,1.1.1.2;1.1.2.1,1.1.2.2")
    assert validate_mindie_dir(out) == []
    rt = json.loads((out / "rank_table.json").read_text())
    rt["server_list"][1]["device"][1]["rank_id"] = "0"
    (out / "rank_table.json").write_text(json.dumps(rt))
    cfg = json.loads((out / "config.json").read_text())
    del cfg["head_dim"]  # what the public plus file does: 6 x (64/6) != 6 x 16
    (out / "config.json").write_text(json.dumps(cfg))
    svc = json.loads((out / "mindie-service/config.json").read_text())
    svc["BackendConfig"]["ModelDeployConfig"]["maxInputTokenLen"] = 9999
    (out / "mindie-service/config.json").write_text(json.dumps(svc))
    problems = validate_mindie_dir(out)
    assert any("rank_id 0 is used 2 times" in p for p in problems), problems
    assert any("head_dim missing or wrong" in p for p in problems), problems
    assert any("maxInputTokenLen 9999 exceeds maxSeqLen 512" in p for p in problems), problems


def test_edges_registered():
    edges = {e.name: e for e in all_edges()}
    assert (edges["to-mindie"].src, edges["to-mindie"].dst, edges["to-mindie"].lossless) == ("safetensors", "mindie", True)
    assert (edges["from-mindie"].src, edges["from-mindie"].dst) == ("mindie", "safetensors")
    assert edges["to-mindie"].demo_options == {"variant": "lite"} == edges["from-mindie"].demo_options
