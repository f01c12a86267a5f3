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


def test_demo_progress_table_and_temp_dir(cli):
    out, err = _run_demo(cli)
    progress = [ln for ln in err.splitlines() if ln.startswith("ling-lite ")]
    assert len(progress) >= 11 and all(re.search(r"\d+\.\d\d s  (PASS|FAIL|n/a)", ln) for ln in progress)
    lines = out.splitlines()
    assert max(map(len, lines[:-1])) <= 100      # the table; the last line names the directory
    quant = next(ln for ln in lines if " quantize " in ln)
    assert re.search(r"PASS cos [\d.]+ top1 \d+%\s+cos≥0\.94 top1≥60%", quant), quant
    gguf = next(ln for ln in lines if " to-gguf " in ln)
    assert "max≤" in gguf, gguf
    where = re.search(r"outputs were written to (\S+), now removed", lines[-1])
    assert where and not Path(where.group(1)).exists(), lines[-1]


def test_demo_keeps_workdir(cli, tmp_path):
    out, _ = _run_demo(cli, "--workdir", tmp_path)
    assert out.splitlines()[-1] == f"outputs kept in {tmp_path}"
    assert (tmp_path / "ling-lite" / "out-quantize" / "config.json").exists()
