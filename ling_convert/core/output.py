"""Atomic outputs: stage next to the target, fsync, rename; a lock; resumable progress.

A run works in `.<name>.partial/` beside OUT: the files go into `files/` there, each
fsynced and recorded (with its sha256) in `progress.json` beside `files/`, never among
them (a repository may hold a file of any name). Only when everything, the index and
the manifest last, is on disk does `files/` become OUT, by one rename; the `lock` is
held until that rename is done. A run killed at any point leaves either no OUT or a
complete one; `--resume` picks up the recorded files after checking their hashes and
that the source is unchanged (guard.fingerprint); a changed source starts over.
Before anything is written, OUT is checked apart from every source (guard.check_apart).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

from .. import __version__
from .errors import BadInputError, LingConvertError, OutputBusyError, OutputExistsError, WriteFailedError
from .guard import check_apart, fingerprint, remove, same_inode, unlink_symlinks

PROGRESS = "progress.json"   # bookkeeping lives beside FILES in the staging dir, not inside it
LOCK = "lock"
FILES = "files"
MANIFEST = "ling-convert.json"
MAX_PROGRESS = 64 << 20   # a progress.json past this was not written by us: start over


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


def output_path(staged_file: Path) -> Path:
    """Where a file in a staging dir (`.OUT.partial/files/NAME`) ends up: OUT/NAME (for error messages)."""
    root = staged_file.parent.parent
    return root.parent / root.name[1:].removesuffix(".partial") / staged_file.name


def os_error(e: OSError, path: Path) -> LingConvertError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return WriteFailedError(f"no space left or file-size limit hit ({e.strerror})", path=path,
                                fix="free disk space or choose another output location; staging data was removed")
    return WriteFailedError(f"cannot write: {e.strerror or e}", path=path, fix="check permissions and free space")


class StagedOutput:
    """Context manager for one output (a directory, or a single file when `single_file`).

        with StagedOutput(out, sources=[src_dir], force=False, resume=False, plan_id="...") as st:
            path = st.path("model.safetensors")        # write here, then
            st.done("model.safetensors", sha256)         # record it
            st.manifest({...})                           # last
    """

    def __init__(self, out: str | Path, *, sources: Iterable[str | Path], force: bool = False, resume: bool = False,
                 plan_id: str = "", single_file: bool = False):
        self.out = Path(out)
        self.force, self.resume, self.plan_id, self.single_file = force, resume, plan_id, single_file
        # What the run reads: OUT must stay apart from it, and --resume must see it unchanged.
        self.sources = [Path(s) for s in sources]
        self.root = self.out.parent / f".{self.out.name}.partial"
        self.staging = self.root / FILES
        self.files: dict[str, str] = {}      # relpath -> sha256, in write order
        self.meta: dict[str, object] = {}    # relpath -> what a writer needs to reuse the file (e.g. offsets)
        self.partial: dict[str, object] = {}  # relpath -> durable checkpoint of a file still being written
        self._lock_fd: int | None = None
        self._resumed: dict[str, str] = {}
        self._resumed_meta: dict[str, object] = {}
        self._resumed_partial: dict[str, object] = {}
        self.source_id = ""
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
        """Check the output apart from its sources, create the staging dir and take its lock (`with` entry)."""
        check_apart(self.out, self.sources)            # before anything is created or removed
        if not self.out.parent.exists():
            raise WriteFailedError("parent directory does not exist", path=self.out.parent,
                                   fix="create it first")
        created = self._take_lock(self._make_root())
        try:
            if is_nonempty(self.out) and not self.force:
                raise OutputExistsError("output already exists and is not empty", path=self.out,
                                        fix="choose a new output path or pass --force to replace it")
            self.source_id = fingerprint(self.sources)
            self._prepare_root()
        except BaseException:
            if created:
                shutil.rmtree(self.root, ignore_errors=True)
            self._release_lock()
            raise
        return self

    def close(self, exc: BaseException | None = None) -> bool:
        """Unlock; after a failure `exc` also clean up (what `with` does on exit)."""
        if exc is None:
            self._release_lock()
            return False
        # Interrupted by the user: keep finished shards for --resume. Any error: leave nothing.
        if not isinstance(exc, KeyboardInterrupt):
            shutil.rmtree(self.root, ignore_errors=True)
        self._release_lock()
        if isinstance(exc, OSError):
            raise os_error(exc, self._named(exc)) from exc
        return False

    def _named(self, exc: OSError) -> Path:
        """The output file a failed write was for (a staged file under its final name), else OUT."""
        failed = Path(os.fsdecode(exc.filename)) if exc.filename else None
        if failed is None or failed.parent != self.staging or self.single_file:
            return self.out
        return self.out / failed.name.removesuffix(".tmp")

    def _make_root(self) -> bool:
        """Create the staging dir; True when this run created it. A link (or file) planted under its
        name is removed itself, so nothing is ever written through it."""
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            self.root.unlink()
        try:
            self.root.mkdir()
            return True
        except FileExistsError:
            return False

    def _take_lock(self, created: bool) -> bool:
        """flock `lock` in the staging dir, held until OUT is in place. -> whether this run created the dir."""
        lock = self.root / LOCK
        for _ in range(50):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
            except FileNotFoundError:      # a run that just finished removed the staging dir
                created = self._make_root() or created
                continue
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                lock.unlink()              # a planted symlink: drop the link itself
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputBusyError("another ling-convert run is writing this output", path=self.out,
                                      fix="wait for it to finish, or pick another output path") from None
            # NOTE: the run we waited on may have removed its staging dir between our open and flock.
            if same_inode(lock, fd):
                self._lock_fd = fd
                return created
            os.close(fd)
            created = self._make_root() or created
        raise OutputBusyError("the output's lock keeps changing hands", path=self.out,
                              fix="another run is starting and finishing on this output; retry later")

    def _prepare_root(self) -> None:
        """With the lock held: keep a killed run's files only for a --resume with the same plan and source."""
        if self.resume:
            unlink_symlinks(self.root)
            self._load_progress()
        if not self._resumed and not self._resumed_partial:
            for p in self.root.iterdir():   # a dead run's files, or an older layout's
                if p.name != LOCK:
                    remove(p)
        self.staging.mkdir(exist_ok=True)

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
        prog = self.root / PROGRESS
        try:
            if not prog.is_file() or prog.stat().st_size > MAX_PROGRESS:
                return
            data = json.loads(prog.read_text())
        except (OSError, ValueError, RecursionError):
            return
        if not isinstance(data, dict) or (data.get("plan_id"), data.get("source")) != (self.plan_id, self.source_id):
            return  # different inputs or options, or the source changed since: start over
        # progress.json is a file on disk like any input: anything but the shapes we write means "start over"
        files, meta, partial = (data.get(k) if isinstance(data.get(k), dict) else {} for k in ("files", "meta", "partial"))
        self._resumed = {k: v for k, v in files.items() if isinstance(v, str)}
        self._resumed_meta, self._resumed_partial = meta, partial

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
        write_json_atomic(self.root / PROGRESS, {"plan_id": self.plan_id, "source": self.source_id,
                                                 "files": self.files, "meta": self.meta, "partial": self.partial})

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
    def full_manifest(self, manifest: dict) -> dict:
        return {"tool": "ling-convert", "version": __version__, **manifest, "files": dict(sorted(self.files.items()))}

    def commit(self, manifest: dict, *, name: str | None = MANIFEST) -> Path:
        """Write the manifest last (as `name`; None: not into OUT), then swap the staging dir into place."""
        manifest = self.full_manifest(manifest)
        if self.single_file:
            return self._commit_file(manifest)
        if name is not None:
            write_json_atomic(self.staging / name, manifest)
        if self.before_swap is not None:
            self.before_swap(self.staging)
        fsync_path(self.staging)
        self._swap_into_place(self.staging, self.out)
        self._finish()
        return self.out

    def _finish(self) -> None:
        """OUT is in place: drop the bookkeeping, and only then let the next run in."""
        shutil.rmtree(self.root, ignore_errors=True)
        self._release_lock()

    def _commit_file(self, manifest: dict) -> Path:
        # A single-file output (GGUF): the file is renamed into place, the manifest beside it.
        # NOTE: everything is complete in staging before the first rename (no .tmp beside OUT
        # if killed), and a split set's first file, the one readers open, is renamed in last.
        inner = sorted(r for r in self.files if not r.endswith(MANIFEST))
        side = self.out.with_name(self.out.name + "." + MANIFEST)
        write_json_atomic(self.staging / MANIFEST, manifest)
        dsts = {rel: self.out if len(inner) == 1 else self.out.parent / rel for rel in inner}
        for dst in dsts.values():
            check_apart(dst, self.sources)
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
        self._finish()
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
            if old.exists() or old.is_symlink():
                remove(old)
            os.replace(dst, old)
        os.replace(src, dst)
        fsync_path(dst.parent)
        if old is not None:
            remove(old)


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
        value = int(float(num) * mult)      # inf and nan raise here too
    except (ValueError, OverflowError):
        raise BadInputError(f"cannot parse size {text!r} as a finite size", fix="use e.g. 5GB, 500MB or 2GiB") from None
    if value <= 0:
        raise BadInputError(f"size {text!r} must be positive", fix="use e.g. 5GB")
    return value

