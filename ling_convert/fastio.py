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

import ctypes
import errno
import os

from .errors import CorruptFileError

CHUNK = 1 << 26            # bytes per copy_file_range call
BUF = 1 << 24              # scratch buffer for hashing and the fallback copy
WRITEBACK_EVERY = 1 << 26  # start writeback after this many new bytes
SMALL = 1 << 20            # below this, hash a copy of the bytes rather than reading them back

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


def copy_range(src_path, offset: int, n: int, dst_fd: int) -> None:
    """Append `n` bytes of `src_path` starting at `offset` to `dst_fd` (at its position).

    copy_file_range first (a reflink on file systems that share blocks), sendfile
    between file systems (e.g. a worker's result in /dev/shm), read/write where the
    kernel can do neither (non-Linux)."""
    done = 0
    with open(src_path, "rb", buffering=0) as src:
        try:
            for kernel_copy in _kernel_copies(src.fileno(), dst_fd):
                try:
                    while done < n:
                        got = kernel_copy(src.fileno(), dst_fd, min(CHUNK, n - done), offset + done)
                        if got == 0:
                            raise EOFError
                        done += got  # the kernel advanced dst_fd's position by `got`
                    return
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    _refused.add((kernel_copy, _devices(src.fileno(), dst_fd)))
            _user_copy(src.fileno(), offset + done, n - done, dst_fd, bytearray(min(BUF, n - done)))
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
