"""Atomic outputs: stage next to the target, fsync, rename; a lock; resumable progress.

A run writes into `.<name>.partial/` beside OUT. Each finished file is fsynced and
recorded (with its sha256) in `progress.json` there. Only when everything, the
index and the manifest last, is on disk does the staging dir become OUT, by one
rename. A run killed at any point leaves either no OUT or a complete one;
`--resume` picks up the recorded files after checking their hashes.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from .. import __version__
from .errors import BadInputError, LingConvertError, OutputBusyError, OutputExistsError, WriteFailedError

PROGRESS = "progress.json"
LOCK = ".lock"
MANIFEST = "ling-convert.json"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path, bufsize: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_nonempty(path: Path) -> bool:
    if not path.exists():
        return False
    return path.is_file() or any(path.iterdir())


def os_error(e: OSError, path: Path) -> LingConvertError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WriteFailedError(f"no space left or file-size limit hit ({e.strerror})", path=path,
                                fix="free disk space or choose another output location; staging data was removed")
    return WriteFailedError(f"cannot write: {e.strerror or e}", path=path, fix="check permissions and free space")


class StagedOutput:
    """Context manager for one output (a directory, or a single file when `single_file`).

        with StagedOutput(out, force=False, resume=False, plan_id="...") as st:
            path = st.path("model.safetensors")        # write here, then
            st.done("model.safetensors", sha256)         # record it
            st.manifest({...})                           # last
    """

    def __init__(self, out: str | Path, *, force: bool = False, resume: bool = False,
                 plan_id: str = "", single_file: bool = False):
        self.out = Path(out)
        self.force, self.resume, self.plan_id, self.single_file = force, resume, plan_id, single_file
        self.staging = self.out.parent / f".{self.out.name}.partial"
        self.files: dict[str, str] = {}      # relpath -> sha256, in write order
        self.meta: dict[str, object] = {}    # relpath -> what a writer needs to reuse the file (e.g. offsets)
        self.partial: dict[str, object] = {}  # relpath -> durable checkpoint of a file still being written
        self._lock_fd: int | None = None
        self._resumed: dict[str, str] = {}
        self._resumed_meta: dict[str, object] = {}
        self._resumed_partial: dict[str, object] = {}
        # Called with the staging dir when it is complete, just before the rename (e.g. file modes).
        self.before_swap: Callable[[Path], None] | None = None

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> "StagedOutput":
        return self.open()

    def __exit__(self, exc_type, exc, tb):
        return self.close(exc)

    @property
    def is_open(self) -> bool:
        return self._lock_fd is not None

    @property
    def resumed(self) -> dict[str, str]:
        """Finished files (name -> sha256) a killed run recorded; --resume may reuse them."""
        return dict(self._resumed)

    def open(self) -> "StagedOutput":
        """Check the output, create the staging dir and take its lock (what `with` does on entry)."""
        if is_nonempty(self.out) and not self.force:
            raise OutputExistsError("output already exists and is not empty", path=self.out,
                                    fix="choose a new output path or pass --force to replace it")
        if not self.out.parent.exists():
            raise WriteFailedError("parent directory does not exist", path=self.out.parent,
                                   fix="create it first")
        created = not self.staging.exists()
        self.staging.mkdir(exist_ok=True)
        self._take_lock(created)
        self._load_progress()
        return self

    def close(self, exc: BaseException | None = None) -> bool:
        """Unlock; after a failure `exc` also clean up (what `with` does on exit)."""
        self._release_lock()
        if exc is None:
            return False
        # Interrupted by the user: keep finished shards for --resume. Any error: leave nothing.
        if not isinstance(exc, KeyboardInterrupt):
            shutil.rmtree(self.staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise os_error(exc, self.out) from exc
        return False

    def _take_lock(self, created: bool) -> None:
        fd = os.open(self.staging / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError("another ling-convert run is writing this output", path=self.out,
                                  fix="wait for it to finish, or pick another output path") from None
        self._lock_fd = fd
        if not created and not self.resume:
            # A stale staging dir from a dead run: start clean (we hold the lock now).
            for p in self.staging.iterdir():
                if p.name != LOCK:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- files ---------------------------------------------------------------
    def path(self, rel: str) -> Path:
        p = self.staging / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def _load_progress(self) -> None:
        prog = self.staging / PROGRESS
        if not (self.resume and prog.exists()):
            return
        try:
            data = json.loads(prog.read_text())
        except (OSError, ValueError):
            return
        if data.get("plan_id") != self.plan_id:
            return  # different inputs or options: nothing is reusable
        self._resumed = dict(data.get("files", {}))
        self._resumed_meta = dict(data.get("meta", {}))
        self._resumed_partial = dict(data.get("partial", {}))

    def reusable(self, rel: str) -> bool:
        """True when a resumed run already has `rel` with the recorded hash (its `meta` comes along)."""
        want = self._resumed.get(rel)
        p = self.staging / rel
        if want and p.is_file() and sha256_file(p) == want:
            self.files[rel] = want
            if rel in self._resumed_meta:
                self.meta[rel] = self._resumed_meta[rel]
            return True
        return False

    def done(self, rel: str, sha256: str | None = None, meta=None) -> None:
        """Record a finished file: fsync it and persist progress for --resume. `meta` (JSON) is kept
        with it for a resumed run that reuses the file (e.g. where each tensor lies in it)."""
        p = self.staging / rel
        fsync_path(p)
        self.files[rel] = sha256 or sha256_file(p)
        if meta is not None:
            self.meta[rel] = meta
        self.partial.pop(rel, None)
        self._save_progress()

    def checkpoint(self, rel: str, state) -> None:
        """Record how far `rel` (still being written, already fsynced that far) got: a resumed run
        reads it back with `resumed_partial` and continues from there instead of from the start."""
        self.partial[rel] = state
        self._save_progress()

    def resumed_partial(self, rel: str):
        """The last checkpoint a killed run recorded for `rel`, or None (not resuming, or none)."""
        return self._resumed_partial.get(rel)

    def _save_progress(self) -> None:
        write_json_atomic(self.staging / PROGRESS, {"plan_id": self.plan_id, "files": self.files,
                                                    "meta": self.meta, "partial": self.partial})

    def write_bytes(self, rel: str, data: bytes, mode: int | None = None) -> None:
        p = self.path(rel)
        with open(p, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(p, mode)
        self.done(rel, hashlib.sha256(data).hexdigest())

    def write_json(self, rel: str, obj, mode: int | None = None) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode(), mode)

    def copy(self, rel: str, src: Path, mode: int | None = None) -> None:
        p = self.path(rel)
        shutil.copyfile(src, p)
        if mode is not None:
            os.chmod(p, mode)
        self.done(rel)

    # -- finish ----------------------------------------------------------------
    def commit(self, manifest: dict, *, name: str = MANIFEST) -> Path:
        """Write the manifest last (as `name`), then swap the staging dir into place."""
        manifest = {"tool": "ling-convert", "version": __version__, **manifest,
                    "files": dict(sorted(self.files.items()))}
        if self.single_file:
            return self._commit_file(manifest)
        write_json_atomic(self.staging / name, manifest)
        for name in (PROGRESS, LOCK):
            (self.staging / name).unlink(missing_ok=True)
        if self.before_swap is not None:
            self.before_swap(self.staging)
        fsync_path(self.staging)
        self._swap_into_place(self.staging, self.out)
        return self.out

    def _commit_file(self, manifest: dict) -> Path:
        # A single-file output (GGUF): the file is renamed into place, the manifest beside it.
        # NOTE: everything is complete in staging before the first rename (no .tmp beside OUT
        # if killed), and a split set's first file, the one readers open, is renamed in last.
        inner = sorted(r for r in self.files if not r.endswith(MANIFEST))
        side = self.out.with_name(self.out.name + "." + MANIFEST)
        write_json_atomic(self.staging / MANIFEST, manifest)
        dsts = {rel: self.out if len(inner) == 1 else self.out.parent / rel for rel in inner}
        # Every target is checked before the first rename (all of the set goes in, or none). One that
        # already holds exactly these bytes (a split a killed run renamed in before its first file)
        # may be replaced; any other existing file needs --force.
        same = {rel for rel, dst in dsts.items() if not self.force and is_nonempty(dst)
                and _same_file(dst, self.files[rel])}
        for rel in inner:
            if not self.force and rel not in same and is_nonempty(dsts[rel]):
                raise OutputExistsError("exists and holds other bytes than this run wrote", path=dsts[rel],
                                        fix="pass --force to replace it, or choose a new output path")
        for rel in inner[1:] + inner[:1]:
            self._swap_into_place(self.staging / rel, dsts[rel], guard=rel not in same)
        self._swap_into_place(self.staging / MANIFEST, side, guard=False)   # a stale sidecar is ours to replace
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.out

    def _swap_into_place(self, src: Path, dst: Path, *, guard: bool = True) -> None:
        """Rename `src` to `dst`; unless `guard` is off, an existing `dst` is replaced only with --force."""
        old = None
        if guard and not self.force and is_nonempty(dst):
            # NOTE: another run committed OUT after our emptiness check in __enter__; never replace it.
            raise OutputExistsError("output appeared while this run was writing", path=dst,
                                    fix="another run wrote it; choose a new output path or pass --force")
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(dst, old)
        os.replace(src, dst)
        fsync_path(dst.parent)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def _same_file(path: Path, sha: str) -> bool:
    return path.is_file() and sha256_file(path) == sha


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal, as huggingface_hub); '2GiB' binary; bare ints are bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().replace(" ", "")
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
             "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
    for u, mult in units.items():
        if s.endswith(u):
            num = s[: -len(u)]
            break
    else:
        num, mult = s, 1
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise BadInputError(f"cannot parse size {text!r}", fix="use e.g. 5GB, 500MB or 2GiB") from None
    if value <= 0:
        raise BadInputError(f"size {text!r} must be positive", fix="use e.g. 5GB")
    return value

