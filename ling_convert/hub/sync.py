"""`push` and `pull` for Hugging Face Hub and ModelScope, with the same rules on both.

    >>> push("Ling-lite-st/", "me/Ling-lite-st", hub="hf")              # doctest: +SKIP
    >>> pull("me/Ling-lite-st", "copy/", hub="modelscope", include=["*.json"])  # doctest: +SKIP

Resumable: push compares local hashes with the remote listing and sends only
what differs; pull downloads into the client's cache (partial files resume, a
re-run finds finished ones) and then builds OUT atomically. Integrity: pull
checks every file against the hub's hash (sha256 for LFS, git-sha1 for regular
files) and against `ling-convert.json` when the repo has one; push re-lists the
remote after the commit and compares it with the local files.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..core import bounded
from ..core.errors import BadInputError, CorruptFileError, LingConvertError, MissingShardError, VerificationError
from ..core.output import MANIFEST, StagedOutput, write_json_atomic
from ..core.source import contained
from .backends import get_backend
from .base import HUBS, HubBackend, RemoteFile, Snapshot, canonical_hub, check_repo_id, git_sha1
from .errors import HubAuthError, HubTransient, HubUnreachable

PULL_RECORD = ".ling-convert-pull.json"      # suffix of a pulled dir's provenance record, kept beside it
SKIP_DIRS = {".git", ".cache", ".ms_upload_cache"}
ATTEMPTS = 3
LINK_MIN_BYTES = 1 << 20
_HUB_REF = re.compile(r"^(hf|ms|modelscope):/{1,2}([^@]+?)(?:@(.+))?/?$")


@dataclass
class PushResult:
    hub: str
    repo: str
    ref: str
    commit: str | None
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    pr_url: str | None = None
    attempts: int = 1


@dataclass
class PullResult:
    hub: str
    repo: str
    revision: str
    commit: str | None
    output: Path
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    offline: bool = False
    manifest_checked: bool = False


def cache_root() -> Path:
    return Path(os.environ.get("LING_CONVERT_CACHE") or Path.home() / ".cache" / "ling-convert")


# -- local side -----------------------------------------------------------------------

def matches(rel: str, patterns: list[str] | None) -> bool:
    """fnmatch on the POSIX relative path; 'dir/' means everything under dir (as the clients do)."""
    return any(fnmatch.fnmatchcase(rel, p) or (p.endswith("/") and rel.startswith(p)) for p in patterns or [])


def local_files(folder: Path, include: list[str] | None, exclude: list[str] | None) -> dict[str, Path]:
    """Files to push, by relative path; refuses links that lead outside `folder`."""
    out: dict[str, Path] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(names):
            p = Path(root) / name
            rel = p.relative_to(folder).as_posix()
            if (include and not matches(rel, include)) or matches(rel, exclude):
                continue
            contained(folder, rel, what="file", origin=folder)   # also resolves symlinks
            if p.is_file():
                out[rel] = p
    return out


class LocalHash:
    """sha256 always; git-sha1 only when the remote publishes that instead (regular files)."""

    def __init__(self, path: Path):
        self.path, self.size = path, path.stat().st_size
        self._sha256: str | None = None
        self._sha1: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            from ..core.output import sha256_file
            self._sha256 = sha256_file(self.path)
        return self._sha256

    @property
    def git_sha1(self) -> str:
        if self._sha1 is None:
            self._sha1 = git_sha1(self.path, self.size)
        return self._sha1

    def same_as(self, remote: RemoteFile | None) -> bool:
        if remote is None or remote.size != self.size:
            return False
        if remote.sha256:
            return remote.sha256 == self.sha256
        return bool(remote.git_sha1) and remote.git_sha1 == self.git_sha1


# -- push ---------------------------------------------------------------------------------

def push(folder: str | Path, repo: str, *, hub: str = "hf", revision: str | None = None, private: bool = False,
         create_pr: bool = False, include: list[str] | None = None, exclude: list[str] | None = None,
         message: str | None = None, token: str | None = None, endpoint: str | None = None) -> PushResult:
    """Upload the changed files of `folder` to `repo`, then confirm the remote listing."""
    repo, folder = check_repo_id(repo), Path(folder)
    if not folder.is_dir():
        raise BadInputError("not a directory", path=folder, fix="push a checkpoint directory")
    files = local_files(folder, include, exclude)
    if not files:
        raise BadInputError("no file to push (check --include/--exclude)", path=folder)
    backend = get_backend(hub, token, endpoint)
    if create_pr and revision not in (None, backend.default_revision):
        raise BadInputError("--create-pr opens a pull request against the default branch", path=repo,
                            fix="drop --revision, or push to the branch without --create-pr")
    if not backend.has_token:
        raise HubAuthError("pushing needs a token", path=repo,
                           fix=f"set {HUBS[backend.hub][0]} or pass --token")
    backend.create_repo(repo, private=private)
    if revision and not create_pr:
        backend.ensure_branch(repo, revision)
    hashes = {rel: LocalHash(p) for rel, p in files.items()}
    result = _upload(backend, repo, folder, hashes, revision=revision, create_pr=create_pr,
                     message=message or f"Upload {folder.name} with ling-convert")
    result.unchanged = sorted(set(files) - set(result.uploaded))
    return _confirm(backend, repo, result, hashes)


def _upload(backend: HubBackend, repo: str, folder: Path, hashes: dict[str, "LocalHash"], *,
            revision: str | None, create_pr: bool, message: str) -> PushResult:
    """Send what differs from the remote; on a transient failure list again and send what is still missing."""
    last: HubTransient | None = None
    for attempt in range(1, ATTEMPTS + 1):
        remote = backend.snapshot(repo, revision).by_path()
        changed = [rel for rel, h in hashes.items() if not h.same_as(remote.get(rel))]
        if not changed:   # a re-run after success, or a failed attempt whose commit did land
            return PushResult(backend.hub, repo, revision or backend.default_revision, None, attempts=attempt)
        try:
            out = backend.upload_folder(repo, folder, changed, revision=revision, create_pr=create_pr,
                                        message=message)
            return PushResult(backend.hub, repo, out.ref, out.commit, changed, pr_url=out.pr_url, attempts=attempt)
        except HubTransient as e:   # files and LFS objects already on the hub are not sent again
            last = e
            time.sleep(0.5 * 2 ** (attempt - 1))
    raise last


def _confirm(backend: HubBackend, repo: str, result: PushResult, hashes: dict[str, LocalHash]) -> PushResult:
    snap = backend.snapshot(repo, result.ref)
    remote = snap.by_path()
    for rel, h in sorted(hashes.items()):
        if not h.same_as(remote.get(rel)):
            got = remote.get(rel)
            raise VerificationError("the remote listing after the commit does not match the local file",
                                    path=f"{backend.hub}://{repo}@{result.ref}/{rel}",
                                    fix=f"remote {got.to_json() if got else 'missing'}; re-run push")
    result.commit = snap.commit or result.commit
    return result


# -- pull ---------------------------------------------------------------------------------

def pull(repo: str, out: str | Path, *, hub: str = "hf", revision: str | None = None,
         include: list[str] | None = None, token: str | None = None, endpoint: str | None = None,
         force: bool = False, cache_dir: str | Path | None = None) -> PullResult:
    """Download `repo` into OUT atomically, every file checked against the hub's hashes."""
    repo, out = check_repo_id(repo), Path(out)
    backend = get_backend(hub, token, endpoint)
    snap, offline = _snapshot(backend, repo, revision)
    origin = f"{backend.hub}://{repo}"     # a str: Path() would fold the '//'
    for f in snap.files:   # refuse a hostile listing before anything is written
        contained(out, f.path, what="hub listing entry", origin=origin)
    wanted = [f for f in snap.files if not include or matches(f.path, include)]
    if not wanted:
        raise BadInputError("no file in the repository matches --include", path=origin)
    local = backend.download(snap, [f.path for f in wanted], cache_dir=Path(cache_dir) if cache_dir else None,
                             offline=offline)
    plan = hashlib.sha256(json.dumps([f.to_json() for f in wanted], sort_keys=True).encode()).hexdigest()[:32]
    result = PullResult(backend.hub, repo, snap.revision, snap.commit, out, offline=offline)
    with StagedOutput(out, sources=list(local.values()), force=force, plan_id=plan) as staged:
        for f in wanted:
            contained(staged.staging, f.path, what="hub listing entry", origin=origin)
            staged.done(f.path, _place_verified(backend, local[f.path], staged.path(f.path), f, origin))
            result.files.append(f.path)
            result.bytes += f.size
        # a partial pull (--include) checks what it got; a full one also checks nothing is missing
        result.manifest_checked = _check_manifests(staged, None if include else {f.path for f in snap.files}, origin)
        record = staged.full_manifest({"pulled_from": _provenance(snap), "offline": offline})
        staged.commit({}, name=None)
    # Beside OUT, written last: a repository may hold a file of any name, and OUT gets all of them.
    write_json_atomic(pull_record(out), record)
    if not offline:
        _save_listing(snap)
    return result


