"""Kernel-side copies and early writeback for the shard writer (Linux; portable fallbacks).

Converting a checkpoint is mostly moving bytes that do not change (bin -> safetensors,
resharding, the bf16 tensors FP8 keeps). Copying them through Python costs a read into
a fresh buffer (page faults), a write (another copy) and leaves all the writeback to
the final fsync. Here: `copy_range` asks the kernel to copy a file range
(`copy_file_range`, no user-space pass), and `start_writeback` starts flushing what was
written so far (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, non-blocking), so the disk
works while the next tensor is being read instead of all at once in the final fsync.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from .errors import CorruptFileError

CHUNK = 1 << 26            # bytes per copy_file_range call
BUF = 1 << 24              # scratch buffer for hashing and the fallback copy
WRITEBACK_EVERY = 1 << 26  # start writeback after this many new bytes

# errors that mean "the kernel cannot do this copy here", not "the copy failed"
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.ETXTBSY}
_kernel_copy = os.environ.get("LING_CONVERT_NO_KERNEL_COPY") != "1"   # tests compare both paths


def write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def pread_into(fd: int, view: memoryview, offset: int) -> int:
    """Fill `view` from `fd` at `offset`; -> bytes read (short only at end of file)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _chunks(fd: int, offset: int, n: int, buf: bytearray):
    """`n` bytes of `fd` from `offset`, read through `buf` a bufferful at a time."""
    done = 0
    while done < n:
        view = memoryview(buf)[:min(len(buf), n - done)]
        if pread_into(fd, view, offset + done) < len(view):
            raise EOFError
        yield view
        done += len(view)


def _user_copy(src_fd: int, offset: int, n: int, dst_fd: int, buf: bytearray) -> None:
    for view in _chunks(src_fd, offset, n, buf):
        write_all(dst_fd, view)


class _SourceFiles:
    """Source files kept open across copies (the few used last). The kernel's readahead state
    lives in the open file: opening the file again for every tensor restarts readahead small,
    and the copy waits on the disk between tensors (bin2st 24 GB from a cold cache: 85 s
    reopening per tensor, 74.5 s kept open). A cached descriptor is used only while the path
    still names the same, still linked file; one in use by a copy is never closed."""

    KEEP = 8

    def __init__(self):
        self.fds: OrderedDict[str, int] = OrderedDict()
        self.busy: dict[int, int] = {}
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def open(self, path):
        p = os.fspath(path)
        st = os.stat(p)
        with self.lock:
            fd = self.fds.get(p)
            if fd is not None and not self._same(fd, st):
                self._drop(p)
                fd = None
            if fd is None:
                fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                if hasattr(os, "posix_fadvise"):
                    with contextlib.suppress(OSError):   # a hint: a larger readahead window
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                self.fds[p] = fd
            self.fds.move_to_end(p)
            self.busy[fd] = self.busy.get(fd, 0) + 1
            self._trim()
        try:
            yield fd
        finally:
            with self.lock:
                self.busy[fd] -= 1
                if not self.busy[fd]:
                    del self.busy[fd]
                    if fd not in self.fds.values():   # dropped while in use
                        os.close(fd)

    @staticmethod
    def _same(fd: int, st: os.stat_result) -> bool:
        fst = os.fstat(fd)
        return (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino) and fst.st_nlink > 0

    def _drop(self, p: str) -> None:
        fd = self.fds.pop(p)
        if fd not in self.busy:
            os.close(fd)

    def _trim(self) -> None:
        for p in [p for p, fd in self.fds.items() if fd not in self.busy][:max(0, len(self.fds) - self.KEEP)]:
            self._drop(p)

    def close_all(self) -> None:
        with self.lock:
            for p in list(self.fds):
                self._drop(p)


_sources = _SourceFiles()


def release_sources() -> None:
    """Close the kept-open source files (a writer calls it when its file is done, so a caller that
    deletes its source afterwards gets the space back at once)."""
    _sources.close_all()


