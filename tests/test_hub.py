"""Hub sync: push/pull through the REAL huggingface_hub and modelscope clients, against a loopback stand-in.

The stand-in (tests/hub_standin.py) binds 127.0.0.1 only. huggingface_hub runs with Xet disabled
(HF_HUB_DISABLE_XET) because Xet needs a CAS server the stand-in does not implement; the LFS
basic-transfer path it falls back to is the one exercised here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import assert_one_line_error, run_subprocess  # noqa: E402
from hub_standin import HubStandin  # noqa: E402

from ling_convert import api  # noqa: E402
from ling_convert.core.errors import (CorruptFileError, UnsafePathError, UnsupportedError,  # noqa: E402
                                 VerificationError)
from ling_convert.hub.errors import HubAuthError  # noqa: E402
from ling_convert.hub.sync import PULL_RECORD, pull, pull_record, push  # noqa: E402
from ling_convert.testing import write_tiny  # noqa: E402

TOKEN = "tok_SECRET_7f3a9c"          # distinctive: searched for in every captured output
HUB_ENV = {"hf": ("HF_ENDPOINT", "HF_TOKEN"), "modelscope": ("MODELSCOPE_ENDPOINT", "MODELSCOPE_API_TOKEN")}


def sha_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != PULL_RECORD}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A converted tiny model: sharded safetensors + index + ling-convert.json + tokenizer files."""
    root = tmp_path_factory.mktemp("hubsrc")
    raw = write_tiny(root / "raw", "ling-mini-2")
    api.convert(raw, root / "conv", to="safetensors", max_shard_size="150KB")
    return root / "conv"