def pull_record(out: Path) -> Path:
    """Where pull keeps the provenance of OUT: the file `OUT.ling-convert-pull.json` beside it."""
    return out.with_name(out.name + PULL_RECORD)


def _snapshot(backend: HubBackend, repo: str, revision: str | None) -> tuple[Snapshot, bool]:
    """The online listing, or the one saved by the last pull when the hub cannot be reached."""
    try:
        return backend.snapshot(repo, revision), False
    except HubUnreachable:
        saved = _load_listing(backend.hub, repo, revision or backend.default_revision)
        if saved is None:
            raise
        return saved, True


def _place_verified(backend: HubBackend, src: Path, dst: Path, f: RemoteFile, origin: str) -> str:
    """Put the cached file into the staging dir and check it against the hub's hashes.

    Weights are hard-linked to the client cache when it is on the same disk (no second copy);
    small files are copied, so an in-place edit of OUT (a config rewrite) cannot alter the cache.
    """
    try:
        if f.size < LINK_MIN_BYTES:
            raise OSError("small file: copy")
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)
    size = dst.stat().st_size
    sha = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size) if f.git_sha1 and not f.sha256 else None
    with open(dst, "rb") as fh:
        while chunk := fh.read(1 << 24):
            sha.update(chunk)
            if sha1:
                sha1.update(chunk)
    got, want = (sha.hexdigest(), f.sha256) if f.sha256 else (sha1.hexdigest() if sha1 else None, f.git_sha1)
    if want is None or size != f.size or got != want:
        backend.forget(src)   # the next run downloads it again instead of trusting the bad copy
        what = "the hub published no hash for it" if want is None else \
            f"got {size} bytes/{got}, the hub lists {f.size} bytes/{want}"
        raise CorruptFileError(f"downloaded file fails verification: {what}", path=f"{origin}/{f.path}",
                               fix="re-run pull; the bad cached copy was removed")
    return sha.hexdigest()


