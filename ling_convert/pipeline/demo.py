"""`ling-convert demo` (`api.run_demo`): every registered edge on every embedded tiny model, with parity.

The tiny models are built in a work dir (temp by default), each edge's input is
produced by the route planner from the tiny safetensors model, and each output
is checked against that input with `verify` (the reference forward pass).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ..converters import all_edges, plan_route
from ..converters.config_ops import yarn
from ..core.errors import LingConvertError, RouteNotFoundError
from ..testing import TINY_MODELS, write_tiny
from ..verify.logits import verify
from ..verify.report import short
from . import convert


def _parity(ref: Path, out: Path, lossless: bool) -> str:
    rep = verify(ref, out)
    # A lossless edge must reproduce every weight and the logits bit for bit, whatever the class allows.
    status = "PASS" if rep.passed and (rep.exact or not lossless) else "FAIL"
    return f"{status}{' bit-exact' if rep.exact else ''} | {short(rep)}"


def _input_for(edge, base: dict[str, Path], model_dir: Path) -> Path:
    """A checkpoint in the edge's source format, made from the tiny safetensors model."""
    if edge.src in base:
        return base[edge.src]
    plan_route("safetensors", edge.src)  # raises RouteNotFoundError when unreachable
    dst = model_dir / f"input-{edge.src}"
    if not dst.exists():
        convert(base["safetensors"], dst, to=edge.src, options=edge.demo_options or {})
    base[edge.src] = dst
    return dst


def run_demo(workdir: str | Path | None = None, models: list[str] | None = None) -> list[dict]:
    # The tiny models' widths are far below the FP8 block size, so the serving-engine TP
    # warnings would fire on every row; they are still recorded in each manifest.
    import warnings
    warnings.filterwarnings("ignore", message=".*per partition is not a multiple of the FP8 block")
    root = Path(workdir or tempfile.mkdtemp(prefix="ling-convert-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models or list(TINY_MODELS):
        mdir = root / model
        base = {"bin": write_tiny(mdir / "bin", model, fmt="bin", shards=2),
                "safetensors": write_tiny(mdir / "safetensors", model, fmt="safetensors", shards=2)}
        for edge in all_edges():
            if edge.demo_options is None:
                continue
            rows.append(_run_edge(model, edge, base, mdir))
        rows.extend(_run_transforms(model, base["safetensors"], mdir))
    return rows


def _run_transforms(model: str, src: Path, mdir: Path) -> list[dict]:
    """Checkpoint transforms that are not format edges, each with the parity it promises."""
    rows = []
    # Hybrid-linear with no linear layer must reproduce the source logits exactly.
    rows.append(_timed(model, "to-hybrid-linear --layer-group-size 1", mdir / "hybrid-k1", src, True,
                       lambda out: convert(src, out, to="hybrid-linear", options={"layer_group_size": 1}, force=True)))
    # YaRN x4 and back: the round trip must restore the source logits exactly.
    yarned = mdir / "yarn4"
    rows.append(_timed(model, "yarn --factor 4 --remove (round trip)", mdir / "yarn-back", src, True,
                       lambda out: (yarn(src, factor=4, out=yarned, force=True),
                                    yarn(yarned, remove=True, out=out, force=True))))
    return rows


def _timed(model: str, name: str, out: Path, ref: Path, lossless: bool, run) -> dict:
    row = {"model": model, "edge": name, "seconds": 0.0, "bytes": 0}
    try:
        t0 = time.perf_counter()
        run(out)
        row["seconds"] = time.perf_counter() - t0
        row["bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        row["parity"] = _parity(ref, out, lossless)
    except LingConvertError as e:
        row["parity"] = f"n/a ({e.one_line()[:80]})"
    return row


def _run_edge(model: str, edge, base: dict, mdir: Path) -> dict:
    row = {"model": model, "edge": f"{edge.name}: {edge.src}->{edge.dst}", "seconds": 0.0, "bytes": 0}
    try:
        src = _input_for(edge, base, mdir)
        out = mdir / f"out-{edge.name}"
        t0 = time.perf_counter()
        r = convert(src, out, to=edge.dst, from_format=edge.src, force=True, options=edge.demo_options)
        row["seconds"] = time.perf_counter() - t0
        row["bytes"] = sum(p.stat().st_size for p in Path(r.output).rglob("*") if p.is_file()) \
            if Path(r.output).is_dir() else Path(r.output).stat().st_size
        # Parity of the edge itself: its output against its input, through the reference.
        row["parity"] = _parity(src, Path(r.output), edge.lossless)
    except (LingConvertError, RouteNotFoundError) as e:
        row["parity"] = f"n/a ({e.one_line()[:80]})"
    return row
