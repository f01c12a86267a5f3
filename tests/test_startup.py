"""Commands that read no tensor start without torch (and without the library behind the CLI).

The CLI defers `import torch` (ling_convert/core/deferred.py): a stand-in sits in sys.modules,
so "torch" in sys.modules says nothing; torch really ran when its extension `torch._C` is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import sys
from ling_convert.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("TORCH" if "torch._C" in sys.modules else "NO-TORCH", file=sys.stderr)
"""


def _probe(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LING_CONVERT_DEBUG"}
    r = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=120)
    return r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("--version",), ("convert", "--help"), ("convert",),
                                  ("convert", "a", "b", "--too", "x"), ("nosuchcommand",)])
def test_no_torch_for_help_version_and_usage_errors(args):
    assert _probe(*args) == "NO-TORCH"


def test_a_conversion_does_import_torch(tiny, tmp_path):
    # The probe itself must see torch when a command reads tensors (negative control).
    assert _probe("bin2st", str(tiny("ling-lite", "bin")), str(tmp_path / "out")) == "TORCH"


# -- header-only commands: the whole command runs, and torch never does ------------------

@pytest.fixture(scope="module")
def made(tiny, tmp_path_factory):
    """A tiny Ling-2.0 model as safetensors, block FP8 and q8_0 GGUF (written with torch, here)."""
    from ling_convert import api
    root = tmp_path_factory.mktemp("startup")
    st = tiny("ling-mini-2")
    api.convert(st, root / "fp8", to="fp8")
    api.convert(st, root / "m.gguf", to="gguf", options={"outtype": "q8_0"})
    return {"st": st, "fp8": root / "fp8", "gguf": root / "m.gguf", "v1": tiny("ling-lite")}


HEADER_ONLY = [
    ("formats",),
    ("inspect", "st"), ("inspect", "fp8"), ("inspect", "gguf"),
    ("config", "show", "st"), ("config", "validate", "st"), ("config", "diff", "st", "v1"),
    ("yarn", "st", "--factor", "4", "--dry-run"), ("yarn", "st", "--factor", "4", "--out", "out"),
    ("yarn", "gguf", "--factor", "4", "--dry-run"),
    ("quantize", "st", "out", "--dry-run"), ("dequantize", "fp8", "out", "--dry-run"),
    ("to-gguf", "st", "out", "--outtype", "q8_0", "--dry-run"), ("st2dcp", "st", "out", "--dry-run"),
    ("to-mindie", "lite", "v1", "out", "--dry-run"), ("to-hybrid-linear", "st", "out", "--dry-run"),
    ("convert", "gguf", "out", "--to", "fp8", "--dry-run"), ("convert", "fp8", "out", "--to", "gguf", "--dry-run"),
]


@pytest.mark.parametrize("args", HEADER_ONLY, ids=lambda a: "-".join(a))
def test_header_only_commands_never_import_torch(made, args, tmp_path):
    argv = [tmp_path / "o" if a == "out" else made.get(a, a) for a in args]
    assert _probe(*argv) == "NO-TORCH"


@pytest.mark.parametrize("args", [("inspect", "st"), ("quantize", "st", "out", "--dry-run"),
                                  ("to-gguf", "st", "out", "--dry-run")], ids=lambda a: "-".join(a))
def test_header_only_commands_still_give_their_answer(made, args, tmp_path, cli):
    # Without torch (a fresh CLI process) the answer is the same as with it (in-process, torch loaded).
    argv = [str(tmp_path / "o") if a == "out" else str(made.get(a, a)) for a in args]
    r = subprocess.run([sys.executable, "-m", "ling_convert", *argv, "--json"], capture_output=True, text=True,
                       timeout=120)
    code, out, _ = cli(*argv, "--json")
    assert r.returncode == code == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(out) and out.strip()


DEFERRED = """
import sys
from ling_convert.core.deferred import defer, loaded
assert defer("torch", "nn", "nn.functional")
import torch
import torch.nn.functional as F
assert not loaded("torch") and "torch._C" not in sys.modules, "a bare import ran torch"
x = torch.ones(3)                                   # first attribute read: the real torch
assert loaded("torch") and "torch._C" in sys.modules
assert F.relu(-x).sum().item() == 0 and isinstance(torch.nn.Linear(2, 2), torch.nn.Module)
assert sys.modules["torch"] is not torch and isinstance(x, sys.modules["torch"].Tensor)
assert not defer("torch")                           # already imported: nothing changes
import torch.distributed                            # a submodule import after the load: the real package
assert torch is sys.modules["torch"] and hasattr(torch.distributed, "is_available")
print("ok")
"""


def test_deferred_torch_loads_on_first_attribute_and_then_forwards():
    r = subprocess.run([sys.executable, "-c", DEFERRED], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr


def test_tensor_info_keeps_a_code_and_matches_a_torch_dtype():
    import pickle
    import torch
    from ling_convert.core.source import TensorInfo
    a, b = TensorInfo((2, 3), "BF16"), TensorInfo([2, 3], torch.bfloat16)
    assert a == b and hash(a) == hash(b) and a.code == b.code == "BF16"
    assert a.nbytes == 12 and a.dtype_name == "bfloat16" and a.dtype is torch.bfloat16
    assert pickle.loads(pickle.dumps(a)) == b and TensorInfo((2, 3), "F32") != a
    with pytest.raises(ValueError):
        TensorInfo((1,), "NOPE")


def test_a_dtype_without_a_safetensors_code_is_refused_by_name():
    import torch
    from ling_convert.core.errors import UnsupportedError
    from ling_convert.core.source import TensorInfo
    from ling_convert.formats.safetensors.writer import header_bytes
    infos = {"a": TensorInfo((2,), "BF16"), "z": TensorInfo((2,), torch.complex64)}
    assert header_bytes(infos, ["a"])                      # a code safetensors has: fine
    with pytest.raises(UnsupportedError, match="complex64 tensor has no safetensors form"):
        header_bytes(infos, ["a", "z"])
