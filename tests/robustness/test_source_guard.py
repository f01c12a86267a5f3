"""The source is never touched: every writing command refuses an output that is the source, lies inside
it, holds it, or reaches it through a symlink (--force included); staging never writes through a
planted link; `yarn --in-place` edits a linked config only inside the checkpoint.

Each refusal: exit 2, one line naming the output, no traceback, seconds, < 1 GB, and the whole work
directory (the source included) byte-identical afterwards, nothing left behind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ling_convert.testing import write_tiny

from .corpus import CASES as _CORPUS  # noqa: F401  (loads corpus_formats in its import order)
from .corpus_formats import copy_of
from .refusal import assert_refused, tree_hash


def _link(work: Path, name: str, to: Path) -> Path:
    (work / name).symlink_to(to, target_is_directory=to.is_dir())
    return work / name


def _bin(work: Path) -> Path:
    return write_tiny(work / "src", "ling-lite", fmt="bin")


# id -> (source builder, argv from (src, work), the output the error must name)
CASES = {
    "quantize X X --force": ("hf-lite", lambda s, w: ["quantize", s, s, "--force"], lambda s, w: s),
    "convert X X/sub": ("hf-lite", lambda s, w: ["convert", s, s / "sub"], lambda s, w: s / "sub"),
    "convert X PARENT --force": ("hf-lite", lambda s, w: ["convert", s, w, "--force"], lambda s, w: w),
    "convert X LINK --force (LINK -> X)": ("hf-lite", lambda s, w: ["convert", s, _link(w, "l", s), "--force"],
                                           lambda s, w: w / "l"),
    "convert X LINKDIR/sub (LINKDIR -> X)": ("hf-lite", lambda s, w: ["convert", s, _link(w, "l", s) / "sub"],
                                             lambda s, w: w / "l" / "sub"),
    "bin2st SRC SRC/out": (_bin, lambda s, w: ["bin2st", s, s / "out"], lambda s, w: s / "out"),
    "bin2st SRC SRC --force": (_bin, lambda s, w: ["bin2st", s, s, "--force"], lambda s, w: s),
    "dequantize FP8 FP8 --force": ("fp8", lambda s, w: ["dequantize", s, s, "--force"], lambda s, w: s),
    "convert --to fp8 X X/q": ("hf-lite", lambda s, w: ["convert", s, s / "q", "--to", "fp8"], lambda s, w: s / "q"),
    "st2dcp X X/dcp": ("hf-lite", lambda s, w: ["st2dcp", s, s / "dcp"], lambda s, w: s / "dcp"),
    "dcp2st DCP PARENT --force": ("dcp", lambda s, w: ["dcp2st", s, w, "--force"], lambda s, w: w),
    "dcp2st DCP HF/sub --config-from HF": ("dcp", lambda s, w: ["dcp2st", s, _hf(w) / "sub", "--config-from", _hf(w)],
                                           lambda s, w: w / "hf" / "sub"),
    "to-gguf X X/m.gguf": ("hf-lite", lambda s, w: ["to-gguf", s, s / "m.gguf"], lambda s, w: s / "m.gguf"),
    "to-gguf X LINK.gguf --force (LINK -> X/model.safetensors)": (
        "hf-lite", lambda s, w: ["to-gguf", s, _link(w, "l.gguf", s / "model.safetensors"), "--force"],
        lambda s, w: w / "l.gguf"),
    "from-gguf G G --force": ("gguf", lambda s, w: ["from-gguf", s, s, "--force"], lambda s, w: s),
    "from-gguf G DIR-OF-G --force": ("gguf", lambda s, w: ["from-gguf", s, w, "--force"], lambda s, w: w),
    "to-mindie X X/m": ("hf-lite", lambda s, w: ["to-mindie", "lite", s, s / "m"], lambda s, w: s / "m"),
    "from-mindie M M --force": ("mindie", lambda s, w: ["from-mindie", s, s, "--force"], lambda s, w: s),
    "to-hybrid-linear X X/h": ("hf-lite", lambda s, w: ["to-hybrid-linear", s, s / "h"], lambda s, w: s / "h"),
    "yarn X --out PARENT --force": ("hf-lite", lambda s, w: ["yarn", s, "--factor", "4", "--out", w, "--force"],
                                    lambda s, w: w),
    "yarn X --out LINKDIR/sub (LINKDIR -> X)": (
        "hf-lite", lambda s, w: ["yarn", s, "--factor", "4", "--out", _link(w, "l", s) / "sub"],
        lambda s, w: w / "l" / "sub"),
}


def _hf(work: Path) -> Path:
    d = work / "hf"
    if not d.exists():
        write_tiny(d, "ling-mini-2")
    return d


@pytest.mark.parametrize("name", list(CASES))
def test_output_overlapping_the_source_is_refused(name, tmp_path, zygote):
    kind, argv, named = CASES[name]
    work = tmp_path / "w"
    work.mkdir()
    src = kind(work) if callable(kind) else copy_of(kind, work)
    args = argv(src, work)                       # may plant links or a --config-from dir
    before = tree_hash(work)
    t0 = time.monotonic()
    r = zygote.run(*args, cwd=work)
    assert_refused(r, time.monotonic() - t0, named(src, work))
    assert tree_hash(work) == before, "the source (or something beside it) changed"


def test_staging_name_planted_as_a_link_is_not_written_through(tmp_path, zygote):
    """`.out.partial` -> another directory: that directory is left as it was; the link itself goes."""
    src = write_tiny(tmp_path / "src", "ling-lite")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    _link(tmp_path, ".out.partial", victim)
    before = tree_hash(victim), tree_hash(src)
    r = zygote.run("convert", src, "out", cwd=tmp_path)
    assert r.rc == 0, r.stderr
    assert (tree_hash(victim), tree_hash(src)) == before
    assert (tmp_path / "out").is_dir() and not (tmp_path / "out").is_symlink()
    assert not (tmp_path / ".out.partial").exists() and not (tmp_path / ".out.partial").is_symlink()


@pytest.mark.parametrize("where", ["files/model.safetensors", "model.safetensors", "progress.json.tmp", "lock"])
def test_links_planted_in_a_staging_dir_are_not_written_through(where, tmp_path, zygote):
    """A killed run's staging dir with a link under a name the run writes, resumed: the link's target survives."""
    src = write_tiny(tmp_path / "src", "ling-lite")
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"precious" * 1000)
    planted = tmp_path / ".out.partial" / where
    planted.parent.mkdir(parents=True)
    planted.symlink_to(victim)
    r = zygote.run("convert", src, "out", "--resume", cwd=tmp_path)
    assert r.rc == 0, r.stderr
    assert victim.read_bytes() == b"precious" * 1000
    r = zygote.run("verify", src, "out", cwd=tmp_path)
    assert r.rc == 0, r.stdout + r.stderr


def test_yarn_in_place_refuses_a_config_linked_outside(tmp_path, zygote):
    model = write_tiny(tmp_path / "m", "ling-lite")
    outside = tmp_path / "elsewhere.json"
    os.replace(model / "config.json", outside)
    (model / "config.json").symlink_to(outside)
    before = tree_hash(tmp_path)
    t0 = time.monotonic()
    r = zygote.run("yarn", model, "--factor", "4", "--in-place", cwd=tmp_path)
    assert_refused(r, time.monotonic() - t0, "config.json", "outside the checkpoint")
    assert tree_hash(tmp_path) == before


def test_yarn_in_place_edits_a_link_target_inside_the_checkpoint(tmp_path, zygote):
    model = write_tiny(tmp_path / "m", "ling-lite")
    (model / "blobs").mkdir()
    os.replace(model / "config.json", model / "blobs" / "cfg")
    (model / "config.json").symlink_to(Path("blobs") / "cfg")
    r = zygote.run("yarn", model, "--factor", "4", "--in-place", cwd=tmp_path)
    assert r.rc == 0, r.stderr
    assert (model / "config.json").is_symlink()       # the link is kept, its target rewritten
    assert json.loads((model / "blobs" / "cfg").read_text())["rope_scaling"]["factor"] == 4


def test_every_writing_command_is_covered():
    """The table names every command that writes an output (pull is in test_hub_hostile.py)."""
    writers = {"convert", "bin2st", "dcp2st", "st2dcp", "quantize", "dequantize", "to-mindie", "from-mindie",
               "to-gguf", "from-gguf", "to-hybrid-linear", "yarn"}
    assert writers <= {name.split()[0] for name in CASES}
