"""Every malformed input, through every command that reads it: one line, exit 2, nothing left, no payload.

Each run is the real CLI in its own process (forked from a pre-imported interpreter, see
forkrun.py), so stderr is what a user sees: a traceback or a stray warning line would show.
Pairs where a command legitimately does not fail are listed in NOT_READ with the reason;
they are run too and must succeed cleanly, so the table cannot go stale. Pairs in FLAGGED
are readable inputs a check must report (exit 1, the finding on stdout).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

from .corpus import CASES
from .corpus_formats import base

COMMANDS = {
    "inspect": lambda p, o: ["inspect", p],
    "convert": lambda p, o: ["convert", p, o, "--to", "safetensors"],
    "verify": lambda p, o: ["verify", p],
    "config validate": lambda p, o: ["config", "validate", p],
    "bin2st": lambda p, o: ["bin2st", p, o],
    "quantize": lambda p, o: ["quantize", p, o],
    "convert --to fp8": lambda p, o: ["convert", p, o, "--to", "fp8"],
    "dequantize": lambda p, o: ["dequantize", p, o],
    "to-gguf": lambda p, o: ["to-gguf", p, o.with_suffix(".gguf")],
    "from-gguf": lambda p, o: ["from-gguf", p, o],
    "st2dcp": lambda p, o: ["st2dcp", p, o],
    "dcp2st": lambda p, o: ["dcp2st", p, o],
    "to-mindie": lambda p, o: ["to-mindie", "lite", p, o],
    "from-mindie": lambda p, o: ["from-mindie", p, o],
    # The rank table given to a fresh deployment of the (valid) HF plus model.
    "to-mindie --rank-table": lambda p, o: ["to-mindie", "plus", base("hf-plus"), o, "--rank-table",
                                            Path(p) / "rank_table.json"],
}

HF = ("inspect", "convert", "verify", "config validate", "quantize", "to-gguf", "st2dcp", "to-mindie")
MINDIE = ("inspect", "convert", "verify", "config validate", "from-mindie")
READERS = {
    "st": HF, "index": HF, "config": HF, "config-counts": HF, "bf16": HF + ("convert --to fp8",),
    "bin": ("inspect", "convert", "verify", "bin2st", "quantize", "to-gguf"),
    "dcp": ("inspect", "convert", "verify", "dcp2st"),
    "fp8": ("inspect", "convert", "verify", "dequantize", "to-gguf"),
    "gguf": ("inspect", "convert", "verify", "config validate", "from-gguf", "to-gguf"),
    "mindie": MINDIE,
    "rank-table": MINDIE + ("to-mindie --rank-table",),
}


def _pairs(cases: tuple[str, ...], commands: tuple[str, ...], why: str) -> dict:
    return {(c, cmd): why for c in cases for cmd in commands}


# (case name or name prefix, command) -> why the command does not (and should not) fail on it.
NOT_READ: dict[tuple[str, str], str] = {
    **_pairs(("st:", "index:"), ("config validate",),
             "checks config.json against its schema; it never opens the weights"),
    **_pairs(("config: missing field", "config: wrong type", "config: unknown architecture",
              "config: architectures not a list", "config: missing file", "config: layers disagree",
              "config: vocab_size", "config: hidden_size", "config: num_attention_heads", "config: yarn",
              "config: num_experts_per_tok"), ("inspect",),
             "inspect reports a bad config as architecture_error and still describes the files (by design)"),
    **_pairs(("config: layers disagree", "config: vocab_size", "config: hidden_size",
              "config: num_attention_heads"), ("config validate",),
             "the config is valid on its own; only the tensors contradict it, and config validate reads no tensors"),
    **_pairs(("config: vocab_size", "config: yarn", "config: num_experts_per_tok"),
             ("convert", "quantize", "to-mindie"),
             "copies config and tensors through unchanged (no shape maths); verify and config validate judge them"),
    **_pairs(("config: vocab_size", "config: yarn", "config: num_experts_per_tok"), ("st2dcp",),
             "Megatron args carry the fields as given; no tensor shape depends on them"),
    **_pairs(("config: num_experts_per_tok",), ("to-gguf",),
             "written to GGUF as expert_used_count as given; no tensor shape depends on it"),
    **_pairs(("config: num_hidden_layers of", "config: num_experts of", "config: zero attention heads",
              "config: head_dim disagrees"), ("inspect",),
             "inspect reports a config its tensors contradict as architecture_error and still describes the files"),
    **_pairs(("config: num_hidden_layers of", "config: num_experts of", "config: head_dim disagrees"),
             ("config validate",),
             "the config is valid on its own; only the tensors contradict it, and config validate reads no tensors"),
    **_pairs(("dcp: common.pt args",), ("inspect",),
             "inspect reports a config it cannot derive as architecture_error and still describes the files"),
    **_pairs(("bf16:",), ("inspect", "convert", "config validate", "to-gguf", "st2dcp", "to-mindie"),
             "NaN/Inf are valid bf16 values: lossless edges copy them; only FP8 cannot represent them"),
    **_pairs(("dcp: code-running global in a .distcp", "dcp: .distcp", "dcp: storage entry past",
              "dcp: tensor dtype", "dcp: unmapped"), ("inspect",),
             "inspect reads .metadata only, never chunk data, and lists keys without mapping them"),
    **_pairs(("fp8:",), ("inspect",), "inspect reads headers and config only; it pairs no scales"),
    **_pairs(("gguf: split shard missing",), ("config validate",),
             "reads the metadata of the file given (the first split), which is intact"),
    **_pairs(("mindie:",), ("inspect",), "inspect reads the weights' headers only"),
    **_pairs(("mindie: rank table", "mindie: service config"), ("inspect", "convert", "verify", "from-mindie"),
             "the HF result needs only weights and config.json(.bak); from-mindie drops the rank table and "
             "service config (the writer owns them), so they are not its input"),
}


# Inputs that are readable but wrong in a way a check must report: exit 1 (verification
# failed) with the finding on stdout, not a bad-input error.
FLAGGED: dict[tuple[str, str], str] = {
    ("bf16:", "verify"): "NaN or Inf",   # the non-finite weight reaches the logits
}


def flagged(case_name: str, cmd: str) -> str | None:
    return next((needle for (prefix, c), needle in FLAGGED.items() if c == cmd and case_name.startswith(prefix)),
                None)


def not_read(case_name: str, cmd: str) -> str | None:
    for (prefix, c), why in NOT_READ.items():
        if c == cmd and case_name.startswith(prefix):
            return why
    return None


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _digest(d: Path) -> dict[str, str]:
    """The source (`d` and every entry under it) by content: files by sha256, links by target,
    special files by kind (never opened: a FIFO would block)."""
    out = {}
    for p in [d, *sorted(d.rglob("*"))] if d.is_dir() else [d]:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            out[str(p)] = "-> " + os.readlink(p)
        elif stat.S_ISDIR(st.st_mode):
            out[str(p)] = "dir"
        elif stat.S_ISREG(st.st_mode):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p)] = oct(stat.S_IFMT(st.st_mode))
    return out


LIMIT_S = 90       # a hang fails the case (SIGALRM), it never stalls the suite
MAX_GROWTH_MB = 1024


def _clean(work: Path, keep: list[str]) -> None:
    for p in work.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case, tmp_path, zygote):
    canary = tmp_path / "CANARY"
    work = tmp_path / "w"
    work.mkdir()
    src = case.build(work, canary)
    before, digest = _listing(work), _digest(Path(src))
    for cmd in READERS[case.kind]:
        t0 = time.monotonic()
        r = zygote.run(*COMMANDS[cmd](src, work / "out"), cwd=work, limit_s=LIMIT_S, mem_mb=MAX_GROWTH_MB + 512)
        assert r.rc != -signal.SIGALRM, (cmd, f"still running after {LIMIT_S} s (a hang)")
        assert r.rc != 3, (cmd, "exit 3 is a bug in ling-convert, never a verdict on an input", r.stderr)
        assert r.grew_mb is not None and r.grew_mb < MAX_GROWTH_MB, (cmd, r.grew_mb, r.rc, r.stderr[-300:])
        assert time.monotonic() - t0 < LIMIT_S
        assert _digest(Path(src)) == digest, (cmd, "the source changed")
        assert "Traceback" not in r.stderr + r.stdout, (cmd, r.stderr)
        finding = flagged(case.name, cmd)
        if finding:      # readable, and the check reports what is wrong with it: exit 1
            assert r.rc == 1 and finding in r.stdout, (cmd, r.rc, r.stdout[-500:], r.stderr)
            _clean(work, before)
            continue
        why = not_read(case.name, cmd)
        if why:          # documented: this command does not read the broken part; it must still work
            assert r.rc == 0, (cmd, why, r.stderr)
            _clean(work, before)
            continue
        assert r.rc == 2, (cmd, r.rc, r.stderr)
        assert len(r.lines) == 1 and r.lines[0].startswith("error: "), (cmd, r.stderr)
        assert "internal error" not in r.lines[0], (cmd, r.lines[0])
        assert case.matches(r.lines[0]), (cmd, case.needle, r.lines[0])
        assert _listing(work) == before, (cmd, "left output or staging behind", _listing(work))
    assert not canary.exists(), "a malicious payload ran"


def test_corpus_size_and_tables():
    assert len(CASES) >= 45
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} <= set(READERS)
    assert all(cmd in COMMANDS for cmds in READERS.values() for cmd in cmds)
    # Every NOT_READ entry applies to at least one case that the command reads.
    for prefix, cmd in NOT_READ:
        assert any(c.name.startswith(prefix) and cmd in READERS[c.kind] for c in CASES), (prefix, cmd)
