"""Hub sync: one small backend interface over the official clients.

`get_backend("hf" | "modelscope", token=, endpoint=)` returns a `HubBackend`
built on `huggingface_hub` or `modelscope`; `ling_convert.hub.sync` holds the
logic (change detection, integrity checks, atomic pulls) shared by both.

    >>> b = get_backend("hf")                                   # doctest: +SKIP
    >>> b.snapshot("inclusionAI/Ling-lite", None).commit        # doctest: +SKIP

Tokens come from the flag or the environment and are never printed or logged:
backends keep them private and `scrub()` removes them from any error text.
"""

from __future__ import annotations

from .base import (ALIASES, HUBS, HubBackend, RemoteFile, Snapshot, UploadOutcome, canonical_hub, check_commit,
                   check_repo_id, git_sha1, resolve_endpoint, resolve_token, scrub)

__all__ = ["ALIASES", "HUBS", "HubBackend", "RemoteFile", "Snapshot", "UploadOutcome", "canonical_hub", "check_commit",
           "check_repo_id", "git_sha1", "quiet_clients", "quiet_modelscope", "resolve_endpoint", "resolve_token", "scrub"]


QUIET = False   # set by quiet_clients(); the ModelScope backend applies it when it loads its client


def quiet_clients() -> None:
    """Silence the clients' progress bars and INFO logs (non-interactive runs, --json)."""
    global QUIET
    QUIET = True
    from huggingface_hub.utils import disable_progress_bars
    disable_progress_bars()


def quiet_modelscope() -> None:
    import logging
    from modelscope.utils.logger import get_logger as ms_logger
    from modelscope_hub.utils.logger import get_logger as hub_logger
    # NOTE: both packages configure their loggers on first use, so this runs after import.
    # CRITICAL: its retry warnings and per-file errors would break the CLI's one error line.
    for logger in (ms_logger(), hub_logger()):
        logger.setLevel(logging.CRITICAL)
