"""The sandbox executed code runs in: a subprocess confined to the task's workspace, with limits and no network.

What a run gets (see ``sandbox_init`` for the child side):

- **namespaces**: new mount, network, PID, IPC and UTS namespaces. The network namespace has only a loopback
  interface that is down: no connection leaves it, not even to 127.0.0.1 (PostgreSQL, Redis, RabbitMQ).
- **file system**: a private root with ``/usr`` (and the ``/bin``, ``/lib`` links), ``/etc/alternatives`` and
  ``/etc/ld.so.cache`` read-only, the task workspace read-write at ``/workspace``, a size-limited ``/tmp``, a
  minimal ``/dev`` and the namespace's own ``/proc``. Not there: the host's ``/etc/passwd`` and the rest of
  ``/etc``, ``/root``, ``/home``, ``/work``, ``/var``, ``/tmp``, other tasks' workspaces, unix sockets.
- **identity**: a uid/gid of its own per concurrent run (``uid_base`` + n, allocated with ``flock`` so two runs on
  one host never share one), no supplementary groups, ``no_new_privs`` and ``nosuid`` mounts. The per-run uid is
  what makes ``RLIMIT_NPROC`` a real bound: the kernel counts processes per uid and never limits root, so as root
  the limit would do nothing, and a shared uid (``nobody``) would make concurrent runs starve each other.
- **limits** (``setrlimit`` in the program's process): CPU seconds (SIGXCPU), address space, file size (SIGXFSZ),
  processes, open files, no core files; wall-clock time is enforced here by ending the run, and when the
  namespace's PID 1 dies the kernel kills every process left in it (fork bombs, daemons, orphans) before the run
  returns and its uid is handed out again.
- **environment**: only ``SANDBOX_ENV`` (PATH, HOME, TMPDIR, locale, three PYTHON* switches): no secret of the
  worker's reaches the program, and ``/proc`` shows only the sandbox's own processes.
- **output**: stdout and stderr merged; the first three quarters and the last quarter of ``output_bytes`` are kept
  (tracebacks are at the end), the rest is counted and dropped.

Not prevented (say so honestly): the kernel is shared (no seccomp filter, so a kernel exploit escapes); memory is
bounded per process (``RLIMIT_AS``), so a program that forks may use up to ``max_processes`` times it (a cgroup
would bound the total; we do not create cgroups, the workplace's cgroup tree is not ours); the workspace has no
total size quota (each file is bounded by ``RLIMIT_FSIZE``); CPU use is bounded by time, not shared fairly.

It needs root (namespaces, chroot, setuid). Where it cannot work, ``Sandbox.unavailable_reason`` says why and
``run`` raises ``SandboxUnavailable``: code execution is refused, never run unconfined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from autogpt_workers.errors import CommandError

INIT_SCRIPT = Path(__file__).with_name("sandbox_init.py")

# The whole environment a sandboxed program sees.
SANDBOX_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONIOENCODING": "utf-8",
}

# Host paths shown read-only inside (symlinks are copied as symlinks; missing ones are skipped).
READ_ONLY_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/alternatives",
                   "/etc/ld.so.cache", "/etc/localtime")

SANDBOX_WORKDIR = "/workspace"
STOP_POLL_S = 0.2  # how often a running program checks whether it should be stopped early

# Asked while a program runs: a reason to end it now (e.g. "the task was cancelled"), or None to go on.
StopProbe = Callable[[], str | None]
_SIGNAL_NAMES = {signal.SIGXCPU: "SIGXCPU", signal.SIGXFSZ: "SIGXFSZ", signal.SIGKILL: "SIGKILL",
                 signal.SIGSEGV: "SIGSEGV", signal.SIGABRT: "SIGABRT", signal.SIGTERM: "SIGTERM"}


class SandboxUnavailable(CommandError):
    """This worker cannot confine executed code, so it refuses to run any."""


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 10
    wall_seconds: float = 30.0
    memory_bytes: int = 512 * 2**20  # address space per process
    file_size_bytes: int = 16 * 2**20
    max_processes: int = 32
    max_open_files: int = 256
    tmp_bytes: int = 64 * 2**20
    output_bytes: int = 64 * 2**10

    def describe(self) -> str:
        return (
            f"CPU {self.cpu_seconds} s, wall {self.wall_seconds:g} s, memory {_mib(self.memory_bytes)} per process, "
            f"files {_mib(self.file_size_bytes)}, {self.max_processes} processes, no network"
        )


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    exit_code: int | None  # None: killed by a signal or by the wall-clock limit
    signal: int | None
    timed_out: bool
    output: str  # bounded; a note marks what was dropped
    output_bytes: int  # how much the program wrote in all
    duration_s: float
    limits: SandboxLimits
    stopped: str | None = None  # ended early on request (e.g. the task was cancelled): why

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.stopped is None

    def summary(self) -> str:
        """One line saying how the program ended, naming the limit it hit if it hit one."""
        lim = self.limits
        if self.stopped is not None:
            return f"stopped early: {self.stopped}"
        if self.timed_out:
            return f"stopped: the wall-clock limit of {lim.wall_seconds:g} s was exceeded"
        if self.signal is not None:
            name = _SIGNAL_NAMES.get(signal.Signals(self.signal), f"signal {self.signal}")
            why = {
                signal.SIGXCPU: f"the CPU time limit of {lim.cpu_seconds} s was exceeded",
                signal.SIGXFSZ: f"a file grew past the file size limit of {_mib(lim.file_size_bytes)}",
                signal.SIGKILL: f"killed (CPU hard limit of {lim.cpu_seconds + 1} s, or out of memory)",
                signal.SIGSEGV: f"crashed (possibly out of memory: the limit is {_mib(lim.memory_bytes)})",
            }.get(signal.Signals(self.signal), "killed")
            return f"killed by {name}: {why}"
        return f"exit code {self.exit_code}"


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


class UidPool:
    """Hands out uids ``base .. base+size-1``, one per concurrent run on this host, by ``flock`` on lock files.

    A lock is released by the kernel when its holder dies, so a crashed worker leaks nothing.
    """

    def __init__(self, lock_dir: Path, base: int, size: int) -> None:
        self.lock_dir = lock_dir
        self.base = base
        self.size = size

    @contextlib.contextmanager
    def lease(self) -> Iterator[int]:
        self.lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        start = random.randrange(self.size)
        for offset in range(self.size):
            uid = self.base + (start + offset) % self.size
            fd = os.open(self.lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)
            return
        raise CommandError(f"all {self.size} sandbox uids on this host are in use; try again later")


class Sandbox:
    """Runs programs confined to a workspace (see the module docstring). One instance per worker process."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        *,
        runtime_dir: Path | None = None,
        uid_base: int = 200_000,
        uid_count: int = 1024,
        read_only_paths: tuple[str, ...] = READ_ONLY_PATHS,
    ) -> None:
        self.limits = limits or SandboxLimits()
        self.runtime_dir = runtime_dir or Path(tempfile.gettempdir()) / "autogpt-sandbox"
        self.uids = UidPool(self.runtime_dir / "uids", uid_base, uid_count)
        self.read_only_paths = read_only_paths
        self._probe_lock = threading.Lock()
        self._probed = False
        self._unavailable: str | None = None

    def unavailable_reason(self) -> str | None:
        """``None`` if this host can confine code; else why not. Checked once (by running ``true``), then cached."""
        with self._probe_lock:
            if not self._probed:
                self._unavailable = self._probe()
                self._probed = True
            return self._unavailable

    def run(
        self,
        argv: list[str],
        workspace: Path,
        files: Mapping[str, str] | None = None,
        should_stop: StopProbe | None = None,
    ) -> SandboxResult:
        """Run ``argv`` (looked up on the sandbox's PATH) in ``workspace``, mounted at ``/workspace``.

        ``files`` are written to the sandbox's ``/tmp`` first (e.g. the script to run). A program that fails,
        crashes or hits a limit is a result, not an exception; ``SandboxUnavailable`` means nothing ran.
        ``should_stop`` is polled while the program runs (every ``STOP_POLL_S``): when it returns a reason, the run
        is ended at once (everything in it killed) and the result says ``stopped``.
        """
        reason = self.unavailable_reason()
        if reason is not None:
            raise SandboxUnavailable(f"code execution is disabled on this worker: {reason}")
        return self._run(argv, workspace, dict(files or {}), should_stop)

    # -- internals -------------------------------------------------------------------------------------------------

    def _probe(self) -> str | None:
        if not sys.platform.startswith("linux"):
            return "the sandbox needs Linux namespaces"
        if os.geteuid() != 0:
            return "the worker does not run as root, so it cannot create namespaces or switch to a sandbox uid"
        try:
            with tempfile.TemporaryDirectory(prefix="probe-", dir=self._dir("probe")) as tmp:
                result = self._run(["true"], Path(tmp), {})
        except CommandError as exc:
            return str(exc)
        except OSError as exc:  # no capability to chown the workspace to a sandbox uid, an unwritable runtime dir
            return f"the sandbox could not be set up: {exc}"
        if not result.ok:
            return f"a trial run failed ({result.summary()}): {result.output.strip()[:300]}"
        return None

    def _dir(self, name: str) -> Path:
        path = self.runtime_dir / name
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def _run(
        self, argv: list[str], workspace: Path, files: dict[str, str], should_stop: StopProbe | None = None
    ) -> SandboxResult:
        workspace = workspace.resolve()
        if not workspace.is_dir():
            raise CommandError(f"workspace {workspace} does not exist")
        with self.uids.lease() as uid:
            _chown_tree(workspace, uid, uid)
            root = Path(tempfile.mkdtemp(prefix="root-", dir=self._dir("roots")))
            try:
                return self._spawn(argv, workspace, files, uid, root, should_stop)
            finally:
                _chown_tree(workspace, os.geteuid(), os.getegid())
                with contextlib.suppress(OSError):
                    root.rmdir()

    def _spawn(
        self,
        argv: list[str],
        workspace: Path,
        files: dict[str, str],
        uid: int,
        root: Path,
        should_stop: StopProbe | None = None,
    ) -> SandboxResult:
        limits = self.limits
        status_r, status_w = os.pipe()
        spec = {
            "argv": argv,
            "env": dict(SANDBOX_ENV),
            "files": files,
            "workspace": str(workspace),
            "root": str(root),
            "read_only": list(self.read_only_paths),
            "uid": uid,
            "gid": uid,
            "tmp_bytes": limits.tmp_bytes,
            "status_fd": status_w,
            "limits": dataclasses.asdict(limits),
        }
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(INIT_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w,),
                env={},
                cwd="/",
                start_new_session=True,
            )
        finally:
            os.close(status_w)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # one line of spec; stdin then stays open as a lifeline: if this process dies, the sandbox is killed
            proc.stdin.write(json.dumps(spec).encode() + b"\n")
            proc.stdin.flush()
            capture = _Capture(limits.output_bytes)
            timed_out = not capture.drain(proc.stdout, started + limits.wall_seconds, should_stop)
            stopped = capture.stopped
            if stopped is not None:
                timed_out = False
                _stop(proc, uid)
                capture.drain(proc.stdout, time.monotonic() + 5)
            elif timed_out:
                _stop(proc, uid)
                capture.drain(proc.stdout, time.monotonic() + 5)
            proc.wait()
        except BrokenPipeError:
            stopped = None
            capture = _Capture(limits.output_bytes)
            capture.drain(proc.stdout, time.monotonic() + 5)
            proc.wait()
            timed_out = False
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.stdout.close()
            if proc.poll() is None:
                _stop(proc, uid)
            with os.fdopen(status_r, "rb") as f:
                raw_status = f.read()
        duration = time.monotonic() - started
        status = json.loads(raw_status) if raw_status.strip() else {}
        if "setup_error" in status:
            raise SandboxUnavailable(f"the sandbox could not be set up: {status['setup_error']}")
        if not status and not timed_out and stopped is None:
            raise SandboxUnavailable(
                f"the sandbox ended without a status (exit {proc.returncode}): {capture.text().strip()[:300]}"
            )
        return SandboxResult(
            exit_code=None if timed_out or stopped else status.get("exit_code"),
            signal=None if timed_out or stopped else status.get("signal"),
            timed_out=timed_out,
            stopped=stopped,
            output=capture.text(),
            output_bytes=capture.total,
            duration_s=duration,
            limits=limits,
        )


