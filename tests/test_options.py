"""Options travel typed: each CLI command builds one frozen options object and hands it to one API
function; edges and writers declare frozen dataclasses; a misspelt key is an error, never ignored."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from ling_convert import api, converters, formats
from ling_convert.core.errors import BadInputError, OptionError
from ling_convert.core.options import build, compose
from ling_convert.testing import write_tiny

RESULT = api.ConvertResult(Path("out"), [], "safetensors", "safetensors", 0, 0)
HYBRID = api.HybridResult(Path("out"), {}, 0, 0, [])


@pytest.fixture
def record(monkeypatch):
    """record(name, result) -> calls: api.<name> replaced by a stand-in that keeps its arguments."""
    def patch(name, result=RESULT):
        calls = []
        monkeypatch.setattr(api, name, lambda *a, **kw: calls.append((a, kw)) or result)
        return calls
    return patch


# (argv after SRC DST, api function, expected options object, expected run keywords)
CLI_CASES = [
    (["quantize", "--scheme", "fp8-block", "--block-size", "64", "--scale-fmt", "ue8m0", "--tp", "4",
      "--workers", "2"], "quantize_checkpoint",
     api.QuantizeOptions(scheme="fp8-block", block_size=64, scale_fmt="ue8m0", tp=4, workers=2), {"dry_run": False}),
    (["dequantize", "--dtype", "float16", "--max-shard-size", "1MB"], "dequantize_checkpoint",
     api.DequantizeOptions(dtype="float16"), {"max_shard_size": "1MB"}),
    (["dcp2st", "--force-fp8", "--scale-fmt", "ue8m0", "--workers", "3", "--vocab-size", "500", "--config-from",
      "cfg", "--allow-unmapped"], "dcp_to_hf",
     api.Dcp2stOptions(force_fp8=True, scale_fmt="ue8m0", workers=3, vocab_size=500, config_from=Path("cfg"),
                       allow_unmapped=True), {"resume": False}),
    (["st2dcp", "--padded-vocab-size", "512", "--stack-layers", "--force"], "hf_to_dcp",
     api.HfToDcpOptions(padded_vocab_size=512, stack_layers=True), {"force": True}),
    (["to-gguf", "--outtype", "q8_0", "--no-mtp", "--tokenizer-dir", "tok", "--split-max-size", "1G", "--workers", "2"],
     "to_gguf_file", api.GgufOptions(outtype="q8_0", no_mtp=True, tokenizer_dir=Path("tok"), split_max_size="1G"),
     {"from_format": None, "workers": 2}),
    (["from-gguf", "--dtype", "bf16", "--llama-defaults"], "from_gguf_file",
     api.FromGgufOptions(dtype="bf16", llama_defaults=True), {"max_shard_size": "5GB"}),
]


@pytest.mark.parametrize("argv,fn,want,run", CLI_CASES, ids=[c[0][0] for c in CLI_CASES])
def test_the_cli_passes_one_options_object_to_its_api_function(cli, record, argv, fn, want, run):
    calls = record(fn)
    code, _, err = cli(argv[0], "SRC", "DST", *argv[1:], "--json")
    assert code == 0, err
    [(args, kw)] = calls
    assert args == (Path("SRC"), Path("DST"))
    assert type(kw["options"]) is type(want) and kw["options"] == want
    assert {k: kw[k] for k in run} == run


def test_to_hybrid_linear_cli_passes_its_options_object(cli, record):
    calls = record("to_hybrid_linear", HYBRID)
    code, _, err = cli("to-hybrid-linear", "SRC", "DST", "--layer-group-size", "2", "--init", "zeros",
                       "--modeling-dir", "m", "--dry-run", "--json")
    assert code == 0, err
    [(_, kw)] = calls
    assert kw["options"] == api.HybridOptions(layer_group_size=2, init="zeros", modeling_dir=Path("m"))
    assert kw["dry_run"] is True


def test_to_mindie_cli_passes_a_mindie_options_object_to_convert(cli, record):
    calls = record("convert")
    code, _, err = cli("to-mindie", "plus", "SRC", "DST", "--world-size", "16", "--servers", "10.0.0.1,10.0.0.2",
                       "--fold-norm-head", "--json")
    assert code == 0, err
    [(_, kw)] = calls
    assert kw["to"] == "mindie"
    assert kw["options"] == api.MindieOptions(variant="plus", world_size=16, servers="10.0.0.1,10.0.0.2",
                                              fold_norm_head=True)


def test_convert_cli_passes_its_common_options_object(cli, record):
    calls = record("convert")
    code, _, err = cli("convert", "SRC", "DST", "--to", "fp8", "--config-from", "cfg", "--workers", "2", "--json")
    assert code == 0, err
    [(_, kw)] = calls
    assert kw["options"] == api.CommonOptions(config_from=Path("cfg")) and (kw["to"], kw["workers"]) == ("fp8", 2)


def test_a_misspelt_cli_option_exits_2_before_the_api_runs(cli, record):
    calls = record("quantize_checkpoint")
    code, _, _ = cli("quantize", "SRC", "DST", "--scale-fmtt", "ue8m0")
    assert code == 2 and calls == []


def test_api_keywords_name_the_options_fields():
    # The public keyword form stays: every field of the object is a keyword of the same name.
    for fn, cls in ((api.quantize_checkpoint, api.QuantizeOptions), (api.dequantize_checkpoint, api.DequantizeOptions),
                    (api.dcp_to_hf, api.Dcp2stOptions), (api.hf_to_dcp, api.HfToDcpOptions),
                    (api.to_gguf_file, api.GgufOptions), (api.from_gguf_file, api.FromGgufOptions),
                    (api.to_hybrid_linear, api.HybridOptions)):
        params = inspect.signature(fn).parameters
        assert {f.name for f in dataclasses.fields(cls)} <= set(params), fn.__name__


# -- misspelt keys in the API ---------------------------------------------------------------------

def test_a_misspelt_api_keyword_raises_a_typed_error(tmp_path):
    src = write_tiny(tmp_path / "st", "ling-lite")
    with pytest.raises(OptionError, match="unknown option 'scale_fmtt'.*did you mean 'scale_fmt'") as e:
        api.quantize_checkpoint(src, tmp_path / "q", scale_fmtt="ue8m0")
    assert isinstance(e.value, TypeError) and isinstance(e.value, BadInputError)
    with pytest.raises(OptionError, match="unknown option 'tpp'"):
        api.quantize_checkpoint(src, tmp_path / "q", options={"tpp": 2})
    with pytest.raises(OptionError, match="unknown option 'layer_groups'"):
        api.to_hybrid_linear(src, tmp_path / "h", layer_groups=2)
    assert not (tmp_path / "q").exists() and not (tmp_path / "h").exists()


def test_an_option_object_the_route_does_not_read_is_refused(tmp_path):
    src = write_tiny(tmp_path / "st", "ling-lite")
    with pytest.raises(OptionError, match="unknown option 'outtype' for the route quantize"):
        api.convert(src, tmp_path / "q", to="fp8", options=api.GgufOptions(outtype="q8_0"))
    assert not (tmp_path / "q").exists()
    # an object whose fields sit at their defaults sets nothing, so it passes
    r = api.convert(src, tmp_path / "q", to="fp8", dry_run=True, options=api.GgufOptions())
    assert r.route == ["quantize"]


def test_edges_read_the_typed_options(tmp_path):
    src = write_tiny(tmp_path / "st", "ling-lite")
    lazy, _ = api.prepare(src, "fp8", options=api.QuantizeOptions(scale_fmt="ue8m0", block_size=64))
    assert lazy.notes["fp8"]["scale_fmt"] == "ue8m0" and lazy.notes["fp8"]["block"] == [64, 64]


def test_build_and_compose():
    with pytest.raises(OptionError, match="unknown option 'x'"):
        build(api.QuantizeOptions, {"x": 1})
    o = build(api.GgufOptions, {"tokenizer_dir": Path("t")})
    assert o.tokenizer_dir == "t"                      # paths travel as str: one run identity for CLI and API
    cls = compose((api.CommonOptions, api.DcpToHfOptions, api.QuantizeOptions))
    both = build(cls, {"vocab_size": 5, "scale_fmt": "ling"})
    assert isinstance(both, api.DcpToHfOptions) and isinstance(both, api.QuantizeOptions)
    assert (both.vocab_size, both.scale_fmt, both.config_from) == (5, "ling", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        both.vocab_size = 6


# -- every edge's (and writer's) options are a frozen dataclass ------------------------------------

def _option_classes():
    classes = {e.name: e.options for e in converters.all_edges()}
    classes.update({f"writer:{n}": f.options for n, f in formats.all_formats().items() if f.options is not None})
    return classes


@pytest.mark.parametrize("name,cls", sorted(_option_classes().items(), key=lambda kv: kv[0]))
def test_every_edge_options_dataclass_is_frozen(name, cls):
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name
    obj = cls()
    for f in dataclasses.fields(cls):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, f.name, getattr(obj, f.name))
