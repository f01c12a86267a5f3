"""--resume never mixes two sources: a killed run's shards are reused only when the source is the same.

The run is killed after some shards were recorded; the source is then replaced by another model of the
same shapes (same file names and sizes; in one case even the old mtimes restored). The resumed run must
write exactly what a fresh conversion of the new source writes. Unchanged, the shards are reused.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ling_convert.testing import write_tiny

from .killpoints import output_files

SHARD = ["--max-shard-size", "20KB"]


def _recorded(work: Path) -> dict[str, str]:
    return json.loads((work / ".out.partial" / "progress.json").read_text())["files"]


def _killed_run(zygote, src: Path, work: Path) -> dict[str, str]:
    """Kill bin2st once at least two shards are recorded; -> the recorded files."""
    total = zygote.run("bin2st", src, "probe", *SHARD, count=True, cwd=work)
    assert total.rc == 0, total.stderr
    shutil.rmtree(work / "probe")
    for k in range(total.events * 6 // 10, total.events, max(total.events // 40, 1)):
        r = zygote.run("bin2st", src, "out", *SHARD, kill_at=k, cwd=work)
        assert r.rc == -9 and not (work / "out").exists(), (k, r.rc, r.stderr)
        if len([f for f in _recorded(work) if f.endswith(".safetensors")]) >= 2:
            return _recorded(work)
    raise AssertionError("no kill point left two recorded shards")


def _replace(src: Path, seed: int, keep_mtimes: bool) -> None:
    old = {p.name: p.stat() for p in src.iterdir()}
    shutil.rmtree(src)
    write_tiny(src, "ling-mini-2", fmt="bin", shards=2, seed=seed)
    assert {p.name: p.stat().st_size for p in src.iterdir()} == {n: s.st_size for n, s in old.items()}
    if keep_mtimes:   # forged: same names, sizes and mtimes; only the bytes differ
        for p in src.iterdir():
            os.utime(p, ns=(old[p.name].st_atime_ns, old[p.name].st_mtime_ns))


@pytest.mark.parametrize("keep_mtimes", [False, True], ids=["replaced", "replaced-same-mtimes"])
def test_resume_after_the_source_changed_equals_a_fresh_run(keep_mtimes, tmp_path, zygote):
    src = write_tiny(tmp_path / "src", "ling-mini-2", fmt="bin", shards=2, seed=0)
    old = zygote.run("bin2st", src, "old", *SHARD, cwd=tmp_path)
    assert old.rc == 0, old.stderr
    _killed_run(zygote, src, tmp_path)
    _replace(src, seed=1, keep_mtimes=keep_mtimes)
    resumed = zygote.run("bin2st", src, "out", *SHARD, "--resume", cwd=tmp_path)
    assert resumed.rc == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    fresh = zygote.run("bin2st", src, "fresh", *SHARD, cwd=tmp_path)
    assert fresh.rc == 0, fresh.stderr
    got, want = output_files(tmp_path / "out"), output_files(tmp_path / "fresh")
    assert got == want, sorted(k for k in want if got.get(k) != want[k])
    # the negative control: no shard of the old source's output survives in the resumed one
    stale = output_files(tmp_path / "old")
    assert not [k for k in got if k.endswith(".safetensors") and got[k] == stale.get(k)]
    assert not (tmp_path / ".out.partial").exists()


def test_resume_with_the_same_source_reuses_the_recorded_shards(tmp_path, zygote):
    src = write_tiny(tmp_path / "src", "ling-mini-2", fmt="bin", shards=2, seed=0)
    ref = zygote.run("bin2st", src, "ref", *SHARD, cwd=tmp_path)
    assert ref.rc == 0, ref.stderr
    recorded = _killed_run(zygote, src, tmp_path)
    stamps = {f: (tmp_path / ".out.partial" / "files" / f).stat().st_mtime_ns for f in recorded}
    resumed = zygote.run("bin2st", src, "out", *SHARD, "--resume", cwd=tmp_path)
    assert resumed.rc == 0, resumed.stderr
    assert output_files(tmp_path / "out") == output_files(tmp_path / "ref")
    assert {f: (tmp_path / "out" / f).stat().st_mtime_ns for f in recorded} == stamps   # not rewritten


MANGLE = {
    "files-a-string": lambda p: {**p, "files": "x"},
    "files-hashes-ints": lambda p: {**p, "files": {k: 1 for k in p["files"]}},
    "meta-a-string": lambda p: {**p, "meta": "x"},
    "partial-a-list": lambda p: {**p, "partial": [1, 2]},
    "a-list": lambda p: [p],
    "nested-200000-deep": lambda p: "[" * 200_000 + "]" * 200_000,
    "not-utf8": lambda p: b"\xff\xfe{",
}


@pytest.mark.parametrize("how", list(MANGLE))
def test_resume_with_a_mangled_progress_file_starts_over(how, tmp_path, zygote):
    """progress.json is a file on disk like any input: one that is not what a run writes is not trusted."""
    src = write_tiny(tmp_path / "src", "ling-mini-2", fmt="bin", shards=2, seed=0)
    ref = zygote.run("bin2st", src, "ref", *SHARD, cwd=tmp_path)
    assert ref.rc == 0, ref.stderr
    _killed_run(zygote, src, tmp_path)
    prog = tmp_path / ".out.partial" / "progress.json"
    got = MANGLE[how](json.loads(prog.read_text()))
    prog.write_bytes(got if isinstance(got, bytes) else (got if isinstance(got, str) else json.dumps(got)).encode())
    resumed = zygote.run("bin2st", src, "out", *SHARD, "--resume", cwd=tmp_path)
    assert resumed.rc == 0 and "Traceback" not in resumed.stderr, (resumed.rc, resumed.stderr[-1500:])
    assert output_files(tmp_path / "out") == output_files(tmp_path / "ref")
