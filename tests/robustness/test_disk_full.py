"""Disk full: a conversion under RLIMIT_FSIZE (SIGXFSZ ignored, so writes fail with EFBIG) ends with one
line naming the limit, exit 2, and removes its staging data; also when the write fails in a worker.

Most runs fork from the pre-imported CLI (forkrun.py sets the limit in the child); one runs the real
entry point in a subprocess whose preexec_fn sets the limit, as a user's shell would.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ling_convert.testing import write_tiny

from .killpoints import _dcp

NEEDLE = "file-size limit"
LIMIT = 100_000          # bytes: above every JSON/tokenizer file, below every weight file written


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk-full-src")
    return {
        "bin": write_tiny(root / "bin", "ling-mini-2", fmt="bin", shards=2),
        "st": write_tiny(root / "st", "ling-mini-2", shards=2),
        # One weight of 2 MiB in FP8: quantize workers hand it over through /dev/shm (>= SPILL_MIN).
        "big": write_tiny(root / "big", "ling-lite", hidden_size=1024, moe_intermediate_size=1024,
                          intermediate_size=1024, num_attention_heads=4, num_key_value_heads=2),
        "dcp": _dcp(root),
    }


CASES = {
    "bin2st": lambda s: ["bin2st", s["bin"], "out"],
    "quantize": lambda s: ["quantize", s["st"], "out"],
    # Worker processes quantise; their /dev/shm hand-over hits the limit and falls back to the pipe,
    # then the writer hits it: still one line.
    "quantize --workers 2": lambda s: ["quantize", s["big"], "out", "--workers", "2", "--max-shard-size", "20KB"],
    "to-gguf": lambda s: ["to-gguf", s["st"], "out.gguf"],
    "to-gguf split": lambda s: ["to-gguf", s["st"], "out.gguf", "--split-max-size", "200KB"],
    # Shards are written inside worker processes: the EFBIG is raised there.
    "dcp2st --workers 2": lambda s: ["dcp2st", s["dcp"], "out", "--workers", "2", "--max-shard-size", "200KB"],
    "st2dcp": lambda s: ["st2dcp", s["st"], "out"],
    "to-mindie": lambda s: ["to-mindie", "lite", write_tiny(s["st"].parent / "lite", "ling-lite"), "out"],
}


def _leftovers(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if p.name.startswith(("out", ".out")))


@pytest.mark.parametrize("case", list(CASES))
def test_file_size_limit(case, sources, tmp_path, zygote):
    pid = zygote.start(*CASES[case](sources), fsize=LIMIT, cwd=tmp_path)
    r = zygote.wait(pid)
    assert r.rc == 2, (r.rc, r.stderr)
    assert len(r.lines) == 1 and r.lines[0].startswith("error: ") and NEEDLE in r.lines[0], r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert _leftovers(tmp_path) == [], "staging data or a partial output was left"
    if case == "dcp2st --workers 2":     # raised in a worker process, which names the shard it was writing
        assert "out/model-0000" in r.lines[0], r.lines[0]
    assert not list(Path("/dev/shm").glob(f"ling-convert-{pid}-*")), "worker spill dir left in /dev/shm"


def _limit_fsize():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_real_entry_point_under_rlimit(sources, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LING_CONVERT_DEBUG"}
    r = subprocess.run([sys.executable, "-m", "ling_convert", "bin2st", str(sources["bin"]), "out"],
                       preexec_fn=_limit_fsize, cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and NEEDLE in lines[0], r.stderr
    assert _leftovers(tmp_path) == []


def test_enospc_raised_in_a_reader_thread(sources, tmp_path):
    """The safetensors writer loads tensors on a pool thread; an ENOSPC there (e.g. a spill or cache
    write inside a thunk) must still become the one-line WriteFailedError, staging removed."""
    from ling_convert import api
    from ling_convert.core.errors import WriteFailedError
    lazy, _ = api.prepare(sources["st"], "safetensors")
    victim = sorted(lazy.infos)[len(lazy.infos) // 2]

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    from ling_convert.formats.writer import WriteOptions, write_hf_dir
    src = lazy.derive(thunks={**lazy.thunks, victim: full})
    with pytest.raises(WriteFailedError, match="no space left"):
        write_hf_dir(src, tmp_path / "out", WriteOptions())
    assert _leftovers(tmp_path) == []
