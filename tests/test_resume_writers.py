"""--resume for the writers that are not HF safetensors: st2dcp (per .distcp file) and to-gguf
(per checkpoint inside a file). Interrupted here with Ctrl-C at a chosen point; the SIGKILL
trials for every edge are in tests/robustness/test_kill_resume_edges.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ling_convert.core.output import sha256_file


def _hashes(paths) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(paths) if p.is_file() and not p.name.endswith(".ling-convert.json")}


def _interrupt_on_call(monkeypatch, module, attr: str, n: int) -> list:
    """Ctrl-C on the n-th call of module.attr (n=None: never); returns the list of calls made."""
    real, calls = getattr(module, attr), []

    def wrapped(*a, **kw):
        calls.append(a)
        if n is not None and len(calls) == n:
            raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(module, attr, wrapped)
    return calls


# -- st2dcp ------------------------------------------------------------------------------------

def _st2dcp(src: Path, out: Path, **kw):
    from ling_convert.api import hf_to_dcp
    return hf_to_dcp(src, out, max_shard_size="20KB", **kw)


def _progress(out: Path) -> dict:
    return json.loads((out.parent / f".{out.name}.partial" / "progress.json").read_text())


def test_st2dcp_resume_reuses_finished_files(tiny, tmp_path, monkeypatch):
    import ling_convert.formats.dcp.writer as dw
    src = tiny("ling-mini-2", "safetensors", 2)
    _st2dcp(src, tmp_path / "ref")
    want = _hashes((tmp_path / "ref").iterdir())
    total = sum(1 for n in want if n.endswith(".distcp"))
    assert total >= 4
    _interrupt_on_call(monkeypatch, dw, "write_file", 3)
    with pytest.raises(KeyboardInterrupt):
        _st2dcp(src, tmp_path / "out")
    assert not (tmp_path / "out").exists() and len(_progress(tmp_path / "out")["files"]) == 2
    calls = _interrupt_on_call(monkeypatch, dw, "write_file", None)
    _st2dcp(src, tmp_path / "out", resume=True)
    assert len(calls) == total - 2                         # the two finished files were not written again
    assert _hashes((tmp_path / "out").iterdir()) == want


def test_st2dcp_resume_without_recorded_offsets_rewrites(tiny, tmp_path, monkeypatch):
    """A finished file whose blob offsets were not recorded cannot go into .metadata: it is written again."""
    import ling_convert.formats.dcp.writer as dw
    src = tiny("ling-mini-2", "safetensors", 2)
    _st2dcp(src, tmp_path / "ref")
    _interrupt_on_call(monkeypatch, dw, "write_file", 3)
    with pytest.raises(KeyboardInterrupt):
        _st2dcp(src, tmp_path / "out")
    prog_path = tmp_path / ".out.partial" / "progress.json"
    prog = json.loads(prog_path.read_text())
    first = next(iter(prog["meta"]))
    prog["meta"][first] = prog["meta"][first][1:]           # offsets that no longer tile the file
    prog_path.write_text(json.dumps(prog))
    calls = _interrupt_on_call(monkeypatch, dw, "write_file", None)
    _st2dcp(src, tmp_path / "out", resume=True)
    assert [Path(c[0]).name for c in calls][0] == first        # rewritten; the other finished file reused
    assert _hashes((tmp_path / "out").iterdir()) == _hashes((tmp_path / "ref").iterdir())


def test_st2dcp_without_resume_starts_over(tiny, tmp_path, monkeypatch):
    import ling_convert.formats.dcp.writer as dw
    src = tiny("ling-mini-2", "safetensors", 2)
    _interrupt_on_call(monkeypatch, dw, "write_file", 3)
    with pytest.raises(KeyboardInterrupt):
        _st2dcp(src, tmp_path / "out")
    calls = _interrupt_on_call(monkeypatch, dw, "write_file", None)
    _st2dcp(src, tmp_path / "out")
    assert len(calls) == sum(1 for p in (tmp_path / "out").iterdir() if p.name.endswith(".distcp"))


# -- to-gguf -----------------------------------------------------------------------------------

def _to_gguf(src: Path, out: Path, **kw):
    from ling_convert.api import to_gguf_file
    out.parent.mkdir(exist_ok=True)
    return to_gguf_file(src, out, outtype="q8_0", **kw)


def _gguf_files(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(out.stem) and p.suffix == ".gguf"]


def _interrupted_gguf(src: Path, out: Path, monkeypatch, at: int, **kw) -> None:
    """A to-gguf run stopped (Ctrl-C) when it encodes its `at`-th tensor; checkpoints every 64 KB."""
    import ling_convert.formats.gguf.writer as gw
    monkeypatch.setenv("LING_CONVERT_CHECKPOINT_BYTES", "65536")
    _interrupt_on_call(monkeypatch, gw, "_chunks", at)
    with pytest.raises(KeyboardInterrupt):
        _to_gguf(src, out, **kw)


@pytest.mark.parametrize("split", [None, "200KB"])
def test_to_gguf_resume_continues_from_checkpoint(tiny, tmp_path, monkeypatch, split):
    import ling_convert.formats.gguf.writer as gw
    src = tiny("ling-mini-2", "safetensors", 2)
    _to_gguf(src, tmp_path / "ref" / "m.gguf", split_max_size=split)
    want = _hashes(_gguf_files(tmp_path / "ref" / "m.gguf"))
    ntensors = len(gw._reader(sorted(_gguf_files(tmp_path / "ref" / "m.gguf"))[0]).tensors)
    out = tmp_path / "out" / "m.gguf"
    _interrupted_gguf(src, out, monkeypatch, at=45, split_max_size=split)
    assert not _gguf_files(out)                                 # nothing that looks finished
    assert _progress(out)["partial"]
    calls = _interrupt_on_call(monkeypatch, gw, "_chunks", None)
    _to_gguf(src, out, split_max_size=split, resume=True)
    assert _hashes(_gguf_files(out)) == want
    if split is None:
        assert len(calls) < ntensors - 20                      # checkpointed tensors copied, not encoded
    assert not any(p.name.endswith(".prev") for p in out.parent.rglob("*"))


def test_to_gguf_resume_refuses_a_tampered_prefix(tiny, tmp_path, monkeypatch):
    """The checkpoint's sha256 guards the kept bytes: a changed byte means nothing is reused."""
    import ling_convert.formats.gguf.writer as gw
    src = tiny("ling-mini-2", "safetensors", 2)
    _to_gguf(src, tmp_path / "ref" / "m.gguf")
    out = tmp_path / "out" / "m.gguf"
    _interrupted_gguf(src, out, monkeypatch, at=45)
    cp = _progress(out)["partial"]["m.gguf"]
    kept = out.parent / f".{out.name}.partial" / "files" / cp["file"]
    with open(kept, "r+b") as f:                               # flip one byte inside the checkpointed data
        f.seek(cp["end"] - 100)
        b = f.read(1)
        f.seek(cp["end"] - 100)
        f.write(bytes([b[0] ^ 0xFF]))
    calls = _interrupt_on_call(monkeypatch, gw, "_chunks", None)
    _to_gguf(src, out, resume=True)
    assert _hashes([out]) == _hashes([tmp_path / "ref" / "m.gguf"])
    assert len(calls) == len(gw._reader(out).tensors)         # every tensor encoded again


def test_to_gguf_resume_ignores_other_options(tiny, tmp_path, monkeypatch):
    """Checkpoints of a run with another --outtype belong to another plan: nothing is reused."""
    import ling_convert.formats.gguf.writer as gw
    from ling_convert.api import to_gguf_file
    src = tiny("ling-mini-2", "safetensors", 2)
    out = tmp_path / "m.gguf"
    _interrupted_gguf(src, out, monkeypatch, at=45)
    calls = _interrupt_on_call(monkeypatch, gw, "_chunks", None)
    to_gguf_file(src, out, outtype="f16", resume=True)
    assert len(calls) == len(gw._reader(out).tensors)
    to_gguf_file(src, tmp_path / "ref.gguf", outtype="f16")
    assert sha256_file(out) == sha256_file(tmp_path / "ref.gguf")
