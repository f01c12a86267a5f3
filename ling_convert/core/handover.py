"""How a worker's result reaches the parent: through the pipe (`_Packed`) or a reused /dev/shm slot file
(`_Spilled`). (A writer filling a file with several processes uses core/fill.py instead.)"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import warnings
from typing import Callable

import torch


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class _Packed:
    """A tensor as raw bytes: pickles as one flat buffer (bf16/fp8 have no numpy dtype)."""

    def __init__(self, t: torch.Tensor):
        t = t.detach().contiguous()
        self.shape, self.dtype = tuple(t.shape), t.dtype
        self.data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""

    def __call__(self) -> torch.Tensor:
        if not self.data:
            return torch.empty(self.shape, dtype=self.dtype)
        with warnings.catch_warnings():      # the buffer is read-only; nothing writes to it
            warnings.simplefilter("ignore")
            return torch.frombuffer(self.data, dtype=self.dtype).reshape(self.shape)


class _Spilled:
    """A large result handed over through a slot file in /dev/shm: the worker writes it once at offset 0
    (the file may be longer, from an earlier result). A pipe would copy it several times and wake the
    reader per 64 KiB. The parent either copies it to the output in the kernel and recycles the slot,
    or maps it as a tensor and retires the slot (the mapping must not see the slot's next result)."""

    def __init__(self, path: str, t: torch.Tensor):
        self.path, self.shape, self.dtype, self.nbytes = path, tuple(t.shape), t.dtype, t.numel() * t.element_size()

    def __call__(self) -> torch.Tensor:
        try:
            raw = torch.from_file(self.path, shared=False, size=self.nbytes, dtype=torch.uint8)
        finally:
            _unlink(self.path)            # the mapping stays valid; the pages go when the tensor does
        return raw.view(self.dtype).reshape(self.shape)


SPILL_PREFIX = "ling-convert-"


def _spill_dir() -> str | None:
    """A private dir in /dev/shm when it has room for a few results in flight; else None (pipe)."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 1 << 30:
            _sweep_stale("/dev/shm")
            return tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir="/dev/shm")
    except OSError:
        pass
    return None


def _sweep_stale(root: str) -> None:
    # NOTE: a SIGKILLed run skips its finalizer, and its spill files would hold RAM until reboot.
    for name in os.listdir(root):
        pid = name[len(SPILL_PREFIX):].split("-", 1)[0] if name.startswith(SPILL_PREFIX) else ""
        if pid.isdigit() and "-" in name[len(SPILL_PREFIX):] and not _alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # another user's process
        return True
    return True


def _portable(load: Callable) -> Callable:
    """Send the thunk itself when it pickles (file slices); otherwise read here and send the data."""
    try:
        pickle.dumps(load)
        return load
    except Exception:  # lambdas, closures, open handles: any pickling failure means "read here"
        return _Packed(load())
