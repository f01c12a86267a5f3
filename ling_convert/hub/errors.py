"""Hub error kinds; all are `HubError` (exit 2) so the CLI prints one line."""

from __future__ import annotations

from ..core.errors import HubError


class HubAuthError(HubError):
    """No token, or the token does not grant access (401/403)."""


class HubTransient(HubError):
    """5xx, 408, 429 or a dropped connection: worth retrying, and a re-run resumes."""


class HubUnreachable(HubTransient):
    """No connection to the endpoint, or offline mode without a cached copy."""