@pytest.fixture
def clients(tmp_path_factory, monkeypatch):
    """Isolate both clients: fresh caches (outside the test's tmp_path), no saved tokens, Xet off, online."""
    import huggingface_hub.constants as hfc
    tmp_path = tmp_path_factory.mktemp("clients")
    import modelscope_hub.config as msc
    for var in ("HF_TOKEN", "HF_ENDPOINT", "MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hfc, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(hfc, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "ms-cache"))
    monkeypatch.setenv("MODELSCOPE_HOME", str(tmp_path / "ms-home"))
    monkeypatch.setenv("LING_CONVERT_CACHE", str(tmp_path / "lc-cache"))
    msc.set_default_config(None)      # re-read the env above
    from huggingface_hub.utils import enable_progress_bars
    from ling_convert import hub
    monkeypatch.setattr(hub, "QUIET", False)
    hub.quiet_clients()               # progress bars would land in the captured stderr
    yield tmp_path
    msc.set_default_config(None)
    enable_progress_bars()


@pytest.fixture
def standin(clients, monkeypatch):
    with HubStandin(token=TOKEN, max_lifetime=240) as hub:
        yield hub


def use(monkeypatch, hub: HubStandin, kind: str, token: str | None = TOKEN) -> None:
    endpoint_var, token_var = HUB_ENV[kind]
    monkeypatch.setenv(endpoint_var, hub.url)
    if token is not None:
        monkeypatch.setenv(token_var, token)


# -- round trip, both hubs ------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_push_pull_round_trip_is_sha256_identical(kind, converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, kind)
    r = push(converted, "org/tiny", hub=kind)
    assert sorted(r.uploaded) == sorted(sha_tree(converted)) and r.unchanged == []
    shards = [p for p in sha_tree(converted) if p.endswith(".safetensors")]
    assert len(shards) >= 2
    # large files went through the LFS path (batch + PUT), one PUT per shard, nothing else
    puts = standin.requests("PUT", r"^/__lfs/[0-9a-f]{64}$")
    assert len(puts) == len(shards)
    out = tmp_path / "pulled"
    p = pull("org/tiny", out, hub=kind)
    assert sha_tree(out) == sha_tree(converted)
    assert p.manifest_checked and p.commit == standin.repos["org/tiny"].branches[p.revision]
    assert not (out / PULL_RECORD).exists()      # bookkeeping beside OUT, never among its files
    record = json.loads(pull_record(out).read_text())
    assert record["pulled_from"]["commit"] == p.commit and record["pulled_from"]["repo"] == "org/tiny"


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_reupload_sends_nothing_and_a_change_sends_one_file(kind, converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, kind)
    push(converted, "org/tiny", hub=kind)
    n = len(standin.log)
    again = push(converted, "org/tiny", hub=kind)
    assert again.uploaded == [] and len(again.unchanged) == len(sha_tree(converted))
    creates = ("/api/repos/create", "/api/v1/models")     # create_repo(exist_ok) is idempotent
    sent = [r for r in standin.log[n:] if r[0] in ("PUT", "POST") and r[1] not in creates]
    assert sent == []            # no preupload, no LFS object, no commit
    work = tmp_path / "work"
    work.mkdir()
    for rel in sha_tree(converted):
        (work / rel).write_bytes((converted / rel).read_bytes())
    (work / "generation_config.json").write_text('{"changed": true}\n')
    n = len(standin.log)
    r = push(work, "org/tiny", hub=kind)
    assert r.uploaded == ["generation_config.json"]
    assert not [x for x in standin.log[n:] if x[0] == "PUT"]
    assert standin.files("org/tiny")["generation_config.json"] == b'{"changed": true}\n'


# -- HF specifics: branches, PRs, patterns, faults, offline ---------------------------------

def test_hf_branch_revision_and_patterns(converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, "hf")
    r = push(converted, "org/b", hub="hf", revision="dev", exclude=["*.safetensors"], message="configs only")
    assert r.ref == "dev" and not any(p.endswith(".safetensors") for p in standin.files("org/b", "dev"))
    assert standin.files("org/b", "main") == {}
    push(converted, "org/b", hub="hf", revision="dev", include=["model-00001-*"])
    shards = [p for p in standin.files("org/b", "dev") if p.endswith(".safetensors")]
    assert len(shards) == 1 and shards[0].startswith("model-00001-")
    got = pull("org/b", tmp_path / "json-only", hub="hf", revision="dev", include=["*.json"])
    assert got.files and all(f.endswith(".json") for f in got.files)
    assert sorted(p.name for p in (tmp_path / "json-only").iterdir() if p.name != PULL_RECORD) == sorted(got.files)


def test_hf_create_pr_leaves_main_alone(converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, "hf")
    push(converted, "org/pr", hub="hf")
    main_before = standin.files("org/pr")
    work = tmp_path / "w"
    work.mkdir()
    (work / "README.md").write_text("# tiny\n")
    r = push(work, "org/pr", hub="hf", create_pr=True)
    assert r.ref == "refs/pr/1" and r.pr_url.endswith("/discussions/1")
    assert standin.files("org/pr") == main_before
    assert standin.files("org/pr", "refs/pr/1")["README.md"] == b"# tiny\n"


def test_hf_push_survives_500_dropped_upload_and_failed_commit(converted, standin, monkeypatch):
    use(monkeypatch, standin, "hf")
    standin.fail("POST", r"/preupload/", "500")          # retried by the client
    standin.fail("PUT", r"^/__lfs/", "drop")             # connection cut mid-body: retried by the client
    standin.fail("POST", r"/commit/", "500")             # not retried by the client: ling-convert re-runs
    r = push(converted, "org/f", hub="hf")
    assert r.attempts == 2
    assert len(standin.requests("PUT", r"#dropped$")) == 1
    # the re-run after the failed commit re-sent no LFS object: each shard was PUT once in full
    shards = [p for p in sha_tree(converted) if p.endswith(".safetensors")]
    assert len(standin.requests("PUT", r"^/__lfs/[0-9a-f]{64}$")) == len(shards)
    assert {k: hashlib.sha256(v).hexdigest() for k, v in standin.files("org/f").items()} == sha_tree(converted)


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_truncated_download_resumes_and_corruption_is_caught(kind, converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, kind)
    # huggingface_hub resumes from the bytes it has handed over; with its 10 MB read size a tiny
    # file would simply be fetched again, so read in small pieces to exercise the Range resume.
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 16384)
    push(converted, "org/d", hub=kind)
    get = r"/resolve/.*\.safetensors$" if kind == "hf" else r"/repo$"
    standin.fail("GET", get, "truncate")
    pull("org/d", tmp_path / "a", hub=kind)
    assert any(r[3].startswith("bytes=") for r in standin.requests("GET", get))   # resumed with Range
    assert sha_tree(tmp_path / "a") == sha_tree(converted)
    if kind == "hf":   # the HF client trusts the bytes it gets; ling-convert's check must not
        standin.fail("GET", r"/resolve/.*/config\.json$", "corrupt")
        with pytest.raises(CorruptFileError, match="config.json"):
            pull("org/d", tmp_path / "b", hub=kind, cache_dir=tmp_path / "fresh")
        assert not (tmp_path / "b").exists() and not (tmp_path / ".b.partial").exists()
        n = len(standin.log)
        pull("org/d", tmp_path / "b", hub=kind, cache_dir=tmp_path / "fresh")   # bad copy was dropped
        assert sha_tree(tmp_path / "b") == sha_tree(converted)
        refetched = {r[1].rsplit("/", 1)[1] for r in standin.log[n:] if r[0] == "GET" and "/resolve/" in r[1]}
        assert refetched == {"config.json"}      # the re-run fetched only what was missing


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_rerun_reuses_cache_and_works_offline(kind, converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, kind)
    push(converted, "org/o", hub=kind)
    pull("org/o", tmp_path / "one", hub=kind)
    n = len(standin.log)
    pull("org/o", tmp_path / "two", hub=kind)
    downloads = [r for r in standin.log[n:] if r[0] == "GET" and ("/resolve/" in r[1] or r[1].endswith("/repo"))]
    assert downloads == []       # nothing fetched again
    if kind == "hf":             # HF_HUB_OFFLINE=1: not a single request, served from the cache
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        n = len(standin.log)
        assert pull("org/o", tmp_path / "offline-mode", hub=kind).offline and len(standin.log) == n
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    standin.stop()               # the hub is gone: the cache and the saved listing still serve
    p = pull("org/o", tmp_path / "three", hub=kind)
    assert p.offline and sha_tree(tmp_path / "three") == sha_tree(converted)


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_pull_checks_files_against_ling_convert_manifest(kind, converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, kind)
    work = tmp_path / "w"
    work.mkdir()
    for rel in sha_tree(converted):
        (work / rel).write_bytes((converted / rel).read_bytes())
    (work / "tokenizer_config.json").write_text("{}\n")   # the hub's hash is right, the manifest disagrees
    push(work, "org/mf", hub=kind)
    with pytest.raises(VerificationError, match="tokenizer_config.json"):
        pull("org/mf", tmp_path / "o", hub=kind)
    assert not (tmp_path / "o").exists()
    # a partial pull checks the files it takes against the manifest, and only those
    assert pull("org/mf", tmp_path / "o", hub=kind, include=["ling-convert.json", "config.json"]).manifest_checked


