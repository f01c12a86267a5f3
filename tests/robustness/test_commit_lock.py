"""The output lock is held until the staging dir has become OUT: a second run that starts while the
first is committing is refused, whatever its flags, and the first run's output comes out whole.

The first run is paused (forkrun `hold`) just before the rename that puts OUT in place, which is
the window where the lock used to be gone already.
"""

from __future__ import annotations

import shutil
import time

import pytest

from ling_convert.testing import write_tiny

from .killpoints import output_files
from .refusal import assert_refused, tree_hash

SHARD = ["--max-shard-size", "20KB"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("commit") / "bin", "ling-mini-2", fmt="bin", shards=2)


@pytest.fixture(scope="module")
def want(src, tmp_path_factory, zygote):
    work = tmp_path_factory.mktemp("ref")
    r = zygote.run("bin2st", src, "out", *SHARD, cwd=work)
    assert r.rc == 0, r.stderr
    return output_files(work / "out")


@pytest.mark.parametrize("flags", [[], ["--force"], ["--resume"], ["--force", "--resume"]],
                         ids=["plain", "force", "resume", "force+resume"])
@pytest.mark.parametrize("cmd", ["bin2st", "convert"])
def test_second_run_during_commit_is_refused(cmd, flags, src, want, tmp_path, zygote):
    first = zygote.start("bin2st", src, "out", *SHARD, hold="os.rename@out", cwd=tmp_path)
    zygote.held(first)                                    # every file staged, OUT not yet in place
    staged = tree_hash(tmp_path / ".out.partial")
    before = tree_hash(src)
    t0 = time.monotonic()
    second = zygote.run(cmd, src, "out", *SHARD, *flags, cwd=tmp_path)
    assert_refused(second, time.monotonic() - t0, "out", "another ling-convert run is writing this output")
    assert tree_hash(tmp_path / ".out.partial") == staged and not (tmp_path / "out").exists()
    zygote.release(first)
    done = zygote.wait(first)
    assert done.rc == 0, done.stderr
    assert output_files(tmp_path / "out") == want
    assert not (tmp_path / ".out.partial").exists() and tree_hash(src) == before


def test_run_after_commit_sees_the_output(src, want, tmp_path, zygote):
    """Once the lock is released, OUT is there: a plain rerun is refused as existing, --force replaces it
    with the same bytes."""
    r = zygote.run("bin2st", src, "out", *SHARD, cwd=tmp_path)
    assert r.rc == 0, r.stderr
    t0 = time.monotonic()
    again = zygote.run("bin2st", src, "out", *SHARD, cwd=tmp_path)
    assert_refused(again, time.monotonic() - t0, "out", "already exists")
    forced = zygote.run("bin2st", src, "out", *SHARD, "--force", cwd=tmp_path)
    assert forced.rc == 0, forced.stderr
    assert output_files(tmp_path / "out") == want
    shutil.rmtree(tmp_path / "out")
