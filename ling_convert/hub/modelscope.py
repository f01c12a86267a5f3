"""ModelScope backend over `modelscope` (1.40: a shim over `modelscope_hub`).

Uploads go through `HubApi.upload_folder` (LFS batch + presigned PUT for large
files, base64 in the commit for small ones); downloads through
`modelscope.snapshot_download`, which resumes with HTTP Range and checks each
file's sha256 against the listing. The client cannot create branches or pull
requests, so those requests fail with a one-line explanation.
"""

from __future__ import annotations

import glob
import io
import re
import sys
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from pathlib import Path

from ..core.errors import BadInputError, HubError, UnsupportedError
from .base import RemoteFile, Snapshot, TokenHolder, UploadOutcome, scrub
from .errors import HubAuthError, HubTransient, HubUnreachable

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _quiet() -> bool:
    from . import QUIET
    return QUIET


class ModelScopeBackend(TokenHolder):
    hub = "modelscope"
    default_revision = "master"

    def __init__(self, token: str | None, endpoint: str | None):
        from modelscope.hub.api import HubApi
        from modelscope_hub.api import HubApi as FileApi
        from modelscope_hub.config import get_default_config
        # The flag/env token, else a credential saved by `modelscope login`. Passed explicitly ("" = none)
        # because the client's process-wide config would otherwise keep the first token it ever saw.
        self._token, self._endpoint = token or get_default_config().load_token() or None, endpoint
        from . import QUIET, quiet_modelscope
        if QUIET:
            quiet_modelscope()
        # 3 HTTP retries, not 5: an unreachable endpoint then falls back to the cache in ~4 s, not ~16 s.
        self._api = HubApi(endpoint=endpoint, token=self._token or "", max_retries=3)
        # The shim's file listing drops the hashes; the package it wraps keeps them.
        self._files = FileApi(endpoint=endpoint, token=self._token or "")

    def create_repo(self, repo: str, *, private: bool) -> None:
        with self._errors(repo):
            self._api.create_repo(repo, repo_type="model", visibility="private" if private else "public",
                                  exist_ok=True)

    def ensure_branch(self, repo: str, branch: str) -> None:
        if branch == self.default_revision:
            return
        with self._errors(repo):
            branches, _ = self._api.get_model_branches_and_tags(repo)
        if branch not in branches:
            raise UnsupportedError(f"branch {branch!r} does not exist and the ModelScope client cannot create one",
                                   path=f"ms://{repo}", fix="create the branch on ModelScope first, or push to master")

    def snapshot(self, repo: str, revision: str | None) -> Snapshot:
        rev = revision or self.default_revision
        with self._errors(repo, rev):
            branches, tags = self._api.get_model_branches_and_tags_details(repo)
            detail = next((d for d in [*branches, *tags] if d.get("Revision") == rev), None)
            if detail is None and not _COMMIT.match(rev):
                raise BadInputError(f"revision {rev!r} not found", path=f"ms://{repo}",
                                    fix="check the branch or tag name")
            listing = self._files.list_repo_files(repo, "model", revision=rev)
        # (inferred) the revisions endpoint may carry the commit id; a commit-hash revision is its own id.
        commit = (detail or {}).get("CommitId") or (rev if _COMMIT.match(rev) else None)
        files = tuple(RemoteFile(f.path, f.size, sha256=f.sha256) for f in listing if not f.is_dir)
        return Snapshot(self.hub, repo, rev, commit, files)

    def upload_folder(self, repo: str, folder: Path, paths: list[str], *, revision: str | None,
                      create_pr: bool, message: str) -> UploadOutcome:
        if create_pr:
            raise UnsupportedError("the ModelScope client has no pull requests", path=f"ms://{repo}",
                                   fix="push to an existing branch with --revision instead")
        rev = revision or self.default_revision
        # The client prints an upload report on stdout: keep stdout for ling-convert's own (JSON) output.
        with self._errors(repo, rev), redirect_stdout(io.StringIO() if _quiet() else sys.stderr):
            # use_cache=False: the client's resume tracker would be written inside the pushed folder;
            # ling-convert resumes by comparing hashes with the remote listing instead.
            res = self._api.upload_folder(repo_id=repo, folder_path=str(folder), revision=rev,
                                          commit_message=message, allow_patterns=[glob.escape(p) for p in paths],
                                          use_cache=False, disable_tqdm=True)
        last = res[-1] if isinstance(res, list) and res else res
        commit = last.get("CommitId") if isinstance(last, dict) else None
        return UploadOutcome(commit, rev)

    def download(self, snap: Snapshot, paths: list[str], *, cache_dir: Path | None,
                 offline: bool) -> dict[str, Path]:
        from modelscope import snapshot_download
        # Quiet: the client's per-file progress bars go to sys.stderr, whatever its log level.
        with self._errors(snap.repo, snap.revision), redirect_stderr(io.StringIO()) if _quiet() else nullcontext():
            root = snapshot_download(model_id=snap.repo, revision=snap.commit or snap.revision,
                                     cache_dir=str(cache_dir) if cache_dir else None,
                                     allow_patterns=[glob.escape(p) for p in paths], token=self._token or "",
                                     endpoint=self._endpoint, local_files_only=offline, max_workers=4)
        return {p: Path(root) / p for p in paths}

    def forget(self, local: Path) -> None:
        local.unlink(missing_ok=True)

    @contextmanager
    def _errors(self, repo: str, revision: str | None = None):
        from modelscope_hub import errors as E
        where = f"ms://{repo}" + (f"@{revision}" if revision else "")
        try:
            yield
        except (E.AuthenticationError, E.PermissionDeniedError) as e:
            raise HubAuthError(f"access denied ({type(e).__name__})", path=where,
                               fix="set MODELSCOPE_API_TOKEN or pass --token with access to this repository") from None
        except E.NotExistError:
            if not self._token:
                raise HubAuthError("repository not found, or private and no token was sent", path=where,
                                   fix="set MODELSCOPE_API_TOKEN or pass --token") from None
            raise HubError("repository or revision not found", path=where, fix="check the repo id") from None
        except (E.NetworkError, E.ServerError, E.RateLimitError) as e:
            cls = HubUnreachable if isinstance(e, E.NetworkError) else HubTransient
            raise cls(self._line(e), path=where, fix="re-run; finished files are skipped") from None
        except E.FileDownloadError as e:   # every file was tried: name the first that failed, and why
            name, why = next(iter(e.failed_files.items()), (None, e))
            raise HubTransient(self._line(why), path=f"{where}/{name}" if name else where,
                               fix="re-run; finished files are skipped") from None
        except (E.FileIntegrityError, E.StorageError) as e:
            raise HubTransient(self._line(e), path=where, fix="re-run; finished files are skipped") from None
        except (E.HubError, ValueError, FileNotFoundError) as e:
            raise HubError(self._line(e), path=where) from None

    def _line(self, e: Exception) -> str:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        return scrub(f"{type(e).__name__}: {text}", self._token)
