"""Stop every huggingface_hub download at the size the listing gives its file.

The client writes a response body until the server ends it (the listed size is compared only
afterwards), so a body that never ends would fill the disk. While `capped_downloads` is active,
the client's per-file download step knows which file it fetches, and its body writer refuses
the first byte past that file's listed size. The client then removes its temporary file.
"""

from __future__ import annotations

import inspect
import threading
from contextlib import contextmanager

from ..core.errors import HubError

_state = threading.local()   # the file the current download thread fetches: (path, listed size)
_lock = threading.Lock()


class _CappedFile:
    """A file object that accepts writes only up to `cap` bytes from its start."""

    def __init__(self, f, cap: int, where: str):
        self._f, self._cap, self._where = f, cap, where

    def write(self, data) -> int:
        if self._f.tell() + len(data) > self._cap:
            raise HubError(f"the server sent more than the {self._cap} bytes the listing gives this file; stopped",
                           path=self._where, fix="the endpoint misbehaves; nothing was kept, re-run later")
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


@contextmanager
def capped_downloads(sizes: dict[str, int], origin: str):
    """While active, a file of `sizes` (repo path -> listed bytes) is never written past its size."""
    import huggingface_hub.file_download as fd
    with _lock:
        move, get = fd._download_to_tmp_and_move, fd.http_get
        sig = inspect.signature(move)

        def capped_move(*args, **kw):
            name = sig.bind(*args, **kw).arguments.get("filename")
            _state.current = (name, sizes.get(name))
            try:
                return move(*args, **kw)
            finally:
                _state.current = None

        def capped_get(url, temp_file, *args, **kw):
            name, cap = getattr(_state, "current", None) or (None, None)
            if cap is not None and not isinstance(temp_file, _CappedFile):
                temp_file = _CappedFile(temp_file, cap, f"{origin}/{name}")
            return get(url, temp_file, *args, **kw)

        fd._download_to_tmp_and_move, fd.http_get = capped_move, capped_get
    try:
        yield
    finally:
        with _lock:
            fd._download_to_tmp_and_move, fd.http_get = move, get
