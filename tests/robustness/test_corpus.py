"""Every malformed input, through every command that reads it: one line, exit 2, nothing left."""

from __future__ import annotations

import pytest

from ling_convert.cli import main

from .corpus import CASES

COMMANDS = {
    "inspect": lambda p, out: ["inspect", p],
    "convert": lambda p, out: ["convert", p, out, "--to", "safetensors"],
    "verify": lambda p, out: ["verify", p],
}
# inspect reports what it can about files with a bad config instead of failing.
INSPECT_TOLERATES = ("config:",)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case, tmp_path, capsys):
    canary = tmp_path / "CANARY"
    work = tmp_path / "w"
    work.mkdir()
    src = case.build(work, canary)
    before = sorted(p.name for p in tmp_path.iterdir())
    for cmd, args in COMMANDS.items():
        if cmd == "inspect" and case.name.startswith(INSPECT_TOLERATES):
            continue
        out = tmp_path / f"out-{cmd}"
        code = main([str(a) for a in args(src, out)])
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2, (cmd, code, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (cmd, err)
        assert case.needle.lower() in lines[0].lower(), (cmd, case.needle, lines[0])
        assert "internal error" not in lines[0], (cmd, lines[0])
        assert sorted(p.name for p in tmp_path.iterdir()) == before, (cmd, "left output behind")
    assert not canary.exists(), "a malicious payload ran"


def test_corpus_size():
    assert len(CASES) >= 20
