"""Pick the backend for a hub name; the clients are imported only when used."""

from __future__ import annotations

from .base import HubBackend, canonical_hub, resolve_endpoint, resolve_token


def get_backend(hub: str, token: str | None = None, endpoint: str | None = None) -> HubBackend:
    """The backend for `hub` ("hf" or "modelscope"); token/endpoint default to the env vars."""
    hub = canonical_hub(hub)
    tok, ep = resolve_token(hub, token), resolve_endpoint(hub, endpoint)
    if hub == "hf":
        from .hf import HfBackend
        return HfBackend(token=tok, endpoint=ep)
    from .modelscope import ModelScopeBackend
    return ModelScopeBackend(token=tok, endpoint=ep)