def _stop(proc: subprocess.Popen[bytes], uid: int) -> None:
    """End a run early and return only once nothing of it is left.

    Closing stdin (the lifeline) makes the outer process SIGKILL the namespace's PID 1 and wait for it, and PID 1's
    exit waits until the kernel has killed and reaped everything else in the namespace. Should the outer process
    not end, it is killed (PID 1 follows through PDEATHSIG) and we wait until no process of the run's uid is left,
    so the uid is never handed to the next run while its old processes still count against ``RLIMIT_NPROC``.
    """
    with contextlib.suppress(OSError):
        if proc.stdin is not None:
            proc.stdin.close()
    try:
        proc.wait(timeout=10)
        return
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while _uid_has_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _uid_has_processes(uid: int) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    return True
    return False


class _Capture:
    """Keeps the head and the tail of a stream, counts the rest."""

    def __init__(self, bound: int) -> None:
        self.head_limit = bound * 3 // 4
        self.tail_limit = bound - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0
        self.stopped: str | None = None

    def drain(self, stream: object, deadline: float, should_stop: StopProbe | None = None) -> bool:
        """Read until EOF (True) or the deadline (False); or until ``should_stop`` gives a reason (False, and the
        reason is kept in ``stopped``)."""
        fd = stream.fileno()  # type: ignore[attr-defined]
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if should_stop is not None:
                    reason = should_stop()
                    if reason is not None:
                        self.stopped = reason
                        return False
                    left = min(left, STOP_POLL_S)
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    return True
                self._add(chunk)

    def _add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        if dropped <= 0:
            return head + tail
        return f"{head}\n[... {dropped} bytes of output omitted ...]\n{tail}"


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give the workspace to ``uid`` (never following symlinks) and strip set-uid/set-gid bits on the way."""
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            path = directory if name is None else os.path.join(directory, name)
            try:
                st = os.lstat(path)
                os.chown(path, uid, gid, follow_symlinks=False)
                if not os.path.islink(path) and st.st_mode & 0o6000:
                    os.chmod(path, st.st_mode & 0o1777)
            except FileNotFoundError:
                continue
