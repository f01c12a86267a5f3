"""torch DCP / Megatron torch_dist <-> HF safetensors (issue 4).

Fixtures write Megatron-style DCPs for the tiny v1/v2 models themselves (tests/dcp_fixtures.py):
one rank, expert-parallel chunks, tensor-parallel chunks, the layer-stacked form, torch's own
writer; with common.pt (a Namespace holding a megatron enum) and metadata.json.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

sys.path.insert(0, str(Path(__file__).parent))
import dcp_fixtures as fx  # noqa: E402

from ling_convert import api  # noqa: E402
from ling_convert.model import ops  # noqa: E402
from ling_convert.cli import main  # noqa: E402
from ling_convert.core.errors import (ConfigSchemaError, CorruptFileError, MissingShardError,  # noqa: E402
                                 UnknownTensorError, UnsafePickleError)
from ling_convert.formats.dcp.reader import DcpReader  # noqa: E402
from ling_convert.api import dcp_to_hf, hf_to_dcp  # noqa: E402
from ling_convert.reference import run_reference  # noqa: E402
from ling_convert.testing import tiny_config, write_tiny  # noqa: E402
from ling_convert.verify.logits import verify  # noqa: E402

V2, LITE, PLUS = "ling-mini-2", "ling-lite", "ling-plus"
ROWS = 384        # Megatron pads the 320-row vocab to a multiple of divisor (64) x TP (2)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """The HF tiny models: the ground truth every DCP is built from."""
    root = tmp_path_factory.mktemp("hf")
    return {m: write_tiny(root / m, m) for m in (V2, LITE, PLUS)}


def _fixture(root: Path, model: str, chunking, *, rows=ROWS, args=True, **kw) -> Path:
    d = fx.write_dcp(root, fx.megatron_state(model, rows=rows, **kw), chunking)
    if args:
        fx.write_common(d, fx.megatron_args(model))
    return d


@pytest.fixture(scope="module")
def v2_tp(tmp_path_factory):
    return _fixture(tmp_path_factory.mktemp("v2tp") / "dcp", V2, fx.tensor_parallel)


def _assert_same_tensors(a_dir: Path, b_dir: Path) -> None:
    a, b = api.open_checkpoint(a_dir), api.open_checkpoint(b_dir)
    assert set(a.infos) == set(b.infos)
    for n in a.infos:
        x, y = a.load(n), b.load(n)
        assert x.dtype == y.dtype and torch.equal(x, y), n


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _nothing_left(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(("out", ".out"))]


# -- DCP -> HF: every layout, bit-exact against the HF tiny model ------------------------

@pytest.mark.parametrize("model,layout,kw", [
    (V2, "single", {}), (V2, "expert_parallel", {}), (V2, "tensor_parallel", {}),
    (V2, "single", {"per_expert_keys": True}), (LITE, "pipeline_layers", {"stack_layers": True}),
    (PLUS, "tensor_parallel", {}),
])
def test_dcp_to_hf_bit_exact(tmp_path, hf, model, layout, kw):
    src = _fixture(tmp_path / "dcp", model, getattr(fx, layout), args=model == V2, **kw)
    extra = {} if model == V2 else {"config_from": hf[model]}     # v1 configs cannot come from args
    r = dcp_to_hf(src, tmp_path / "out", tokenizer_dir=hf[model], force_bf16=True, **extra)
    assert r.route == ["dcp2st"]
    _assert_same_tensors(hf[model], tmp_path / "out")
    man = json.loads((tmp_path / "out" / "ling-convert.json").read_text())
    assert man["notes"]["vocab"] == {"rows_in_source": ROWS, "vocab_size": 320, "trimmed_rows": 64,
                                     "from": "common.pt args" if model == V2 else "config.json"}
    assert man["notes"]["dropped_keys"] == 3       # optimizer, _extra_state, rng_state


def test_config_from_megatron_args_matches_published_layout(tmp_path, hf, v2_tp):
    dcp_to_hf(v2_tp, tmp_path / "out", tokenizer_dir=hf[V2])
    got = json.loads((tmp_path / "out" / "config.json").read_text())
    assert got == tiny_config(V2)           # architectures, model_type, head_dim, eos/pad, vocab ...
    assert got["architectures"] == ["BailingMoeV2ForCausalLM"] and got["model_type"] == "bailing_moe"
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (hf[V2] / "tokenizer.json").read_bytes()
    assert not (tmp_path / "out" / "metadata.json").exists()      # Megatron's file is not an HF aux file


def test_torch_stock_writer_is_read(tmp_path, hf):
    src = fx.write_stock_dcp(tmp_path / "dcp", fx.megatron_state(V2, rows=320))
    fx.write_common(src, fx.megatron_args(V2))
    assert len(list(src.glob("__0_*.distcp"))) == 2
    dcp_to_hf(src, tmp_path / "out", tokenizer_dir=hf[V2])
    _assert_same_tensors(hf[V2], tmp_path / "out")


def test_fp32_storage_cast_with_precision_policy(tmp_path, hf):
    state = {k: v.float() for k, v in fx.megatron_state(V2, rows=ROWS).items()}
    src = fx.write_dcp(tmp_path / "dcp", state, fx.expert_parallel)
    fx.write_common(src, fx.megatron_args(V2))
    dcp_to_hf(src, tmp_path / "keep", tokenizer_dir=hf[V2])
    assert api.open_checkpoint(tmp_path / "keep").infos["model.norm.weight"].dtype == torch.float32
    dcp_to_hf(src, tmp_path / "out", tokenizer_dir=hf[V2], force_bf16=True)
    _assert_same_tensors(hf[V2], tmp_path / "out")   # bf16 again; expert_bias kept fp32 by the arch policy


def test_reader_reads_only_the_slice(tmp_path):
    state = fx.megatron_state(V2, rows=320)
    src = fx.write_dcp(tmp_path / "dcp", state, fx.tensor_parallel)
    rd = DcpReader(src)
    key = "decoder.layers.1.mlp.experts.experts.linear_fc1.weight"
    for e in (0, 5, 7):
        assert torch.equal(rd.read(key, (e,)), state[key][e])
    assert torch.equal(rd.read("embedding.word_embeddings.weight"), state["embedding.word_embeddings.weight"])


# -- parity with the reference forward, and the negative control ---------------------------

@pytest.mark.parametrize("model", [V2, PLUS])
def test_logits_identical(tmp_path, hf, model):
    src = _fixture(tmp_path / "dcp", model, fx.tensor_parallel, args=model == V2)
    extra = {} if model == V2 else {"config_from": hf[model]}
    dcp_to_hf(src, tmp_path / "out", tokenizer_dir=hf[model], **extra)
    rep = verify(hf[model], tmp_path / "out", mtp=model == V2)
    assert rep.passed and rep.exact and rep.max_abs == 0.0
    a, b = api.open_checkpoint(hf[model]), api.open_checkpoint(tmp_path / "out")
    ids = torch.arange(12) * 7 % 320
    la = run_reference(a.config, a.load, ids).logits
    lb = run_reference(b.config, b.load, ids).logits
    assert torch.equal(la, lb)


def test_negative_control_ungrouped_qkv_is_caught(tmp_path, hf, v2_tp):
    # The classic mistake: take Megatron's per-group QKV rows as if they were [Q; K; V].
    bad = {"qkv": {"fn": "identity", "params": {}}}
    api.convert(v2_tp, tmp_path / "bad", to="safetensors", options={"op_overrides": bad, "tokenizer_dir": str(hf[V2])})
    rep = verify(hf[V2], tmp_path / "bad")
    assert not rep.passed and rep.max_abs > 1e-2
    # ... and the same check passes for the real op (so it is the QKV layout that is caught).
    api.convert(v2_tp, tmp_path / "good", to="safetensors", options={"tokenizer_dir": str(hf[V2])})
    assert verify(hf[V2], tmp_path / "good").passed


# -- HF -> DCP and round trips ------------------------------------------------------------

@pytest.mark.parametrize("model", [V2, LITE, PLUS])
def test_hf_dcp_hf_round_trip_and_stock_load(tmp_path, hf, model):
    hf_to_dcp(hf[model], tmp_path / "dcp", padded_vocab_size=ROWS, max_shard_size="100KB")
    assert len(list((tmp_path / "dcp").glob("__0_*.distcp"))) > 1
    import torch.distributed.checkpoint as dcp
    ours = api.open_checkpoint(tmp_path / "dcp")
    sd = {n: torch.empty(i.shape, dtype=i.dtype) for n, i in ours.infos.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=str(tmp_path / "dcp"))          # torch's own loader, no process group
    ref = fx.megatron_state(model, rows=ROWS)                       # independent construction
    assert set(sd) == set(ref)
    for k, t in sd.items():
        if k in ("embedding.word_embeddings.weight", "output_layer.weight"):
            assert torch.equal(t[:320], ref[k][:320]) and not t[320:].any()   # padding rows are zeros
        else:
            assert torch.equal(t, ref[k]), k
    api.convert(tmp_path / "dcp", tmp_path / "back", to="safetensors")
    _assert_same_tensors(hf[model], tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text()) == tiny_config(model)


def test_dcp_st_dcp_round_trip_bit_exact(tmp_path, hf):
    src = _fixture(tmp_path / "dcp", V2, fx.expert_parallel, rows=320)
    dcp_to_hf(src, tmp_path / "st", tokenizer_dir=hf[V2])
    assert main(["st2dcp", str(tmp_path / "st"), str(tmp_path / "dcp2")]) == 0
    a, b = DcpReader(src), DcpReader(tmp_path / "dcp2")
    model_keys = {k for k in a.tensors if not k.startswith("optimizer")}
    assert model_keys == set(b.tensors)
    for k in model_keys:
        assert torch.equal(a.read(k), b.read(k)), k
    # The layer-stacked form round-trips too (homogeneous v1 model).
    hf_to_dcp(hf[LITE], tmp_path / "stacked", stack_layers=True)
    assert "decoder.layers.mlp.experts.experts.linear_fc1.weight" in DcpReader(tmp_path / "stacked").tensors
    api.convert(tmp_path / "stacked", tmp_path / "lite", to="safetensors")
    _assert_same_tensors(hf[LITE], tmp_path / "lite")


@settings(max_examples=25, deadline=None)
@given(groups=hs.integers(1, 4), qpg=hs.integers(1, 4), d=hs.integers(1, 5), cols=hs.integers(0, 3))
def test_qkv_op_inverse(groups, qpg, d, cols):
    shape = ((groups * qpg + 2 * groups) * d,) + ((cols,) if cols else ())
    x = torch.arange(torch.Size(shape).numel()).reshape(shape)
    fwd, inv = ops.OPS["qkv_grouped"]
    p = {"num_heads": groups * qpg, "num_groups": groups, "head_dim": d}
    y = fwd([x], **p)[0]
    assert torch.equal(inv([y], **p)[0], x)
    assert torch.equal(y[: groups * qpg * d][:d], x[:d])                       # head 0 of group 0 first
    assert torch.equal(y[groups * qpg * d:][:d], x[qpg * d:(qpg + 1) * d])    # then K of group 0


# -- scale-out: --workers and torchrun give the same bytes ---------------------------------

def test_workers_and_torchrun_byte_identical(tmp_path, hf, v2_tp):
    common = ["--tokenizer-dir", str(hf[V2]), "--max-shard-size", "60KB"]
    assert main(["dcp2st", str(v2_tp), str(tmp_path / "one"), *common]) == 0
    assert main(["dcp2st", str(v2_tp), str(tmp_path / "two"), "--workers", "2", *common]) == 0
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "ling_convert", "dcp2st", str(v2_tp), str(tmp_path / "tr"), *common],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    one = _tree(tmp_path / "one")
    assert len([f for f in one if f.endswith(".safetensors")]) > 3
    assert _tree(tmp_path / "two") == one and _tree(tmp_path / "tr") == one


def test_force_fp8_goes_through_the_quantize_edge(tmp_path, hf, v2_tp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # tiny shapes are off vLLM's 128 grid; the edge warns
        r = dcp_to_hf(v2_tp, tmp_path / "fp8", force_fp8=True, tokenizer_dir=hf[V2])
        api.convert(hf[V2], tmp_path / "direct", to="fp8", options={"scale_fmt": "ling"})   # dcp2st's default
    assert r.route == ["dcp2st", "quantize"]
    cfg = json.loads((tmp_path / "fp8" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "fp8"
    # Same tensors as quantising the HF model itself: the DCP leg adds no error of its own.
    _assert_same_tensors(tmp_path / "direct", tmp_path / "fp8")
    assert api.open_checkpoint(tmp_path / "fp8").format == "fp8"


# -- bad input: one line, nonzero exit, nothing left behind -------------------------------

def _cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def test_malicious_metadata_is_not_executed(tmp_path):
    canary = tmp_path / "canary"
    src = tmp_path / "dcp"
    src.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))
    (src / ".metadata").write_bytes(pickle.dumps(Evil()))
    (src / "__0_0.distcp").write_bytes(b"")
    run = subprocess.run([sys.executable, "-m", "ling_convert", "dcp2st", str(src), str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "system" in run.stderr and "allow-list" in run.stderr
    assert not canary.exists() and _nothing_left(tmp_path)


def test_malicious_common_pt_is_not_executed(tmp_path, capsys):
    canary = tmp_path / "canary"
    src = fx.write_dcp(tmp_path / "dcp", fx.megatron_state(V2, rows=320))

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))
    torch.save({"args": Evil()}, src / "common.pt")
    code, err = _cli(["dcp2st", src, tmp_path / "out"], capsys)
    assert code == 2 and "common.pt" in err and "system" in err and not canary.exists()
    assert _nothing_left(tmp_path)


@pytest.mark.parametrize("damage,expect", [
    ("missing", "data file '__1_0.distcp' is missing"),
    ("truncated", "(truncated)"),
    ("garbled", "not a readable torch.save blob"),
])
def test_damaged_data_files(tmp_path, capsys, damage, expect):
    src = _fixture(tmp_path / "dcp", V2, fx.expert_parallel)
    f = src / "__1_0.distcp"
    if damage == "missing":
        f.unlink()
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    else:   # same length, the first blob's zip header overwritten: found only when the chunk is read
        data = bytearray(f.read_bytes())
        data[:64] = b"\xff" * 64
        f.write_bytes(bytes(data))
    code, err = _cli(["dcp2st", src, tmp_path / "out", "--tokenizer-dir", src], capsys)
    assert code == 2 and expect in err and len(err.splitlines()) == 1, err
    assert "__1_0.distcp" in err and _nothing_left(tmp_path)


def test_unmapped_key_listed_then_skipped(tmp_path, capsys, hf):
    state = fx.megatron_state(V2, rows=ROWS)
    state["decoder.layers.0.self_attention.linear_foo.weight"] = torch.zeros(2, 2)
    src = fx.write_dcp(tmp_path / "dcp", state)
    fx.write_common(src, fx.megatron_args(V2))
    code, err = _cli(["dcp2st", src, tmp_path / "out"], capsys)
    assert code == 2 and "linear_foo" in err and "--allow-unmapped" in err and _nothing_left(tmp_path)
    assert main(["dcp2st", str(src), str(tmp_path / "out"), "--allow-unmapped", "--tokenizer-dir", str(hf[V2])]) == 0
    man = json.loads((tmp_path / "out" / "ling-convert.json").read_text())
    assert man["notes"]["unmapped_skipped"] == ["decoder.layers.0.self_attention.linear_foo.weight"]
    _assert_same_tensors(hf[V2], tmp_path / "out")


def test_vocab_size_flag_and_errors(tmp_path, capsys, hf, v2_tp):
    assert main(["dcp2st", str(v2_tp), str(tmp_path / "out"), "--vocab-size", "300"]) == 0
    out = api.open_checkpoint(tmp_path / "out")
    assert out.infos["lm_head.weight"].shape == (300, 64) and out.config["vocab_size"] == 300
    assert json.loads((tmp_path / "out" / "ling-convert.json").read_text())["notes"]["vocab"]["from"] == "--vocab-size"
    code, err = _cli(["dcp2st", v2_tp, tmp_path / "big", "--vocab-size", "999"], capsys)
    assert code == 2 and "999" in err and "384" in err


def test_v1_args_need_a_config(tmp_path, hf):
    src = _fixture(tmp_path / "dcp", LITE, fx.single, args=False)
    fx.write_common(src, {**fx.megatron_args(LITE), "qk_layernorm": False, "moe_router_score_function": "softmax",
                          "moe_router_enable_expert_bias": False, "mtp_num_layers": None})
    with pytest.raises(ConfigSchemaError, match="--config-from"):
        dcp_to_hf(src, tmp_path / "out")
    dcp_to_hf(src, tmp_path / "out", config_from=hf[LITE])
    _assert_same_tensors(hf[LITE], tmp_path / "out")


def test_error_types_from_api(tmp_path):
    src = fx.write_dcp(tmp_path / "dcp", fx.megatron_state(V2, rows=320))
    (src / ".metadata").write_bytes((src / ".metadata").read_bytes()[:50])
    with pytest.raises(CorruptFileError):
        DcpReader(src)
    (src / ".metadata").unlink()
    with pytest.raises(MissingShardError, match="did not finish"):
        DcpReader(src)
    md = tmp_path / "evil.metadata"
    md.write_bytes(b"cposix\nsystem\n(S'true'\ntR.")
    with pytest.raises(UnsafePickleError, match="posix.system"):
        from ling_convert.formats.dcp.unpickle import load_metadata
        load_metadata(md)
    with pytest.raises(UnknownTensorError):
        state = fx.megatron_state(V2, rows=320)
        del state["decoder.layers.2.mlp.router.weight"]
        d = fx.write_dcp(tmp_path / "partial", state)
        fx.write_common(d, fx.megatron_args(V2))
        api.prepare(d, "safetensors")


def test_interrupted_parallel_run_resumes(tmp_path, hf, v2_tp):
    kw = {"tokenizer_dir": hf[V2], "max_shard_size": "60KB"}
    dcp_to_hf(v2_tp, tmp_path / "ref", **kw)
    recorded = tmp_path / ".out.partial" / "progress.json"

    def stop_after_two_shards(n):     # called per piece written: stop once two shards are recorded
        if recorded.exists() and len(json.loads(recorded.read_text())["files"]) >= 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        dcp_to_hf(v2_tp, tmp_path / "out", workers=2, progress=stop_after_two_shards, **kw)
    progress = json.loads((tmp_path / ".out.partial" / "progress.json").read_text())
    assert len(progress["files"]) == 2            # the shards finished before Ctrl-C are recorded
    dcp_to_hf(v2_tp, tmp_path / "out", workers=2, resume=True, **kw)
    assert _tree(tmp_path / "out") == _tree(tmp_path / "ref")


@settings(max_examples=30, deadline=None)
@given(op=hs.sampled_from(["identity", "split", "unstack", "qkv_grouped", "trim_rows"]),
       a=hs.integers(1, 4), b=hs.integers(1, 4), inverse=hs.booleans())
def test_shape_functions_match_the_ops(op, a, b, inverse):
    params = {"split": {"parts": 2, "dim": 0}, "unstack": {"dim": 0},
              "trim_rows": {"rows": a if not inverse else 2 * a},
              "qkv_grouped": {"num_heads": 2 * a, "num_groups": a, "head_dim": b}}.get(op, {})
    if op == "qkv_grouped":
        ins = [(4 * a * b, b)]
    elif inverse and op == "split":
        ins = [(a, b), (a, b)]
    elif inverse and op == "unstack":
        ins = [(a, b)] * 3
    else:
        ins = [(2 * a, b)]
    got = [tuple(t.shape) for t in ops.apply(op, [torch.ones(s) for s in ins], inverse=inverse, **params)]
    assert ops.out_shapes(op, ins, inverse=inverse, **params) == got
