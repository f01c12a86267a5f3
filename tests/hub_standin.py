"""A loopback stand-in for the Hugging Face Hub and ModelScope, for offline tests.

It implements only the routes the real clients call (huggingface_hub 2.4 with
Xet disabled; modelscope 1.40 / modelscope-hub 0.5), keeps every repository in
memory as a small git-like model (branches -> commits -> {path: entry}), and
can inject faults: an HTTP 500, a connection dropped while a body is sent, a
truncated or corrupted download, a body that never ends ("endless": no length,
bytes until `endless_limit`), a hostile listing entry such as `../x`, and a
hostile commit id in the revision info (`fake_commit`).

    with HubStandin(token="hf_test") as hub:
        HfApi(endpoint=hub.url, token="hf_test").create_repo("org/m")

Binds 127.0.0.1 only; every socket has a timeout and the server stops itself
after `max_lifetime` seconds, so a stuck test cannot leave it running. The
routes, one function per endpoint, are in hub_standin_routes.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# Files stored as LFS objects, as the Hub's default .gitattributes does.
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".npy", ".h5", ".msgpack")
HF_DEFAULT, MS_DEFAULT = "main", "master"


def git_oid(data: bytes) -> str:
    """git blob id: sha1 over 'blob <size>\\0' + content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    size: int
    sha256: str          # content hash (key into the blob store)
    lfs: bool
    oid: str             # git blob id: of the content, or of the LFS pointer


@dataclass
class Repo:
    private: bool
    default: str
    branches: dict[str, str] = field(default_factory=dict)        # name -> commit id
    commits: dict[str, dict[str, Entry]] = field(default_factory=dict)
    prs: int = 0


@dataclass
class Fault:
    method: str
    pattern: re.Pattern
    kind: str            # "500" | "drop" | "truncate" | "corrupt" | "endless"
    times: int


class Stop(Exception):
    """Raised inside a handler to end the connection without a response."""


