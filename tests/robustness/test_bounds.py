"""Issue 17 cases that are options rather than files, and the parsers' bounds at their edges.

The malformed files themselves are corpus cases (corpus_bounds.py, run by test_corpus.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from ling_convert import api  # noqa: F401  (first: formats.dcp imported alone meets an import cycle)
from ling_convert.core import bounded
from ling_convert.core.errors import BadInputError, CorruptFileError
from ling_convert.formats.dcp.chunks import check_cover
from ling_convert.testing import tiny_config

from . import corpus  # noqa: F401  (first: it imports the corpus modules in their order)
from .corpus_formats import V2, base, copy_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dcp_fixtures as fx  # noqa: E402


def _one_line(r, needle: str) -> None:
    assert r.rc == 2, (r.rc, r.stderr)
    assert len(r.lines) == 1 and r.lines[0].startswith("error: ") and needle in r.lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("size", ["inf", "nan", "-inf", "1e400GB"])
def test_max_shard_size_not_finite(zygote, tmp_path, size):
    r = zygote.run("convert", base("hf-lite"), tmp_path / "out", "--max-shard-size", size, limit_s=60, mem_mb=1536)
    _one_line(r, "finite")
    assert not (tmp_path / "out").exists()


def test_dcp2st_dry_run_prints_the_config(zygote, tmp_path):
    r = zygote.run("dcp2st", base("dcp"), tmp_path / "out", "--dry-run", limit_s=60, mem_mb=1536)
    assert r.rc == 0, r.stderr
    cfg = json.loads(r.stdout.split("config.json:", 1)[1].split("\ndry run", 1)[0])
    assert cfg["score_function"] == "sigmoid" and cfg["moe_router_enable_expert_bias"] is True
    assert cfg["num_hidden_layers"] == fx.megatron_args(V2)["num_layers"]
    assert not (tmp_path / "out").exists()


def test_dcp2st_config_from_fixes_missing_router_args(zygote, tmp_path):
    """The refusal's fix works: the same checkpoint converts once --config-from gives the config."""
    d = copy_of("dcp", tmp_path)
    args = {k: v for k, v in fx.megatron_args(V2).items() if not k.startswith("moe_router_")}
    fx.write_common(d, args)
    r = zygote.run("dcp2st", d, tmp_path / "a", limit_s=120, mem_mb=1536)
    _one_line(r, "--config-from")
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "config.json").write_text(json.dumps(tiny_config(V2)))
    r = zygote.run("dcp2st", d, tmp_path / "b", "--config-from", cfg_dir, limit_s=120, mem_mb=1536)
    assert r.rc == 0, r.stderr


def test_json_bounds():
    assert bounded.parse_json('{"a": [1, 2]}', "x") == {"a": [1, 2]}
    assert bounded.parse_json("[" * 64 + "]" * 64, "x") is not None       # the limit itself is accepted
    for text, needle in (("[" * 65 + "]" * 65, "nested"), ("[" * 200_000 + "]" * 200_000, "nested"),
                         ("9" * 41, "digits"), ('{"a": 1', "not valid JSON"), (b'"\xff"', "UTF-8")):
        with pytest.raises(CorruptFileError, match=needle):
            bounded.parse_json(text, "x")


def test_regular_file_refuses_before_opening(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    t0 = time.monotonic()
    for p, needle in ((fifo, "FIFO"), (loop, "loop"), (Path("/dev/zero"), "character device"), (tmp_path, "directory"),
                      (str(tmp_path / "a\0b"), "NUL")):
        with pytest.raises(BadInputError, match=needle):
            bounded.read_bytes(p, 100)
    assert time.monotonic() - t0 < 5
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(CorruptFileError, match="101 bytes"):
        bounded.read_bytes(big, 100)


def test_short_never_prints_a_dag():
    x: list = []
    for _ in range(64):
        x = [x, x]
    assert bounded.short(x) == "a list of 2 items"
    assert "bits" in bounded.short(1 << 20000)


class _C:
    def __init__(self, offsets, sizes):
        self.offsets, self.sizes = tuple(offsets), tuple(sizes)


def test_chunk_cover_grid_and_irregular():
    grid = [_C((i, j), (2, 3)) for i in (0, 2) for j in (0, 3)]
    check_cover((4, 6), grid, Path("m"), "t")
    with pytest.raises(CorruptFileError, match="overlap"):
        check_cover((4, 6), grid[:3] + [_C((0, 0), (2, 3))], Path("m"), "t")
    irregular = [_C((0, 0), (2, 6)), _C((2, 0), (2, 2)), _C((2, 2), (2, 4))]
    check_cover((4, 6), irregular, Path("m"), "t")
    with pytest.raises(CorruptFileError, match="overlap"):
        check_cover((4, 6), [_C((0, 0), (2, 6)), _C((1, 0), (2, 2)), _C((2, 2), (2, 4))], Path("m"), "t")
    with pytest.raises(CorruptFileError, match="elements"):
        check_cover((4, 6), grid[:3], Path("m"), "t")


def test_chunk_cover_is_linear_for_large_grids():
    """A 1000 x 100 grid (10^5 chunks) is checked in well under a second per 10^5 chunks."""
    chunks = [_C((i, j), (1, 1)) for i in range(1000) for j in range(100)]
    t0 = time.monotonic()
    check_cover((1000, 100), chunks, Path("m"), "t")
    assert time.monotonic() - t0 < 5


def _write_wide_header(path: Path, n: int) -> None:
    """A safetensors file of `n` one-element tensors: a small file with a huge tensor count."""
    import struct
    head = json.dumps({f"model.layers.0.mlp.experts.{i}.w": {"dtype": "BF16", "shape": [1],
                                                              "data_offsets": [2 * i, 2 * i + 2]}
                       for i in range(n)}, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        f.truncate(8 + len(head) + 2 * n)


@pytest.mark.parametrize("cmd", ["inspect", "convert"])
def test_header_claiming_too_many_tensors_is_refused_before_parsing(zygote, tmp_path, cmd):
    """1.6 M entries fit in a 100 MB header; building them took minutes. The count is refused first."""
    from ling_convert.formats.safetensors.header import MAX_ENTRIES
    d = copy_of("hf-lite", tmp_path)
    for f in d.glob("*.safetensors*"):
        f.unlink()
    _write_wide_header(d / "model.safetensors", MAX_ENTRIES + 1)
    args = [d] if cmd == "inspect" else [d, tmp_path / "out"]
    r = zygote.run(cmd, *args, limit_s=30, mem_mb=1536)
    _one_line(r, "model.safetensors")
    assert f"declares {MAX_ENTRIES + 1} tensors" in r.lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("body", ["[" * 200_000, '{"files": [], "commit": ' + "9" * 5000 + "}"])
def test_cached_hub_listing_is_bounded(tmp_path, monkeypatch, body):
    """A listing cached from a hostile hub is parsed within bounds: ignored (refetched), not a crash."""
    from ling_convert.hub import sync
    monkeypatch.setenv("LING_CONVERT_CACHE", str(tmp_path))
    p = sync._listing_path("hf", "org/model", "main")
    p.parent.mkdir(parents=True)
    p.write_text(body)
    assert sync._load_listing("hf", "org/model", "main") is None


@pytest.mark.parametrize("name", ["ling-convert.json"])
def test_hostile_manifest_beside_a_checkpoint_is_ignored_by_verify(tmp_path, name):
    from ling_convert.verify.weights import read_manifest
    (tmp_path / name).write_text("[" * 200_000)
    assert read_manifest(tmp_path) == {}
