"""The package works installed, not only from the checkout: the wheel and the sdist carry the
schema tables, and an unpacked wheel finds them with the checkout out of reach."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILES = sorted(str(p.relative_to(REPO / "schemas")) for p in (REPO / "schemas").rglob("*.json"))


def _build(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built the way `pip install .` builds one: sdist first, then the wheel from it."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    # A copy, so the in-tree build leaves no build/ or egg-info in the checkout.
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "build", "*.egg-info",
                                                             "tests", "benchmarks", ".*"))
    _build([sys.executable, "-c", f"import setuptools.build_meta as b; b.build_sdist({str(tmp)!r})"], src)
    sdist = next(tmp.glob("*.tar.gz"))
    _build([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp),
            str(sdist)], tmp)
    return next(tmp.glob("*.whl"))


def test_wheel_from_sdist_holds_every_schema_file(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("ling_convert/_schemas/") for n in names
                     if n.startswith("ling_convert/_schemas/") and n.endswith(".json"))
    assert SCHEMA_FILES and shipped == SCHEMA_FILES


def test_unpacked_wheel_detects_a_model_without_the_checkout(wheel, tiny, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import ling_convert, ling_convert.core.schemas as s, sys; from ling_convert import api; "
            "print(ling_convert.__file__); print(s.schemas_dir()); "
            "print(api.inspect_checkpoint(sys.argv[1])['architecture'])")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LING_CONVERT_SCHEMAS")}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run([sys.executable, "-c", code, str(tiny("ling-lite"))], cwd="/", env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    pkg_file, schemas, arch = r.stdout.split("\n")[:3]
    assert pkg_file.startswith(str(site)) and schemas == str(site / "ling_convert" / "_schemas"), r.stdout
    assert arch.startswith("Bailing"), r.stdout
