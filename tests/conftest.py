"""Run-wide fixtures: tiny Ling checkpoints in every base format, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ling_convert.testing import TINY_MODELS, write_tiny

MODELS = list(TINY_MODELS)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny(tiny_root):
    """tiny(model, fmt, shards) -> path of a cached tiny checkpoint (do not modify it)."""
    cache: dict = {}

    def make(model: str = "ling-lite", fmt: str = "safetensors", shards: int = 1) -> Path:
        key = (model, fmt, shards)
        if key not in cache:
            cache[key] = write_tiny(tiny_root / f"{model}-{fmt}-{shards}", model, fmt=fmt, shards=shards)
        return cache[key]
    return make


@pytest.fixture
def cli(capsys):
    """cli(*args) -> (exit_code, stdout, stderr), in-process."""
    from ling_convert.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        o = capsys.readouterr()
        return code, o.out, o.err
    return run


def run_subprocess(*args, env=None, timeout=300):
    """The real entry point in a fresh interpreter (for no-traceback and kill tests)."""
    e = {k: v for k, v in os.environ.items() if k != "LING_CONVERT_DEBUG"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "ling_convert", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, (code, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