def test_cli_push_pull_options(converted, standin, monkeypatch, tmp_path, cli):
    use(monkeypatch, standin, "hf")
    code, out, err = cli("push", converted, "org/c", "--hub", "hf", "--revision", "dev", "--exclude", "*.safetensors",
                         "--exclude", "*.index.json", "--message", "configs", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["ref"] == "dev" and r["uploaded"] and not any(".safetensors" in u for u in r["uploaded"])
    code, out, err = cli("pull", "org/c", tmp_path / "o", "--hub", "hf", "--revision", "dev",
                         "--include", "config.json", "--include", "tokenizer*")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(
        ["config.json", "tokenizer.json", "tokenizer_config.json"])
    code, _, err = cli("pull", "org/c", tmp_path / "o", "--hub", "hf", "--revision", "dev")
    assert_one_line_error(code, err, "--force")          # OUT exists: refused, not merged


# -- ModelScope specifics ---------------------------------------------------------------------

def test_modelscope_push_survives_faults_and_refuses_pr_and_new_branch(converted, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, "modelscope")
    standin.fail("POST", r"/lfs/objects/batch$", "500")
    standin.fail("PUT", r"^/__lfs/", "drop")
    standin.fail("POST", r"/commit/", "500")
    push(converted, "org/m", hub="modelscope")
    assert len(standin.requests("PUT", r"#dropped$")) == 1
    assert {k: hashlib.sha256(v).hexdigest() for k, v in standin.files("org/m").items()} == sha_tree(converted)
    work = tmp_path / "w"
    work.mkdir()
    (work / "README.md").write_text("pr\n")
    with pytest.raises(UnsupportedError, match="pull requests"):
        push(work, "org/m", hub="modelscope", create_pr=True)
    with pytest.raises(UnsupportedError, match="cannot create"):
        push(work, "org/m", hub="modelscope", revision="dev")
    assert "README.md" not in standin.files("org/m")


# -- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_listing_with_parent_path_is_refused_and_nothing_written(kind, converted, standin, monkeypatch, tmp_path,
                                                                 cli):
    use(monkeypatch, standin, kind)
    push(converted, "org/evil", hub=kind)
    standin.extra_listing["org/evil"] = ["../x"]
    out = tmp_path / "sub" / "out"
    out.parent.mkdir()
    with pytest.raises(UnsafePathError, match=r"\.\./x"):
        pull("org/evil", out, hub=kind)
    code, _, err = cli("pull", "org/evil", out, "--hub", kind)
    assert_one_line_error(code, err, "../x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"] and list(out.parent.iterdir()) == []


