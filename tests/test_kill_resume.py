"""Staging-dir edge cases of --resume and the output lock.

SIGKILL at seeded points for every edge lives in tests/robustness/test_kill_resume_edges.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ling_convert.core.output import sha256_file

# Runs the real CLI with each shard write slowed down, so a kill lands mid-run,
# and counts the shards it actually writes (resume must skip finished ones).
DRIVER = r"""
import sys, time
import ling_convert.formats.safetensors as st
orig = st.write_shard
def slow(*a, **k):
    time.sleep(0.03)
    r = orig(*a, **k)
    print("WROTE", a[0].name, flush=True)
    return r
st.write_shard = slow
from ling_convert.cli import main
main(sys.argv[1:])
"""


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-c", DRIVER, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}


def test_stale_staging_without_resume_starts_clean(tiny, tmp_path):
    src = tiny("ling-lite", "bin")
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"garbage from a dead run")
    p = _run(["bin2st", src, tmp_path / "out"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    from ling_convert.formats import open_source
    assert len(open_source(tmp_path / "out").keys()) > 0 and not staging.exists()


def test_resume_with_tampered_shard_rewrites_it(tiny, tmp_path):
    """A finished shard whose bytes changed since it was recorded is written again, not trusted."""
    from ling_convert import api
    from ling_convert.core.output import StagedOutput
    from ling_convert.formats.writer import WriteOptions, plan_id
    src_path = tiny("ling-lite", "bin")
    api.convert(src_path, tmp_path / "ref", max_shard_size="50KB")
    want = _hashes(tmp_path / "ref")
    lazy, _ = api.prepare(src_path, "safetensors")
    opts = WriteOptions(max_shard_size="50KB", resume=True)
    # Simulate an interrupted run: one shard recorded, then corrupted on disk.
    import ling_convert.formats.safetensors as st
    with StagedOutput(tmp_path / "out", sources=lazy.inputs(), resume=True, plan_id=plan_id(lazy, opts, "safetensors")) as staged:
        name, tensors, _ = next(st.iter_shard_plan(lazy, 50_000))
        staged.done(name, st.write_shard(staged.path(name), tensors, lazy))
    (tmp_path / ".out.partial" / "files" / name).write_bytes(b"x" * 100)
    api.convert(src_path, tmp_path / "out", max_shard_size="50KB", resume=True)
    assert _hashes(tmp_path / "out") == want


def test_concurrent_run_refused(tiny, tmp_path):
    import fcntl
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    fd = os.open(staging / "lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        from conftest import assert_one_line_error, run_subprocess
        r = run_subprocess("bin2st", tiny("ling-lite", "bin"), tmp_path / "out")
        assert_one_line_error(r.returncode, r.stderr, "another ling-convert run")
        assert staging.exists() and not (tmp_path / "out").exists()
    finally:
        os.close(fd)
