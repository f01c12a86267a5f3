"""Parallelism below the shard (fill.py): every heavy edge gives the same bytes for 1, 2 and 3 workers,
one output file or several; the comparison sees a single misplaced write; memory stays bounded."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import dcp_fixtures as fx  # noqa: E402

from ling_convert.core import fill  # noqa: E402
from ling_convert.cli import main  # noqa: E402
from ling_convert.core.fill import FillPool, Piece, Region  # noqa: E402
from ling_convert.testing import write_tiny  # noqa: E402

V2, LITE = "ling-mini-2", "ling-lite"


@pytest.fixture(scope="module")
def srcs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fill-src")
    st = write_tiny(root / "st", V2, shards=2)
    dcp = fx.write_dcp(root / "dcp", fx.megatron_state(V2, rows=384), fx.tensor_parallel)
    fx.write_common(dcp, fx.megatron_args(V2))
    fp8 = root / "fp8"
    _run("quantize", st, fp8, "--workers", "1")
    return {"bin": write_tiny(root / "bin", V2, fmt="bin", shards=2), "st": st, "dcp": dcp, "fp8": fp8,
            "lite": write_tiny(root / "lite", LITE, shards=2), "tok": st}


def _run(*args) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # tiny shapes are off vLLM's FP8 grid: the edges warn
        assert main([str(a) for a in args]) == 0, args


# edge -> (source key, command before SRC OUT, options after; `{many}` = several output files)
EDGES = {
    "bin2st": ("bin", ["bin2st"], ["--max-shard-size", "{many}"]),
    "dcp2st": ("dcp", ["dcp2st"], ["--tokenizer-dir", "{tok}", "--max-shard-size", "{many}"]),
    "dcp2st-fp8": ("dcp", ["dcp2st"], ["--force-fp8", "--tokenizer-dir", "{tok}", "--max-shard-size", "{many}"]),
    "quantize": ("st", ["quantize"], ["--max-shard-size", "{many}"]),
    "dequantize": ("fp8", ["dequantize"], ["--max-shard-size", "{many}"]),
    "to-gguf-q8_0": ("st", ["to-gguf"], ["--outtype", "q8_0", "--split-max-size", "{many}"]),
    "to-gguf-q4_0": ("st", ["to-gguf"], ["--outtype", "q4_0", "--split-max-size", "{many}"]),
    # a fixed --target-dir: the service config names the weights' path, which differs per run here
    "to-mindie": ("lite", ["to-mindie", "lite"], ["--target-dir", "/models/m", "--max-shard-size", "{many}"]),
}


def _convert(srcs, edge: str, out: Path, workers: int, many: bool) -> dict[str, bytes]:
    key, cmd, opts = EDGES[edge]
    opts = [o.replace("{many}", "60KB" if many else "5GB").replace("{tok}", str(srcs["tok"])) for o in opts]
    if "--split-max-size" in opts and not many:
        opts = opts[:-2]
    target = out / "m.gguf" if cmd[0] == "to-gguf" else out / "m"
    out.mkdir()
    _run(*cmd, srcs[key], target, *opts, "--workers", workers)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _weights(tree: dict) -> list[str]:
    return [k for k in tree if k.endswith((".safetensors", ".gguf"))]


@pytest.fixture
def fills(monkeypatch):
    """Counts the pieces worker processes made (parent side), so a test knows the pool did the work."""
    made = []
    real = FillPool.fill

    def counting(self, path, pieces, done):
        made.append(len(pieces))
        return real(self, path, pieces, done)
    monkeypatch.setattr(FillPool, "fill", counting)
    return made


@pytest.mark.parametrize("many", [False, True], ids=["one-file", "several-files"])
@pytest.mark.parametrize("edge", list(EDGES))
def test_bytes_do_not_depend_on_workers(srcs, tmp_path, edge, many, fills):
    one = _convert(srcs, edge, tmp_path / "w1", 1, many)
    assert not fills, "one worker writes in this process"
    assert (len(_weights(one)) > 1) == many
    for n in (2, 3):
        got = _convert(srcs, edge, tmp_path / f"w{n}", n, many)
        assert got.keys() == one.keys()
        assert [k for k in got if got[k] != one[k]] == [], f"{edge} with {n} workers"
    assert sum(fills) > 2 * len(_weights(one)), "the workers made the tensors, several pieces per file"


_MAKE, _made = fill._make, [0]


def _late(path, piece):
    """Negative control (module level: the pool pickles it by name): each worker writes its first
    non-copy piece one byte late."""
    if not _made[0] and piece.how[0] != "copy":
        _made[0] = 1
        piece = Piece(tuple(Region(r.offset + 1, r.nbytes) for r in piece.regions), piece.how)
    return _MAKE(path, piece)


@pytest.mark.parametrize("edge", ["quantize", "to-gguf-q8_0"])
def test_the_comparison_sees_one_misplaced_write(srcs, tmp_path, monkeypatch, edge):
    one = _convert(srcs, edge, tmp_path / "w1", 1, False)
    monkeypatch.setattr(fill, "_make", _late)
    got = _convert(srcs, edge, tmp_path / "w2", 2, False)
    assert [k for k in _weights(one) if got[k] != one[k]], "a misplaced write went unseen"


def _pieces(n: int, size: int) -> list[Piece]:
    return [Piece((Region(i * size, size),), ("fill", i)) for i in range(n)]


def _make_filled(piece: Piece, fd: int) -> None:
    import os
    (r,) = piece.regions
    os.pwrite(fd, bytes([piece.how[1] % 251]) * r.nbytes, r.offset)


def test_in_flight_pieces_stay_bounded(tmp_path):
    """Memory is flat: whatever the number of pieces, at most `ahead` are being made or waiting."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    seen = []
    with FillPool(_make_filled, workers=2) as pool:
        pool.fill(path, _pieces(200, 512)[::-1], lambda r: seen.append(r.offset))   # any order given
        assert pool.max_in_flight <= pool.ahead == 4
    assert seen == [i * 512 for i in range(200)], "regions are handed back in file order"
    data = path.read_bytes()
    assert all(data[i * 512:(i + 1) * 512] == bytes([i % 251]) * 512 for i in range(200))


