"""The hub backend interface and the helpers both backends share (repo ids, tokens, git blob hashes)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..core.errors import BadInputError, HubError, UnsafePathError

# hub name -> (token env var, endpoint env var, default branch)
HUBS = {
    "hf": ("HF_TOKEN", "HF_ENDPOINT", "main"),
    "modelscope": ("MODELSCOPE_API_TOKEN", "MODELSCOPE_ENDPOINT", "master"),
}
ALIASES = {"huggingface": "hf", "ms": "modelscope"}
# owner/name, each part a plain name (the Hub's own rule is stricter; this refuses paths).
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_ID = re.compile(r"^[0-9a-fA-F]{40}$")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a hub listing with the hashes the hub publishes for it."""

    path: str
    size: int
    sha256: str | None = None      # content sha256 (HF LFS files; every ModelScope file)
    git_sha1: str | None = None    # git blob id of the content (HF regular files)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Snapshot:
    """A repository at one revision: the commit it resolved to and its files."""

    hub: str
    repo: str
    revision: str
    commit: str | None
    files: tuple[RemoteFile, ...] = field(default_factory=tuple)

    def __post_init__(self):
        check_commit(self.commit, f"{self.hub}://{self.repo}")

    def by_path(self) -> dict[str, RemoteFile]:
        return {f.path: f for f in self.files}


@dataclass(frozen=True)
class UploadOutcome:
    commit: str | None
    ref: str                       # where the files landed: the branch, or refs/pr/N
    pr_url: str | None = None


class TokenHolder:
    """What every backend shares about its credentials: whether it has a token, and a repr that
    never shows it."""

    _token: str | None
    _endpoint: str | None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(endpoint={self._endpoint!r})"

    @property
    def has_token(self) -> bool:
        return bool(self._token)


class HubBackend(Protocol):
    """What `sync` needs from a hub. Paths are POSIX, relative to the repo root."""

    hub: str
    default_revision: str
    has_token: bool

    def create_repo(self, repo: str, *, private: bool) -> None: ...

    def ensure_branch(self, repo: str, branch: str) -> None: ...

    def snapshot(self, repo: str, revision: str | None) -> Snapshot: ...

    def upload_folder(self, repo: str, folder: Path, paths: list[str], *, revision: str | None,
                      create_pr: bool, message: str) -> UploadOutcome: ...

    def download(self, snap: Snapshot, paths: list[str], *, cache_dir: Path | None,
                 offline: bool) -> dict[str, Path]: ...

    def forget(self, local: Path) -> None: ...


def canonical_hub(hub: str) -> str:
    name = ALIASES.get(hub.lower(), hub.lower())
    if name not in HUBS:
        raise BadInputError(f"unknown hub {hub!r}", fix="use --hub hf or --hub modelscope")
    return name


def check_commit(commit, where: str) -> str | None:
    """A commit id the hub answered with, accepted only as 40 hex digits: it names cache paths."""
    if commit is not None and not (isinstance(commit, str) and _COMMIT_ID.match(commit)):
        raise HubError(f"the hub answered with commit id {str(commit)[:60]!r}, not 40 hex digits; refused", path=where,
                       fix="the endpoint is not a Hub or misbehaves; check HF_ENDPOINT / MODELSCOPE_ENDPOINT")
    return commit


def check_repo_id(repo: str) -> str:
    """`owner/name` only: refuses `..`, absolute paths and anything else that is not two plain names."""
    parts = repo.split("/")
    if repo.startswith(("/", "\\")) or ".." in repo or len(parts) != 2 or not all(
            _REPO_PART.match(p) for p in parts):
        raise UnsafePathError(f"repo id {repo!r} is not of the form owner/name", path=None,
                              fix="use owner/name with letters, digits, '.', '_' or '-' (no '..', no '/' prefix)")
    return repo


def resolve_token(hub: str, token: str | None) -> str | None:
    """The flag wins, then the environment; an empty string means no token."""
    value = token if token is not None else os.environ.get(HUBS[hub][0])
    return value or None


def resolve_endpoint(hub: str, endpoint: str | None) -> str | None:
    value = endpoint or os.environ.get(HUBS[hub][1])
    return value.rstrip("/") if value else None


def scrub(text: str, *secrets: str | None) -> str:
    """Remove tokens from text that may reach the user (error messages)."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def git_sha1(path: Path, size: int) -> str:
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()
