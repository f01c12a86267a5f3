"""SIGKILL each conversion edge at seeded random points, then --resume; shared by the test and kill_report.py.

A trial: run the edge's command, killing its whole process group (workers too) at the k-th
file-system event (k drawn uniformly from the events an uninterrupted run makes, see forkrun.py).
Then the output path must hold nothing or the complete output, and a `--resume` run (a plain
rerun for edges without --resume) must produce files sha256-identical to the uninterrupted run.
Every run of an edge uses the same output path, because some outputs name it (MindIE's
modelWeightPath, manifests) and must still compare byte for byte.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ling_convert.core.output import sha256_file
from ling_convert.testing import write_tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dcp_fixtures as fx  # noqa: E402

SHARD = ["--max-shard-size", "20KB"]       # many small shards: many points between and inside files
TRIALS_ENV = "LING_CONVERT_KILL_TRIALS"


@dataclass(frozen=True)
class Edge:
    name: str
    source: Callable[[Path], Path]                   # builds the input under a root dir
    argv: Callable[[Path, Path], list]               # (src, out) -> CLI args, without --resume
    rerun: tuple[str, ...] = ("--resume",)           # flags for the run after the kill
    out_name: str = "out"
    entry: str | None = None                         # the file readers open (split GGUF: the first)
    note: str = ""
    env: dict = field(default_factory=dict)          # extra environment of every run

    @property
    def resume(self) -> bool:
        return "--resume" in self.rerun


def _hf(model: str, fmt: str = "safetensors", shards: int = 2):
    return lambda root: write_tiny(root / f"{model}-{fmt}", model, fmt=fmt, shards=shards)


def _dcp(root: Path) -> Path:
    d = fx.write_dcp(root / "dcp", fx.megatron_state("ling-mini-2", rows=384), fx.tensor_parallel)
    fx.write_common(d, fx.megatron_args("ling-mini-2"))
    return d


def _converted(model: str, to: str, name: str, **options):
    def build(root: Path) -> Path:
        from ling_convert import api
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # tiny shapes are off vLLM's FP8 grid
            api.convert(write_tiny(root / f"{name}-src", model, shards=2), root / name, to=to, options=options)
        return root / name
    return build


def _gguf(root: Path) -> Path:
    from ling_convert.api import to_gguf_file
    to_gguf_file(write_tiny(root / "gguf-src", "ling-mini-2"), root / "m.gguf", outtype="f32")
    return root / "m.gguf"


_SMALL_CHECKPOINTS = {"LING_CONVERT_CHECKPOINT_BYTES": "65536"}   # tiny GGUF files: checkpoints inside them

EDGES: dict[str, Edge] = {e.name: e for e in [
    Edge("bin2st", _hf("ling-mini-2", "bin"), lambda s, o: ["bin2st", s, o, *SHARD]),
    Edge("dcp2st", _dcp, lambda s, o: ["dcp2st", s, o, *SHARD]),
    Edge("quantize", _hf("ling-mini-2"), lambda s, o: ["quantize", s, o, "--workers", "2", *SHARD],
         note="2 worker processes (killed with the group)"),
    Edge("dequantize", _converted("ling-mini-2", "fp8", "fp8"), lambda s, o: ["dequantize", s, o, *SHARD]),
    Edge("to-mindie", _hf("ling-lite"), lambda s, o: ["to-mindie", "lite", s, o, *SHARD]),
    Edge("from-mindie", _converted("ling-lite", "mindie", "mindie", variant="lite"),
         lambda s, o: ["from-mindie", s, o, *SHARD]),
    Edge("from-gguf", _gguf, lambda s, o: ["from-gguf", s, o, *SHARD]),
    Edge("st2dcp", _hf("ling-mini-2"), lambda s, o: ["st2dcp", s, o, *SHARD]),
    Edge("to-gguf", _hf("ling-mini-2"), lambda s, o: ["to-gguf", s, o], out_name="m.gguf",
         note="single file: --resume continues from the last checkpoint (every 64 KB here)", env=_SMALL_CHECKPOINTS),
    # Split files are renamed one by one (the first last); a rerun replaces the splits a
    # killed run had renamed in, because they hold the same bytes (anything else needs --force).
    Edge("to-gguf split", _hf("ling-mini-2"), lambda s, o: ["to-gguf", s, o, "--split-max-size", "200KB"],
         out_name="m.gguf", entry="m-00001-of-00004.gguf", note="4 split files, --resume", env=_SMALL_CHECKPOINTS),
]}


def default_trials(edge: str) -> int:
    n = os.environ.get(TRIALS_ENV)
    return int(n) if n else (10 if edge == "bin2st" else 3)


def output_files(out: Path) -> dict[str, str]:
    """relpath -> "sha256 mode" of every file the run produced (a dir, or GGUF file(s) plus the sidecar).

    Modes count: a MindIE dir is complete only with the modes its recipe requires."""
    def key(p: Path) -> str:
        return f"{sha256_file(p)} {stat.S_IMODE(p.stat().st_mode):o}"
    if out.is_dir():
        return {str(p.relative_to(out)): key(p) for p in sorted(out.rglob("*")) if p.is_file()}
    return {p.name: key(p) for p in _beside(out) if p.is_file()}


def _beside(out: Path) -> list[Path]:
    """OUT, its sidecar manifest and split files (`stem-0000i-of-0000N.gguf`)."""
    return sorted(p for p in out.parent.iterdir() if p.name == out.name or p.name.startswith(
        (out.name + ".", out.stem + "-")))


def _remove(out: Path) -> None:
    for p in _beside(out):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.rmtree(out.parent / f".{out.name}.partial", ignore_errors=True)


@dataclass
class EdgeReport:
    edge: str
    trials: int = 0
    killed: int = 0                 # SIGKILL landed before the output was in place
    killed_after_commit: int = 0    # SIGKILL landed after: the output must already be complete
    identical: int = 0              # final files sha256-identical to the uninterrupted run
    reused: int = 0                 # files recorded before the kill and not rewritten by --resume
    problems: list[str] = field(default_factory=list)


def run_edge(zygote, edge: Edge, root: Path, trials: int, seed: int = 1234) -> EdgeReport:
    work = root / edge.name
    work.mkdir(parents=True, exist_ok=True)
    src = edge.source(work)
    out = work / edge.out_name
    rep = EdgeReport(edge.name)
    ref = zygote.run(*edge.argv(src, out), count=True, cwd=work, env=edge.env)
    if ref.rc != 0:
        rep.problems.append(f"uninterrupted run failed: {ref.stderr.strip()}")
        return rep
    want, events = output_files(out), ref.events
    rng = random.Random(f"{seed}-{edge.name}")
    for _ in range(trials):
        _remove(out)
        rep.trials += 1
        _trial(zygote, edge, src, out, work, rng.randint(1, events), want, rep)
    _remove(out)
    return rep


def _trial(zygote, edge: Edge, src: Path, out: Path, work: Path, k: int, want: dict, rep: EdgeReport) -> None:
    staging = work / f".{edge.out_name}.partial"
    pid = zygote.start(*edge.argv(src, out), kill_at=k, cwd=work, env=edge.env)
    r = zygote.wait(pid)
    if r.rc != -9 or (work / (edge.entry or edge.out_name)).exists():
        # Finished before the kill point, or killed after the output was renamed into place.
        rep.killed_after_commit += r.rc == -9
        got = output_files(out)
        ok = got == want or _whole_without_sidecar(got, want)
        rep.identical += ok
        if not ok:
            rep.problems.append(f"k={k}: rc {r.rc}, output present but not the complete output")
        return
    rep.killed += 1
    if edge.entry is None and any(p.name.startswith(edge.out_name) for p in work.iterdir()):
        rep.problems.append(f"k={k}: killed, yet something named like the output exists")
    recorded = _recorded(staging)
    again = zygote.run(*edge.argv(src, out), *edge.rerun, cwd=work, env=edge.env)
    if again.rc != 0:
        rep.problems.append(f"k={k}: rerun failed: {again.stderr.strip()[:300]}")
        return
    leaked = list(Path("/dev/shm").glob(f"ling-convert-{pid}-*")) if Path("/dev/shm").is_dir() else []
    if leaked:     # the killed run's worker spill dir (RAM) must be swept by the next run
        rep.problems.append(f"k={k}: {leaked[0]} left in /dev/shm")
    if output_files(out) == want and not staging.exists():
        rep.identical += 1
        rep.reused += recorded if edge.resume else 0
    else:
        rep.problems.append(f"k={k}: output after the rerun ({' '.join(edge.rerun) or 'plain'}) differs")


def _whole_without_sidecar(got: dict, want: dict) -> bool:
    # Killed between renaming the GGUF file(s) into place and the sidecar manifest: the GGUF is whole.
    files = {k: v for k, v in want.items() if not k.endswith(".ling-convert.json")}
    return got == files and files != want


def _recorded(staging: Path) -> int:
    """Files the killed run finished, plus files it had checkpointed part of (GGUF)."""
    try:
        prog = json.loads((staging / "progress.json").read_text())
        return len(prog["files"]) + len(prog.get("partial") or {})
    except (OSError, ValueError, KeyError):
        return 0


def table(reports: list[EdgeReport]) -> str:
    """Markdown; "killed mid-run" counts kills before the output was in place (+ those after the rename,
    where the output must already be complete)."""
    rows = ["edge | trials | killed mid-run | identical after --resume | note",
            "--- | --- | --- | --- | ---"]
    for r in reports:
        extra = f" (+{r.killed_after_commit} after commit)" if r.killed_after_commit else ""
        rows.append(f"{r.edge} | {r.trials} | {r.killed}{extra} | {r.identical}/{r.trials} | {EDGES[r.edge].note}")
    return "\n".join(rows)
