"""Hugging Face Hub backend over `huggingface_hub` (2.x).

Uploads go through `HfApi.upload_folder`, the client's large-file path: with
`hf_xet` installed it is the streamed, multi-commit, resumable pipeline; without
it (or with HF_HUB_DISABLE_XET=1) it is preupload + LFS basic transfer + one
commit. Downloads go through `snapshot_download` into the client cache, which
resumes partial files with HTTP Range and works offline from the cache.
"""

from __future__ import annotations

import glob
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import BadInputError, HubError
from .base import RemoteFile, Snapshot, TokenHolder, UploadOutcome, check_commit, scrub
from .capped import capped_downloads
from .errors import HubAuthError, HubTransient, HubUnreachable


class HfBackend(TokenHolder):
    hub = "hf"
    default_revision = "main"

    def __init__(self, token: str | None, endpoint: str | None):
        from huggingface_hub import HfApi, get_token
        # NOTE: None lets the client fall back to a token saved by `hf auth login`.
        self._token = token or get_token()
        self._endpoint = endpoint
        self._api = HfApi(endpoint=endpoint, token=self._token)

    # -- operations ----------------------------------------------------------------
    def create_repo(self, repo: str, *, private: bool) -> None:
        with self._errors(repo):
            self._api.create_repo(repo, private=private, exist_ok=True)

    def ensure_branch(self, repo: str, branch: str) -> None:
        if branch != self.default_revision:
            with self._errors(repo):
                self._api.create_branch(repo, branch=branch, exist_ok=True)

    def snapshot(self, repo: str, revision: str | None) -> Snapshot:
        from huggingface_hub.hf_api import RepoFile
        rev = revision or self.default_revision
        with self._errors(repo, rev):
            commit = check_commit(self._api.repo_info(repo, revision=rev).sha, f"hf://{repo}")
            files = tuple(
                RemoteFile(f.path, f.size, sha256=f.lfs.sha256 if f.lfs else None,
                           git_sha1=None if f.lfs else f.blob_id)
                for f in self._api.list_repo_tree(repo, recursive=True, revision=commit)
                if isinstance(f, RepoFile))
        return Snapshot(self.hub, repo, rev, commit, files)

    def upload_folder(self, repo: str, folder: Path, paths: list[str], *, revision: str | None,
                      create_pr: bool, message: str) -> UploadOutcome:
        with self._errors(repo, revision):
            info = self._api.upload_folder(
                repo_id=repo, folder_path=folder, revision=None if create_pr else revision,
                create_pr=create_pr, commit_message=message,
                # exact names, escaped: the client treats patterns as fnmatch globs
                allow_patterns=[glob.escape(p) for p in paths])
        return UploadOutcome(info.oid, info.pr_revision or revision or self.default_revision, info.pr_url)

    def download(self, snap: Snapshot, paths: list[str], *, cache_dir: Path | None,
                 offline: bool) -> dict[str, Path]:
        from huggingface_hub import snapshot_download
        sizes = {f.path: f.size for f in snap.files}
        with self._errors(snap.repo, snap.revision), capped_downloads(sizes, f"hf://{snap.repo}"):
            root = snapshot_download(
                snap.repo, revision=snap.commit, allow_patterns=[glob.escape(p) for p in paths],
                cache_dir=cache_dir, token=self._token, endpoint=self._endpoint,
                local_files_only=offline, max_workers=4)
        return {p: Path(root) / p for p in paths}

    def forget(self, local: Path) -> None:
        """Drop a cached file that failed verification so the next run fetches it again."""
        blob = local.resolve()
        local.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)

    # -- error mapping -----------------------------------------------------------------
    @contextmanager
    def _errors(self, repo: str, revision: str | None = None):
        import httpx2
        from huggingface_hub import errors as E
        where = f"hf://{repo}" + (f"@{revision}" if revision else "")
        try:
            yield
        except E.RevisionNotFoundError:
            raise BadInputError(f"revision {revision!r} not found", path=where,
                                fix="check the branch, tag or commit name") from None
        except E.RepositoryNotFoundError as e:
            raise self._not_found(e, where) from None
        except E.HfHubHTTPError as e:
            raise self._http(e, where) from None
        except (E.OfflineModeIsEnabled, E.LocalEntryNotFoundError) as e:
            raise HubUnreachable(f"offline and not in the local cache ({type(e).__name__})", path=where,
                                 fix="run once with network access, or unset HF_HUB_OFFLINE") from None
        except (httpx2.TransportError, ConnectionError, TimeoutError) as e:
            raise HubUnreachable(scrub(f"cannot reach the Hub: {type(e).__name__}: {e}", self._token),
                                 path=where, fix="check the network or HF_ENDPOINT, then re-run") from None
        except RuntimeError as e:   # the LFS uploader wraps the real error
            if e.__cause__ is not None and not isinstance(e.__cause__, RuntimeError):
                with self._errors(repo, revision):
                    raise e.__cause__ from None
            raise
        except ValueError as e:
            raise BadInputError(scrub(str(e).splitlines()[0], self._token), path=where) from None

    def _not_found(self, e, where: str) -> HubError:
        status = e.response.status_code if getattr(e, "response", None) is not None else None
        if status in (401, 403) or not self._token:
            return HubAuthError("repository not found, or private and no valid token was sent", path=where,
                                fix="set HF_TOKEN or pass --token with access to this repository")
        return HubError("repository not found", path=where, fix="check the repo id")

    def _http(self, e, where: str) -> HubError:
        status = e.response.status_code if getattr(e, "response", None) is not None else 0
        first = scrub(str(e).splitlines()[0] if str(e) else type(e).__name__, self._token)
        if status in (401, 403):
            return HubAuthError(f"HTTP {status}: {first}", path=where,
                                fix="set HF_TOKEN or pass --token with write access")
        cls = HubTransient if status >= 500 or status in (408, 429) else HubError
        return cls(f"HTTP {status}: {first}", path=where)