@pytest.mark.parametrize("repo", ["../etc", "/abs/path", "org/../../x", "org/name/extra", "org/.."])
def test_bad_repo_ids_are_one_line_errors(repo, cli, tmp_path, clients):
    before = sorted(tmp_path.iterdir())
    for args in (["pull", repo, tmp_path / "o"], ["push", tmp_path, repo]):
        code, out, err = cli(*args, "--hub", "hf")
        assert_one_line_error(code, err, "owner/name")
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", ["hf", "modelscope"])
def test_private_repo_without_token(kind, converted, standin, monkeypatch, tmp_path, cli):
    use(monkeypatch, standin, kind)
    push(converted, "org/secret", hub=kind, private=True, include=["*.json"])
    monkeypatch.delenv(HUB_ENV[kind][1])
    with pytest.raises(HubAuthError):
        pull("org/secret", tmp_path / "o", hub=kind)
    code, _, err = cli("pull", "org/secret", tmp_path / "o", "--hub", kind)
    assert_one_line_error(code, err, "token")
    code, _, err = cli("push", converted, "org/secret", "--hub", kind)
    assert_one_line_error(code, err, "token")
    assert not (tmp_path / "o").exists()


def test_tokens_never_printed_or_logged(converted, standin, monkeypatch, tmp_path, cli, caplog):
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", standin.url)
    caplog.set_level(logging.DEBUG)
    seen = []
    for kind in ("hf", "modelscope"):
        standin.fail("POST", r"/commit/", "500")     # a retry path logs warnings
        seen.append(cli("push", converted, f"org/{kind}", "--hub", kind, "--token", TOKEN, "--private", "--json"))
        seen.append(cli("pull", f"org/{kind}", tmp_path / kind, "--hub", kind, "--token", TOKEN))
        seen.append(cli("pull", f"org/{kind}", tmp_path / f"{kind}-bad", "--hub", kind, "--token", TOKEN + "x"))
        seen.append(cli("pull", f"org/{kind}", tmp_path / f"{kind}-none", "--hub", kind))
        monkeypatch.setenv(HUB_ENV[kind][1], TOKEN)
        seen.append(cli("pull", f"org/{kind}", tmp_path / f"{kind}-env", "--hub", kind))
        monkeypatch.delenv(HUB_ENV[kind][1])
    assert [c for c, _, _ in seen] == [0, 0, 2, 2, 0] * 2
    assert json.loads(seen[0][1])["uploaded"]          # --json stdout stays machine-readable
    text = "".join(o + e for _, o, e in seen) + caplog.text
    assert TOKEN not in text and TOKEN[4:] not in text


def test_subprocess_error_has_no_traceback(converted, standin, tmp_path):
    env = {"HF_ENDPOINT": standin.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "h"),
           "HF_TOKEN": "", "LING_CONVERT_CACHE": str(tmp_path / "lc")}
    standin.create("org/priv", True, "main")
    r = run_subprocess("pull", "org/priv", tmp_path / "o", "--hub", "hf", env=env, timeout=120)
    assert_one_line_error(r.returncode, r.stderr, "token")
    assert not (tmp_path / "o").exists()


# -- hub references as conversion sources ---------------------------------------------------

@pytest.mark.parametrize("kind,scheme", [("hf", "hf"), ("modelscope", "ms")])
def test_convert_from_hub_reference_records_commit(kind, scheme, standin, monkeypatch, tmp_path):
    use(monkeypatch, standin, kind)
    raw = write_tiny(tmp_path / "raw", "ling-lite")
    push(raw, "org/raw", hub=kind)
    head = standin.repos["org/raw"].branches[standin.repos["org/raw"].default]
    r = api.convert(Path(f"{scheme}://org/raw"), tmp_path / "out", to="safetensors")   # Path() folds '//'
    manifest = json.loads((r.output / "ling-convert.json").read_text())
    src = manifest["notes"]["hub_source"]
    assert src["commit"] == head and src["repo"] == "org/raw" and src["hub"] == kind
    assert sha_tree(r.output)["model.safetensors"] == sha_tree(raw)["model.safetensors"]