def test_a_large_unchanged_tensor_is_split_into_bounded_copies(srcs, tmp_path, monkeypatch, fills):
    monkeypatch.setattr(fill, "COPY_PIECE", 4096)
    one = _convert(srcs, "bin2st", tmp_path / "w1", 1, False)
    got = _convert(srcs, "bin2st", tmp_path / "w2", 2, False)
    assert got == one
    # the tiny model's tensors are small: splitting at 4 KiB makes many more pieces than tensors
    tensors = len(json.loads((tmp_path / "w1" / "m" / "ling-convert.json").read_text())["files"])
    assert fills[0] > 4 * tensors


def test_a_worker_error_names_the_tensor(tmp_path, capsys):
    bad = write_tiny(tmp_path / "nan", LITE)
    from ling_convert.formats import safetensors as st
    path = bad / "model.safetensors"
    entries, _ = st.read_header(path)
    name = next(n for n in entries if n.endswith("mlp.experts.0.down_proj.weight"))
    raw = bytearray(path.read_bytes())
    raw[entries[name].begin:entries[name].begin + 2] = b"\xc0\x7f"     # bf16 NaN
    path.write_bytes(bytes(raw))
    assert main(["quantize", str(bad), str(tmp_path / "out"), "--workers", "2"]) == 2
    assert name in capsys.readouterr().err


def test_auto_workers_cores_capped_by_memory(monkeypatch):
    monkeypatch.setattr(fill, "cores", lambda: 8)
    monkeypatch.setattr(fill, "available_memory", lambda: 64 << 30)
    assert fill.auto_workers([1 << 30] * 100)[0] == 8                  # 64 GB / (4 x 1 GB) = 16: cores win
    monkeypatch.setattr(fill, "available_memory", lambda: 12 << 30)
    n, why = fill.auto_workers([1 << 30] * 100)
    assert n == 3 and "memory" in why                                  # 12 GB / (4 x 1 GB) = 3
    assert fill.auto_workers([1 << 20])[0] == 1                        # a tiny model: one process


def test_dry_run_prints_the_workers(srcs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fill, "SMALL_RUN", 0)
    monkeypatch.setattr(fill, "cores", lambda: 5)
    assert main(["quantize", str(srcs["st"]), str(tmp_path / "o"), "--dry-run"]) == 0
    assert "workers: 5 (5 cores available)" in capsys.readouterr().out
    assert main(["dcp2st", str(srcs["dcp"]), str(tmp_path / "o"), "--dry-run", "--workers", "1"]) == 0
    assert "workers: 1 (--workers)" in capsys.readouterr().out


def test_auto_workers_is_one_process_when_every_tensor_is_a_byte_copy(tiny, tmp_path, capsys, monkeypatch):
    # Negative control first: the same source with a computing edge gets the cores.
    monkeypatch.setattr(fill, "SMALL_RUN", 0)
    monkeypatch.setattr(fill, "cores", lambda: 5)
    src = tiny("ling-lite", "safetensors", 2)
    assert main(["quantize", str(src), str(tmp_path / "q"), "--dry-run"]) == 0
    assert "workers: 5 (5 cores available)" in capsys.readouterr().out
    for args in (["to-mindie", "lite", str(src), str(tmp_path / "m")], ["bin2st", str(tiny("ling-lite", "bin")),
                                                                         str(tmp_path / "b")]):
        assert main([*args, "--dry-run"]) == 0
        assert "workers: 1 (every tensor is copied as stored: one process)" in capsys.readouterr().out


@pytest.mark.parametrize("split", [None, "200KB"], ids=["one-file", "split"])
def test_to_gguf_resume_with_workers(srcs, tmp_path, monkeypatch, split):
    """A to-gguf run with workers, stopped after some checkpoints, resumes with workers to the same bytes,
    copying the checkpointed tensors from the killed run's file instead of encoding them again."""
    from ling_convert.api import to_gguf_file
    from ling_convert.formats.gguf import fill as gguf_fill
    monkeypatch.setenv("LING_CONVERT_CHECKPOINT_BYTES", "65536")
    (tmp_path / "ref").mkdir()
    (tmp_path / "out").mkdir()
    kw = {"outtype": "q8_0", "split_max_size": split}
    to_gguf_file(srcs["st"], tmp_path / "ref" / "m.gguf", workers=1, **kw)
    done = []

    def stop(n):
        done.append(n)
        if len(done) == 40:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        to_gguf_file(srcs["st"], tmp_path / "out" / "m.gguf", workers=2, progress=stop, **kw)
    encoded, real = [], gguf_fill._tensor_pieces
    monkeypatch.setattr(gguf_fill, "_tensor_pieces", lambda *a: encoded.append(a[1]) or real(*a))
    to_gguf_file(srcs["st"], tmp_path / "out" / "m.gguf", workers=2, resume=True, **kw)
    ref = {p.name: p.read_bytes() for p in (tmp_path / "ref").glob("*.gguf")}
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.gguf")} == ref
    import gguf
    total = sum(len(gguf.GGUFReader(tmp_path / "ref" / f).tensors) for f in ref)
    assert len(encoded) < total - 10, "checkpointed tensors are copied, not encoded again"
