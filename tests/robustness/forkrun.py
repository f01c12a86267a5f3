"""Run the real CLI many times without paying the interpreter + torch start-up each time.

A "zygote" process imports ling_convert (all commands) once, then forks one child per
run. Each child is the real CLI: its own process group, fds 1/2 redirected to files
(so anything printed, a traceback or a warning included, is seen byte for byte),
`main(argv)` then `os._exit(code)`. Options per run:

  kill_at=k      SIGKILL the child's whole process group (workers included) at the k-th
                 file-system event (an audit hook counts opens, renames, removals, mkdirs,
                 chmods, copies: every tensor read opens its file, so points fall inside
                 shard writes as well as between files);
  count=True     count those events and report the total (for choosing kill points);
  hold=k|"event" pause the child at the k-th event (or the first event of that name, e.g. "os.mkdir";
                 "os.rename@out": the first whose source or destination path ends with "out")
                 until `release(pid)`; `held(pid)` waits until it is paused there;
  fsize=n        RLIMIT_FSIZE n bytes with SIGXFSZ ignored (writes then fail with EFBIG);
  env={...}      extra environment variables;
  limit_s=t      SIGALRM ends the run after t seconds (rc -14: a hang fails the test instead of stalling it);
  mem_mb=m       address space capped at start + m MiB (a blow-up fails fast instead of swapping the
                 machine); the RSS growth over the run is reported as Result.grew_mb.

Start with `start()`, wait with `wait(pid)`; `run()` does both. Start-up is ~4 s once,
then ~10 ms per run, which is what keeps the kill and corpus suites inside the CI budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What the zygote runs. Kept as text so the child is a plain interpreter, not pytest.
_ZYGOTE = r'''
import json, os, resource, signal, sys, time, traceback
import contextlib, importlib, io, pkgutil
import ling_convert
from ling_convert.cli import _load_commands, main
_load_commands()
# Warm up: import every module now (formats, converters, verify... load lazily) so that no child
# pays for it; no tensor maths here (thread pools must not exist before fork).
for m in pkgutil.walk_packages(ling_convert.__path__, "ling_convert."):
    if m.name != "ling_convert.__main__":
        importlib.import_module(m.name)
for m in ("jsonschema", "safetensors.torch", "gguf", "rich.progress", "rich.table"):
    importlib.import_module(m)
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    main(["inspect", "/nonexistent"])
EVENTS = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.chmod", "os.truncate",
          "shutil.copyfile", "shutil.rmtree", "os.link", "os.symlink"}

def _status(field):
    # kB figures of this process from /proc (VmHWM: peak resident set since the fork)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":"))

def child(req):
    os.setpgid(0, 0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        f = os.open(req["prefix"] + "." + name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(req.get("cwd") or os.getcwd())
    os.environ.update(req.get("env") or {})
    if req.get("limit_s"):
        signal.alarm(int(req["limit_s"]))
    if req.get("mem_mb"):
        vsz = int(_status("VmSize"))
        resource.setrlimit(resource.RLIMIT_AS, ((vsz + req["mem_mb"] * 1024) * 1024,) * 2)
    rss0 = _status("VmRSS")
    if req.get("fsize") is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
    kill_at, hold = req.get("kill_at"), req.get("hold")
    counting = req.get("count") or kill_at is not None or hold is not None
    seen = [0]
    if counting:
        def pause(event):
            # Tell the parent where we stopped, then wait for its release (a file appears).
            with open(req["prefix"] + ".held", "w") as f:
                f.write(event)
            while not os.path.exists(req["prefix"] + ".release"):
                time.sleep(0.005)

        def hook(event, args):
            if event in EVENTS:
                seen[0] += 1
                if kill_at is not None and seen[0] >= kill_at:
                    os.killpg(0, signal.SIGKILL)
                at = event == hold or (isinstance(hold, str) and "@" in hold and event == hold.split("@")[0]
                                       and any(str(a).endswith(hold.split("@", 1)[1]) for a in args[:2]))
                if hold is not None and not done[0] and (seen[0] == hold or at) and os.getpid() == me:
                    done[0] = True
                    pause(event)
        me, done = os.getpid(), [False]
        sys.addaudithook(hook)
    sys.argv = ["ling-convert", *req["argv"]]
    try:
        code = main(req["argv"])
    except BaseException:
        traceback.print_exc()
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    with open(req["prefix"] + ".grew", "w") as f:
        f.write(str((_status("VmHWM") - rss0) // 1024))
    if counting:
        with open(req["prefix"] + ".events", "w") as f:
            f.write(str(seen[0]))
    os._exit(code if isinstance(code, int) else 98)

proto_in, proto_out = sys.stdin, sys.stdout
for line in proto_in:
    req = json.loads(line)
    if req["op"] == "start":
        proto_out.flush()
        pid = os.fork()
        if pid == 0:
            try:
                child(req)
            finally:
                os._exit(97)
        reply = {"pid": pid}
    else:
        _, status, usage = os.wait4(req["pid"], 0)
        reply = {"rc": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}
    proto_out.write(json.dumps(reply) + "\n")
    proto_out.flush()
'''


@dataclass
class Result:
    rc: int                  # exit code; -9 when SIGKILLed
    stdout: str
    stderr: str
    events: int | None       # file-system events counted (count=True or kill_at)
    maxrss_mb: float = 0.0   # peak resident memory of the run (pages shared with the zygote included)
    grew_mb: int | None = None   # peak RSS over the RSS at the fork, MiB (None if the child was killed)

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


class Zygote:
    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "LING_CONVERT_DEBUG"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
        self._n = 0
        self._prefix: dict[int, str] = {}

    def _ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("zygote died")
        return json.loads(line)

    def start(self, *argv, kill_at: int | None = None, count: bool = False, fsize: int | None = None,
              hold: int | str | None = None, env: dict | None = None, cwd: str | Path | None = None,
              limit_s: int | None = None, mem_mb: int | None = None) -> int:
        self._n += 1
        prefix = str(self.workdir / f"run{self._n}")
        pid = self._ask({"op": "start", "argv": [str(a) for a in argv], "prefix": prefix, "kill_at": kill_at,
                         "count": count, "fsize": fsize, "hold": hold, "env": env or {},
                         "cwd": str(cwd) if cwd else None, "limit_s": limit_s, "mem_mb": mem_mb})["pid"]
        self._prefix[pid] = prefix
        return pid

    def held(self, pid: int, timeout: float = 120) -> str:
        """Wait until run `pid` is paused at its hold point; -> the event it stopped before."""
        marker, t0 = Path(self._prefix[pid] + ".held"), time.monotonic()
        while not marker.exists():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"run {pid} never reached its hold point")
            time.sleep(0.005)
        return marker.read_text()

    def release(self, pid: int) -> None:
        Path(self._prefix[pid] + ".release").touch()

    def wait(self, pid: int) -> Result:
        reply = self._ask({"op": "wait", "pid": pid})
        rc = reply["rc"]
        prefix = Path(self._prefix.pop(pid))
        read = lambda ext: Path(f"{prefix}.{ext}").read_text(errors="replace") if Path(f"{prefix}.{ext}").exists() else ""  # noqa: E731
        ev, grew = read("events"), read("grew")
        return Result(rc, read("stdout"), read("stderr"), int(ev) if ev.strip() else None,
                      reply.get("maxrss_kb", 0) / 1024, int(grew) if grew.strip() else None)

    def run(self, *argv, **kw) -> Result:
        return self.wait(self.start(*argv, **kw))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
