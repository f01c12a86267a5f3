"""Hub sync commands: push, pull (Hugging Face Hub and ModelScope)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .common import ForceOpt, JsonOpt, emit_json, human_bytes, out

RepoArg = Annotated[str, typer.Argument(help="Repository id, owner/name.")]
HubOpt = Annotated[str, typer.Option("--hub", help="hf (Hugging Face Hub) or modelscope.")]
RevisionOpt = Annotated[Optional[str], typer.Option(
    "--revision", help="Branch, tag or commit (default: main / master).")]
IncludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--include", help="Only paths matching this glob (repeatable).")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option(
    "--exclude", help="Skip paths matching this glob (repeatable).")]
# NOTE: prefer the env vars: a flag value is visible to other users in the process list.
TokenOpt = Annotated[Optional[str], typer.Option(
    "--token", help="Access token (default: HF_TOKEN / MODELSCOPE_API_TOKEN).", show_default=False)]
PrivateOpt = Annotated[bool, typer.Option("--private", help="Create the repository as private.")]
CreatePrOpt = Annotated[bool, typer.Option("--create-pr", help="Open a pull request (Hugging Face only).")]
MessageOpt = Annotated[Optional[str], typer.Option("--message", help="Commit message.")]


def _quiet(as_json: bool) -> None:
    """Client progress bars and INFO logs only on an interactive terminal."""
    if as_json or not sys.stderr.isatty():
        from ..api import quiet_clients
        quiet_clients()


@app.command()
def push(folder: Annotated[Path, typer.Argument(help="Directory to upload.")], repo: RepoArg, hub: HubOpt = "hf",
         revision: RevisionOpt = None, private: PrivateOpt = False, create_pr: CreatePrOpt = False,
         include: IncludeOpt = None, exclude: ExcludeOpt = None, message: MessageOpt = None,
         token: TokenOpt = None, as_json: JsonOpt = False):
    """Upload FOLDER to REPO: only changed files are sent; the remote listing is checked after the commit."""
    from ..api import push as do_push
    _quiet(as_json)
    r = do_push(folder, repo, hub=hub, revision=revision, private=private, create_pr=create_pr, include=include,
                exclude=exclude, message=message, token=token)
    if as_json:
        return emit_json(r.__dict__)
    out.print(f"{r.hub}://{r.repo}@{r.ref}: {len(r.uploaded)} file(s) uploaded, {len(r.unchanged)} unchanged",
              soft_wrap=True)
    out.print(f"commit {r.commit}" + (f", pull request {r.pr_url}" if r.pr_url else ""), soft_wrap=True)
    out.print("remote listing matches the local files")


@app.command()
def pull(repo: RepoArg, dst: Annotated[Path, typer.Argument(help="Output directory (created atomically).")],
         hub: HubOpt = "hf", revision: RevisionOpt = None, include: IncludeOpt = None, token: TokenOpt = None,
         force: ForceOpt = False, as_json: JsonOpt = False):
    """Download REPO into DST; every file is checked against the hub's hashes and ling-convert.json."""
    from ..api import pull as do_pull
    _quiet(as_json)
    r = do_pull(repo, dst, hub=hub, revision=revision, include=include, token=token, force=force)
    if as_json:
        return emit_json(r.__dict__)
    where = f"{r.hub}://{r.repo}@{r.revision}" + (f" ({r.commit})" if r.commit else "")
    out.print(f"{where}: {len(r.files)} file(s), {human_bytes(r.bytes)} verified" +
              (" (from the local cache, offline)" if r.offline else ""), soft_wrap=True)
    if r.manifest_checked:
        out.print("sha256 of every file matches ling-convert.json")
    out.print(f"wrote {r.output}", soft_wrap=True)