class HubStandin:
    def __init__(self, token: str = "standin-token", *, lfs_threshold: int = 10_000_000,
                 max_lifetime: float = 300.0):
        self.token, self.lfs_threshold, self.max_lifetime = token, lfs_threshold, max_lifetime
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.extra_listing: dict[str, list[str]] = {}   # repo -> bogus paths added to listings
        self.fake_commit: dict[str, str] = {}           # repo -> the "sha" its revision info claims
        self.endless_limit = 200 << 20                  # an endless body stops here (keeps a failing test finite)
        self.endless_sent = 0                           # bytes sent by endless bodies so far
        self.log: list[tuple[str, str, int, str]] = []  # (method, path, request body bytes, Range)
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._conns: set = set()

    # -- lifecycle ---------------------------------------------------------
    def __enter__(self) -> "HubStandin":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        # NOTE: a watchdog so the server ends even if a test never reaches its teardown.
        self._watchdog = threading.Timer(self.max_lifetime, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop listening and cut every open connection (keep-alive ones included)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self._watchdog.cancel()
        with self.lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- test controls -------------------------------------------------------
    def fail(self, method: str, path_regex: str, kind: str = "500", times: int = 1) -> None:
        self.faults.append(Fault(method, re.compile(path_regex), kind, times))

    def take_fault(self, method: str, path: str, kinds: tuple[str, ...]) -> str | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and f.kind in kinds and f.method == method and f.pattern.search(path):
                    f.times -= 1
                    return f.kind
        return None

    def requests(self, method: str, pattern: str) -> list[tuple[str, str, int, str]]:
        rx = re.compile(pattern)
        return [r for r in self.log if r[0] == method and rx.search(r[1])]

    def files(self, repo_id: str, rev: str | None = None) -> dict[str, bytes]:
        """The content of every file of `repo_id` at a branch (for assertions)."""
        repo = self.repos[repo_id]
        tree = repo.commits[repo.branches[rev or repo.default]]
        return {p: self.blobs[e.sha256] for p, e in tree.items()}

    # -- model operations ------------------------------------------------------
    def create(self, repo_id: str, private: bool, default: str) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = Repo(private, default)
            cid = self._commit_id(repo_id, {}, "initial", "")
            repo.commits[cid] = {}
            repo.branches[default] = cid
            self.repos[repo_id] = repo
            return True

    def head(self, repo_id: str, rev: str) -> tuple[str, dict[str, Entry]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        cid = repo.branches.get(rev, rev if rev in repo.commits else None)
        return (cid, repo.commits[cid]) if cid else None

    def apply(self, repo_id: str, branch: str, adds: dict[str, Entry], deletes: list[str], message: str,
              *, create_pr: bool = False) -> tuple[str, str | None]:
        """Make a commit on `branch` (or on a new PR ref); returns (commit id, pr ref)."""
        with self.lock:
            repo = self.repos[repo_id]
            parent = repo.branches[branch]
            tree = dict(repo.commits[parent])
            for p in deletes:
                tree.pop(p, None)
            tree.update(adds)
            cid = self._commit_id(repo_id, tree, message, parent)
            repo.commits[cid] = tree
            ref = None
            if create_pr:
                repo.prs += 1
                ref = f"refs/pr/{repo.prs}"
                branch = ref
            repo.branches[branch] = cid
            return cid, ref

    def regular(self, data: bytes) -> Entry:
        sha = hashlib.sha256(data).hexdigest()
        with self.lock:
            self.blobs.setdefault(sha, data)
        return Entry(len(data), sha, False, git_oid(data))

    def lfs_entry(self, sha: str, size: int) -> Entry | None:
        data = self.blobs.get(sha)
        if data is None or len(data) != size:
            return None
        return Entry(size, sha, True, git_oid(lfs_pointer(sha, size)))

    def is_lfs(self, path: str, size: int) -> bool:
        return path.endswith(LFS_SUFFIXES) or size >= self.lfs_threshold

    def _commit_id(self, repo_id: str, tree: dict, message: str, parent: str) -> str:
        h = hashlib.sha1(f"{repo_id}\n{parent}\n{message}\n{time.time_ns()}".encode())
        for p, e in sorted(tree.items()):
            h.update(f"{p}\0{e.sha256}\n".encode())
        return h.hexdigest()

    def sign(self, oid: str) -> str:
        return hashlib.sha256(f"{self.token}:{oid}".encode()).hexdigest()[:16]

    def authorized(self, headers) -> bool:
        cookies = dict(c.strip().partition("=")[::2] for c in headers.get("Cookie", "").split(";") if c.strip())
        return headers.get("Authorization", "") == f"Bearer {self.token}" or cookies.get("m_session_id") == self.token


# -- HTTP layer ----------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30            # a client that stalls cannot hold a server thread for ever
    hub: HubStandin

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub.lock:
            self.hub._conns.add(self.connection)

    def finish(self) -> None:
        with self.hub.lock:
            self.hub._conns.discard(self.connection)
        super().finish()

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        try:
            body = b"" if self.command in ("GET", "HEAD") else self._read_body(url.path)
            with self.hub.lock:
                self.hub.log.append((self.command, url.path, len(body), self.headers.get("Range", "")))
            if self.hub.take_fault(self.command, url.path, ("500",)):
                return self._json(500, {"error": "injected failure", "Code": 500, "Success": False})
            from hub_standin_routes import ROUTES   # routes import this module: load them late
            for method, rx, fn in ROUTES:
                m = rx.match(url.path)
                if m and (self.command == method or (method == "GET" and self.command == "HEAD")):
                    return fn(self, m.groupdict(), query, body)
            self._json(404, {"error": f"no route {self.command} {url.path}"})
        except Stop:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _read_body(self, path: str) -> bytes:
        drop = self.hub.take_fault(self.command, path, ("drop",))
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(n)
                self.rfile.readline()
                if drop:
                    self._record_drop(path, len(data))
            return bytes(data)
        n = int(self.headers.get("Content-Length") or 0)
        if drop:
            self._record_drop(path, len(self.rfile.read(n // 2)))
        return self.rfile.read(n)

    def _record_drop(self, path: str, got: int):
        with self.hub.lock:
            self.hub.log.append((self.command, path + "#dropped", got, ""))
        raise Stop

    # -- responses ---------------------------------------------------------
    def _send(self, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None,
              length: int | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj, headers: dict | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), headers=headers)

    def _hf_error(self, code: int, kind: str, msg: str) -> None:
        self._json(code, {"error": msg}, headers={"X-Error-Code": kind, "X-Error-Message": msg})

    def _ms(self, data, code: int = 200, msg: str = "") -> None:
        ok = code < 400
        self._json(code, {"Code": 200 if ok else code, "Data": data, "Success": ok, "Message": msg,
                          "RequestId": "standin"})

    def _send_file(self, entry: Entry, headers: dict) -> None:
        """Serve content with Range support; faults: truncate (then close) or corrupt."""
        data = self.hub.blobs[entry.sha256]
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng:
            m = re.match(r"bytes=(\d+)-(\d*)", rng)
            start = int(m.group(1))
            end = int(m.group(2)) + 1 if m.group(2) else len(data)
            data, status = data[start:end], 206
            headers["Content-Range"] = f"bytes {start}-{start + len(data) - 1}/{entry.size}"
        headers["Accept-Ranges"] = "bytes"
        fault = self.hub.take_fault(self.command, self.path.split("?")[0], ("truncate", "corrupt", "endless")) \
            if self.command == "GET" else None
        if fault == "endless":
            return self._send_endless(data or b"x", headers)
        if fault == "corrupt" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if fault == "truncate" and len(data) > 1:
            self._send(status, data[: len(data) // 2], "application/octet-stream", headers, length=len(data))
            self.wfile.flush()
            raise Stop
        self._send(status, data, "application/octet-stream", headers)

    def _send_endless(self, data: bytes, headers: dict) -> None:
        """The file's bytes again and again, with no length, until the client hangs up (or the limit)."""
        self.send_response(200)
        for k, v in {**headers, "Connection": "close", "Content-Type": "application/octet-stream"}.items():
            self.send_header(k, v)
        self.end_headers()
        piece = (data * (1 + (1 << 16) // len(data)))[: 1 << 16]
        try:
            while self.hub.endless_sent < self.hub.endless_limit:
                self.wfile.write(piece)
                with self.hub.lock:
                    self.hub.endless_sent += len(piece)
        except OSError:
            pass
        raise Stop

    # -- access ----------------------------------------------------------------
    def _readable(self, repo_id: str, ms: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self.hub.authorized(self.headers)):
            if ms:
                code = 401 if repo is not None else 404
                self._ms(None, code, "authentication required" if repo else "model not found")
            elif repo is not None:
                self._hf_error(401, "RepoNotFound", "Repository not found (private; token required)")
            else:
                self._hf_error(404, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _writable(self, repo_id: str | None, ms: bool = False) -> bool:
        if not self.hub.authorized(self.headers):
            self._ms(None, 401, "invalid token") if ms else self._hf_error(401, "Unauthorized", "Invalid token")
            return False
        if repo_id is not None and repo_id not in self.hub.repos:
            self._ms(None, 404, "model not found") if ms else self._hf_error(404, "RepoNotFound", "Not found")
            return False
        return True
