"""Commands that read no tensor start without torch (and without the library behind the CLI)."""

from __future__ import annotations

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
print("TORCH" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
"""


def _probe(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "LING_CONVERT_DEBUG"}
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=120)
    return r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("--version",), ("convert", "--help"), ("convert",),
                                  ("convert", "a", "b", "--too", "x"), ("nosuchcommand",)])
def test_no_torch_for_help_version_and_usage_errors(args):
    assert _probe(*args) == "NO-TORCH"


def test_a_conversion_does_import_torch(tiny, tmp_path):
    # The probe itself must see torch when a command reads tensors (negative control).
    assert _probe("bin2st", str(tiny("ling-lite", "bin")), str(tmp_path / "out")) == "TORCH"
