"""Two conversions into one output at once: the second refuses with one line (the lock, or the output
that appeared meanwhile), and neither damages the other: the first's output is complete and verifies.

Runs are paused at exact points (forkrun `hold`), so every interleaving below is deterministic.
"""

from __future__ import annotations

import pytest

from ling_convert.testing import write_tiny

from .killpoints import output_files

SHARD = ["--max-shard-size", "20KB"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("conc") / "bin", "ling-mini-2", fmt="bin", shards=2)


@pytest.fixture
def reference(src, tmp_path, zygote):
    """Hashes of an uninterrupted run into tmp_path/out (then removed): what the first run must leave."""
    r = zygote.run("bin2st", src, "out", *SHARD, count=True, cwd=tmp_path)
    assert r.rc == 0, r.stderr
    want = output_files(tmp_path / "out")
    import shutil
    shutil.rmtree(tmp_path / "out")
    return want, r.events


def _one_line(r, *needles):
    assert r.rc == 2 and len(r.lines) == 1 and r.lines[0].startswith("error: "), (r.rc, r.stderr)
    assert all(n in r.lines[0] for n in needles), r.lines[0]


@pytest.mark.parametrize("flags", [[], ["--force"], ["--resume"]], ids=["plain", "force", "resume"])
def test_second_run_refused_while_first_writes(src, tmp_path, zygote, reference, flags):
    want, events = reference
    first = zygote.start("bin2st", src, "out", *SHARD, hold=events // 2, cwd=tmp_path)
    zygote.held(first)                                  # mid-run: some shards written, lock held
    staged = sorted(p.name for p in (tmp_path / ".out.partial").iterdir())
    second = zygote.run("bin2st", src, "out", *SHARD, *flags, cwd=tmp_path)
    _one_line(second, "another ling-convert run is writing this output")
    assert sorted(p.name for p in (tmp_path / ".out.partial").iterdir()) == staged   # untouched
    zygote.release(first)
    done = zygote.wait(first)
    assert done.rc == 0, done.stderr
    assert output_files(tmp_path / "out") == want
    v = zygote.run("verify", src, tmp_path / "out", cwd=tmp_path)
    assert v.rc == 0, v.stderr


def test_output_appearing_before_the_lock_is_not_replaced(src, tmp_path, zygote, reference):
    """The second run started, then the first committed OUT before the second took the lock: the second
    must not swap its own result over OUT (that needs --force). It sees OUT under the lock and refuses."""
    want, _ = reference
    second = zygote.start("to-mindie", "lite", write_tiny(tmp_path / "lite", "ling-lite"), "out", hold="os.mkdir",
                          cwd=tmp_path)
    assert zygote.held(second) == "os.mkdir"          # before its staging dir and lock
    first = zygote.run("bin2st", src, "out", *SHARD, cwd=tmp_path)
    assert first.rc == 0, first.stderr
    zygote.release(second)
    r = zygote.wait(second)
    _one_line(r)
    assert "output already exists" in r.lines[0] or "output appeared while this run was writing" in r.lines[0]
    assert output_files(tmp_path / "out") == want
    assert not (tmp_path / ".out.partial").exists()
