"""The demo speaks as it goes, fits its table in 100 columns without cutting words, shows each lossy
edge's tolerance beside its result, says where it wrote, and removes its temporary directory."""

from __future__ import annotations

import re
from pathlib import Path

from ling_convert.cli.common import text_table


def test_text_table_wraps_at_words_only():
    long = "n/a (MindIE has no recipe for BailingMoeV2ForCausalLM; use vLLM or SGLang for Ling 2.0 models)"
    rows = [["ling-mini-2", "to-mindie", "0.00", "0 B", long, ""],
            ["ling-lite", "yarn --factor 4 --remove (round trip)", "0.06", "272.82 KB", "PASS bit-exact", "bit-exact"]]
    text = text_table(["model", "edge", "s", "size", "result", "tolerance"], rows, width=75)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 75 and len(lines) > 4
    words = text.split()
    for w in long.split() + "yarn --factor 4 --remove (round trip)".split():
        assert w in words, w          # every word whole, on one line


def _run_demo(cli, *extra):
    code, out, err = cli("demo", "--model", "ling-lite", *extra)
    assert code == 0, err
    return out, err


def _cells(lines: list[str]) -> list[dict[str, str]]:
    """The table's rows as {header: cell text}, wrapped cells joined again (columns from the ─ rule)."""
    rule = next(i for i, ln in enumerate(lines) if ln.startswith("─"))
    spans = [m.span() for m in re.finditer(r"─+", lines[rule])]
    spans[-1] = (spans[-1][0], 10_000)
    heads = [lines[rule - 1][a:b].strip() for a, b in spans]
    rows = []
    for ln in lines[rule + 1:]:
        parts = [ln[a:b].strip() for a, b in spans]
        if parts[0]:
            rows.append({h: [] for h in heads})
        for h, p in zip(heads, parts):
            if p:
                rows[-1][h].append(p)
    return [{h: " ".join(v) for h, v in r.items()} for r in rows]


def test_demo_progress_table_and_temp_dir(cli):
    out, err = _run_demo(cli)
    progress = [ln for ln in err.splitlines() if ln.startswith("ling-lite ")]
    assert len(progress) >= 11 and all(re.search(r"\d+\.\d\d s  (PASS|FAIL|n/a)", ln) for ln in progress)
    lines = out.splitlines()
    assert max(map(len, lines[:-1])) <= 100      # the table; the last line names the directory
    rows = {r["edge"]: r for r in _cells(lines[1:-1])}
    assert re.fullmatch(r"PASS cos [\d.]+ top1 \d+%", rows["quantize"]["result"]), rows["quantize"]
    assert rows["quantize"]["tolerance"] == "cos≥0.94 top1≥60%"
    assert rows["to-gguf"]["tolerance"].startswith("max≤") and rows["bin2st"]["tolerance"] == "bit-exact"
    where = re.search(r"outputs were written to (\S+), now removed", lines[-1])
    assert where and not Path(where.group(1)).exists(), lines[-1]


def test_demo_keeps_workdir(cli, tmp_path):
    out, _ = _run_demo(cli, "--workdir", tmp_path)
    assert out.splitlines()[-1] == f"outputs kept in {tmp_path}"
    assert (tmp_path / "ling-lite" / "out-quantize" / "config.json").exists()