def _fresh_sources_after_fork() -> None:
    # The child must not share the parent's lock (it may have been held at the fork) or its cache.
    global _sources
    _sources = _SourceFiles()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_sources_after_fork)


def copy_range(src_path, offset: int, n: int, dst_fd: int) -> None:
    """Append `n` bytes of `src_path` starting at `offset` to `dst_fd` (at its position).

    copy_file_range first (a reflink on file systems that share blocks), sendfile
    between file systems (e.g. a worker's result in /dev/shm), read/write where the
    kernel can do neither (non-Linux)."""
    done = 0
    with _sources.open(src_path) as src:
        try:
            for kernel_copy in _kernel_copies(src, dst_fd):
                try:
                    while done < n:
                        got = kernel_copy(src, dst_fd, min(CHUNK, n - done), offset + done)
                        if got == 0:
                            raise EOFError
                        done += got  # the kernel advanced dst_fd's position by `got`
                    return
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    _refused.add((kernel_copy, _devices(src, dst_fd)))
            _user_copy(src, offset + done, n - done, dst_fd, bytearray(min(BUF, n - done)))
        except EOFError:
            raise CorruptFileError(f"expected {n} bytes at offset {offset}, the file ends first", path=src_path,
                                   fix="the file is truncated; re-download it") from None


def _cfr(src_fd: int, dst_fd: int, n: int, offset: int) -> int:
    return os.copy_file_range(src_fd, dst_fd, n, offset)


def _sendfile(src_fd: int, dst_fd: int, n: int, offset: int) -> int:
    return os.sendfile(dst_fd, src_fd, offset, n)


_refused: set = set()   # (method, (src device, dst device)) the kernel refused once: not asked again


def _devices(src_fd: int, dst_fd: int) -> tuple[int, int]:
    return os.fstat(src_fd).st_dev, os.fstat(dst_fd).st_dev


def _kernel_copies(src_fd: int, dst_fd: int):
    if not _kernel_copy:
        return []
    devs = _devices(src_fd, dst_fd)
    methods = ([_cfr] if hasattr(os, "copy_file_range") else []) + ([_sendfile] if hasattr(os, "sendfile") else [])
    return [m for m in methods if (m, devs) not in _refused]


def hash_range(h, fd: int, offset: int, n: int, buf: bytearray) -> None:
    """Feed `n` bytes of `fd` at `offset` to hash `h` (reads what was just written: page cache)."""
    try:
        for view in _chunks(fd, offset, n, buf):
            h.update(view)
    except EOFError:
        raise OSError(errno.EIO, "short read of a file being written") from None


def _sync_file_range():
    if not hasattr(os, "posix_fadvise"):  # not Linux-like: nothing to call
        return None
    try:  # NOTE: not ctypes.util.find_library, which runs ldconfig/gcc (100 ms at every start)
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


_SFR = _sync_file_range()
_SFR_WRITE = 2  # SYNC_FILE_RANGE_WRITE: start writeback of dirty pages, do not wait


def start_writeback(fd: int, offset: int, n: int) -> None:
    """Begin flushing [offset, offset+n) to disk without waiting (a hint; errors surface at fsync)."""
    if _SFR is not None and n > 0:
        _SFR(fd, offset, n, _SFR_WRITE)


def pread_flat(path: Path, offset: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
    """Read `nbytes` at `offset` into a fresh 1-D tensor of `dtype` (no zero-fill, no mmap)."""
    if nbytes == 0:
        return torch.empty(0, dtype=dtype)
    buf = torch.empty(nbytes, dtype=torch.uint8)  # uninitialised: pread fills every byte
    with open(path, "rb", buffering=0) as f:
        got = pread_into(f.fileno(), memoryview(buf.numpy()), offset)
    if got != nbytes:
        raise CorruptFileError(f"expected {nbytes} bytes at offset {offset}, read {got}", path=path,
                               fix="the file is truncated; re-download it")
    return buf.view(dtype)
