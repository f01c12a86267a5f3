"""A hostile or odd Hub, through the real CLI and the real huggingface_hub client, against the loopback
stand-in (tests/hub_standin.py) this test starts itself.

- a commit id that is not 40 hex digits (`../../other-model/config`, ...) is refused before it names any
  path: nothing is written anywhere, the client cache included;
- a body that never ends is cut at the file's listed size: exit 2, nothing kept;
- repository files named like the tool's bookkeeping are pulled intact;
- pull into a directory holding the client cache it reads from is refused.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import pytest

from .forkrun import Zygote
from .refusal import assert_refused, tree_hash

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub_standin import HubStandin  # noqa: E402

TOKEN = "tok_hostile_3b1e"


@pytest.fixture(scope="module")
def hubz(tmp_path_factory):
    """A zygote whose huggingface_hub reads an isolated cache (its constants are read at import)."""
    root = tmp_path_factory.mktemp("hubz")
    env = {"HF_HUB_CACHE": str(root / "hf-cache"), "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(root / "hf-home"), "LING_CONVERT_CACHE": str(root / "lc-cache"),
           "MODELSCOPE_CACHE": str(root / "ms-cache"), "MODELSCOPE_HOME": str(root / "ms-home")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        z = Zygote(root / "z")
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    z.cache = root / "hf-cache"
    yield z
    z.close()


@pytest.fixture
def hub():
    with HubStandin(token=TOKEN, max_lifetime=240) as h:
        yield h


def publish(hub: HubStandin, repo: str, files: dict[str, bytes], branch: str = "main") -> None:
    hub.create(repo, False, branch)
    hub.apply(repo, branch, {p: hub.regular(d) for p, d in files.items()}, [], "files")


def run(z: Zygote, hub: HubStandin, cwd: Path, *argv):
    t0 = time.monotonic()
    r = z.run(*argv, cwd=cwd, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN,
                                   "MODELSCOPE_ENDPOINT": hub.url, "MODELSCOPE_API_TOKEN": TOKEN})
    return r, time.monotonic() - t0


MODEL = {"config.json": b'{"architectures": ["BailingMoeForCausalLM"]}\n', "README.md": b"# m\n"}


COMMITS = {"traversal": "../../other-model/config", "short": "abc123", "not-hex": "g" * 40, "41-digits": "0" * 41,
           "deep": "../" * 14 + "x", "empty": ""}
# ModelScope: an empty CommitId means none was given (the listing's hash then keys the cache).
COMMIT_CASES = [(how, c) for how in ("pull", "convert hf://", "pull --hub modelscope") for c in COMMITS
                if not (how.endswith("modelscope") and c == "empty")]


@pytest.mark.parametrize("how,name", COMMIT_CASES, ids=[f"{h}-{c}" for h, c in COMMIT_CASES])
def test_commit_id_not_40_hex_is_refused_before_any_path(how, name, hubz, hub, tmp_path):
    commit, ms = COMMITS[name], how.endswith("modelscope")
    publish(hub, "org/m", MODEL, "master" if ms else "main")
    hub.fake_commit["org/m"] = commit
    victim = hubz.cache / "other-model" / "config.json"     # where trees/<commit>.json would land
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text('{"mine": true}')
    before, work = tree_hash(hubz.cache), tree_hash(tmp_path)
    argv = {"pull": ["pull", "org/m", "out"], "convert hf://": ["convert", "hf://org/m", "out"],
            "pull --hub modelscope": ["pull", "org/m", "out", "--hub", "modelscope"]}[how]
    r, t = run(hubz, hub, tmp_path, *argv)
    assert_refused(r, t, "modelscope://org/m" if ms else "hf://org/m", "40 hex digits")
    assert tree_hash(hubz.cache) == before and tree_hash(tmp_path) == work


# hub -> (default branch, the download route's path)
ROUTE = {"hf": ("main", r"/org/e/resolve/.*/tokenizer\.json$"), "modelscope": ("master", r"/org/e/repo$")}


@pytest.mark.parametrize("kind", list(ROUTE))
def test_endless_body_is_cut_at_the_listed_size(kind, hubz, hub, tmp_path):
    tok = os.urandom(600_000)                                 # a 0.6 MB tokenizer.json, as listed
    publish(hub, "org/e", {"tokenizer.json": tok}, ROUTE[kind][0])    # ModelScope's route serves every file
    hub.fail("GET", ROUTE[kind][1], "endless", times=100)
    r, t = run(hubz, hub, tmp_path, "pull", "org/e", "out", "--hub", kind)
    assert_refused(r, t, "tokenizer.json", "600000 bytes")
    # the client reads at most one of its 10 MB chunks past the cap before the write is refused
    assert hub.endless_sent < 64 << 20, hub.endless_sent
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    caches = [hubz.cache, hubz.cache.parent / "ms-cache"]
    big = [p for c in caches for p in c.rglob("*") if p.is_file() and p.stat().st_size > len(tok)]
    assert big == [] and not [p for c in caches for p in c.rglob("*.incomplete")]


BOOKKEEPING = {"progress.json": b'{"plan_id": "theirs"}\n', "lock": b"l\n", ".lock": b"dot-lock\n",
               ".ling-convert-pull.json": b'{"theirs": 1}\n', "files/progress.json": b"nested\n",
               "out.ling-convert-pull.json": b"sidecar-named\n"}


def test_repo_files_named_like_bookkeeping_are_pulled_intact(hubz, hub, tmp_path):
    files = {**MODEL, **BOOKKEEPING}
    publish(hub, "org/b", files)
    r, _ = run(hubz, hub, tmp_path, "pull", "org/b", "out")
    assert r.rc == 0, r.stderr
    got = {str(p.relative_to(tmp_path / "out")): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert got == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    assert (tmp_path / "out.ling-convert-pull.json").is_file()   # the record lives beside OUT


def test_pull_into_the_cache_it_reads_is_refused(hubz, hub, tmp_path):
    publish(hub, "org/c", MODEL)
    r, _ = run(hubz, hub, tmp_path, "pull", "org/c", "first")     # fills the client cache
    assert r.rc == 0, r.stderr
    before = tree_hash(hubz.cache)
    r, t = run(hubz, hub, tmp_path, "pull", "org/c", hubz.cache, "--force")
    assert_refused(r, t, str(hubz.cache), "contains the source")
    assert tree_hash(hubz.cache) == before
