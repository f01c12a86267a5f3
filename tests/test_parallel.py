"""core/pool.py: worker results handed over through reused /dev/shm slot files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ling_convert.core import pool as parallel
from ling_convert.core.pool import Job, Prefetch

N = 1 << 20     # int16 elements: 2 MiB per result, above SPILL_MIN


def _filled(value: int) -> tuple:
    return torch.full((N,), value, dtype=torch.int16), torch.tensor([value])


def _jobs(n: int) -> dict[str, Job]:
    return {f"t{i}": Job(_filled, (), (("value", i),)) for i in range(n)}


def _read(rr) -> torch.Tensor:
    with open(rr.file, "rb") as f:
        f.seek(rr.offset)
        data = bytearray(f.read(rr.info.nbytes))
    return torch.frombuffer(data, dtype=rr.info.dtype).reshape(rr.info.shape)


needs_shm = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")


@needs_shm
def test_slots_are_reused_and_every_result_is_right():
    pre = Prefetch(_jobs(24), workers=2, parts=2)
    seen = set()
    for i in range(24):
        rr = pre.take_raw(f"t{i}", 0)
        assert rr is not None, "a 2 MiB result must come through /dev/shm"
        seen.add(rr.file)
        assert torch.equal(_read(rr), torch.full((N,), i, dtype=torch.int16))
        rr.done()
        assert int(pre.take(f"t{i}", 1)) == i          # the small part came through the pipe
    # 24 results through at most (jobs in flight + cached) slot files, not one file each
    assert len(seen) <= pre.ahead + 2 < 24
    pre.close()


@needs_shm
def test_a_result_taken_as_a_tensor_is_not_overwritten_by_later_results():
    pre = Prefetch(_jobs(16), workers=2, parts=2)
    first = pre.take("t0", 0)          # mapped from its slot file, which is retired, not reused
    pre.take("t0", 1)
    for i in range(1, 16):
        rr = pre.take_raw(f"t{i}", 0)
        rr.done()
        pre.take(f"t{i}", 1)
    assert torch.equal(first, torch.zeros(N, dtype=torch.int16))
    pre.close()


@needs_shm
def test_large_slot_files_are_not_kept_idle(monkeypatch):
    monkeypatch.setattr(parallel, "SLOT_KEEP", N)      # every 2 MiB result counts as large
    pre = Prefetch(_jobs(4), workers=2, parts=2)
    rr = pre.take_raw("t0", 0)
    spill = Path(rr.file).parent
    rr.done()
    assert not Path(rr.file).exists()
    pre.take("t0", 1)
    for i in range(1, 4):
        pre.take(f"t{i}", 0)
        pre.take(f"t{i}", 1)
    pre.close()
    assert not spill.exists()       # the spill dir goes with the last result
