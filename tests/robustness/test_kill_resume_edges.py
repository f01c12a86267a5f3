"""SIGKILL every conversion edge at seeded random points: no output or a complete one, and the
rerun (--resume where the command has it) gives files sha256-identical to an uninterrupted run.

Default: 10 kills for bin2st and 3 for every other edge (CI budget);
LING_CONVERT_KILL_TRIALS=10 runs 10 for every edge. `python tests/robustness/kill_report.py`
prints the table for all edges x 10.
"""

from __future__ import annotations

import pytest

from .killpoints import EDGES, default_trials, run_edge


@pytest.mark.parametrize("edge", list(EDGES))
def test_kill_then_resume_identical(edge, tmp_path, zygote):
    trials = default_trials(edge)
    rep = run_edge(zygote, EDGES[edge], tmp_path, trials)
    assert rep.problems == [], rep.problems
    assert rep.trials == trials and rep.identical == trials
    assert rep.killed >= 1, "no kill landed before the output was in place"
    if EDGES[edge].resume and rep.killed >= 3:
        assert rep.reused > 0, "--resume rewrote every file"