def _check_manifests(staged: StagedOutput, listed: set[str] | None, origin: str) -> bool:
    """Pulled ling-convert manifests name files with their sha256: they must all agree."""
    checked = False
    for rel in [r for r in staged.files if r.rsplit("/", 1)[-1].endswith(MANIFEST)]:
        base = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        try:
            recorded = bounded.load_json(staged.path(rel), MANIFEST, limit=bounded.MAX_INDEX).get("files") or {}
        except (OSError, ValueError, AttributeError, LingConvertError):
            raise CorruptFileError("manifest is not valid JSON", path=f"{origin}/{rel}") from None
        for name, sha in recorded.items():
            full = base + name
            if listed is not None and full not in listed:
                raise MissingShardError("the manifest lists a file the repository lacks", path=f"{origin}/{full}",
                                        fix="the upload is incomplete; push the missing file")
            if full in staged.files and staged.files[full] != sha:
                raise VerificationError("file differs from the sha256 in its ling-convert manifest",
                                        path=f"{origin}/{full}", fix="re-push the checkpoint")
        checked = True
    return checked


def _provenance(snap: Snapshot) -> dict:
    listing = hashlib.sha256(json.dumps([f.to_json() for f in snap.files], sort_keys=True).encode())
    return {"hub": snap.hub, "repo": snap.repo, "revision": snap.revision, "commit": snap.commit,
            "listing_sha256": listing.hexdigest()}


def _listing_path(hub: str, repo: str, revision: str) -> Path:
    return cache_root() / "listings" / hub / repo.replace("/", "--") / (quote(revision, safe="") + ".json")


def _save_listing(snap: Snapshot) -> None:
    p = _listing_path(snap.hub, snap.repo, snap.revision)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(p, {"commit": snap.commit, "files": [f.to_json() for f in snap.files]})


def _load_listing(hub: str, repo: str, revision: str) -> Snapshot | None:
    p = _listing_path(hub, repo, revision)
    try:
        data = bounded.load_json(p, "hub listing", limit=bounded.MAX_INDEX)
        files = tuple(RemoteFile(**f) for f in data["files"])
    except (OSError, ValueError, KeyError, TypeError, LingConvertError):
        return None
    return Snapshot(hub, repo, revision, data.get("commit"), files)


# -- hub references as conversion sources -------------------------------------------------

def parse_ref(path: str | Path) -> tuple[str, str, str | None] | None:
    """'hf://org/name@rev' -> ("hf", "org/name", "rev"); None for a local path.

    A `pathlib.Path` collapses '//' to '/', so 'hf:/org/name' is accepted too.
    """
    m = _HUB_REF.match(str(path))
    if not m:
        return None
    return canonical_hub(m.group(1)), check_repo_id(m.group(2)), m.group(3)


def resolve_source(path: str | Path, *, token: str | None = None) -> tuple[Path, dict | None]:
    """A hub reference becomes a verified local copy (pulled once, reused by commit); else unchanged.

        >>> resolve_source("hf://inclusionAI/Ling-lite@main")    # doctest: +SKIP
        (PosixPath('~/.cache/ling-convert/sources/hf/inclusionAI--Ling-lite/<commit>'), {...})
    """
    ref = parse_ref(path)
    if ref is None:
        return Path(path), None
    hub, repo, revision = ref
    backend = get_backend(hub, token)
    snap, offline = _snapshot(backend, repo, revision)
    if not offline:
        _save_listing(snap)      # so the same reference also resolves offline later
    key = snap.commit or _provenance(snap)["listing_sha256"]
    local = cache_root() / "sources" / hub / repo.replace("/", "--") / key
    record = pull_record(local)
    if not (record.is_file() and local.is_dir()):
        local.parent.mkdir(parents=True, exist_ok=True)
        pull(repo, local, hub=hub, revision=snap.commit or revision, token=token, force=True)
    prov = bounded.load_json(record, "pull record")["pulled_from"]
    scheme = "hf" if hub == "hf" else "ms"
    return local, {**prov, "revision": revision or backend.default_revision,
                   "reference": f"{scheme}://{repo}" + (f"@{revision}" if revision else "")}
