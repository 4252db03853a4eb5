"""The sandbox's child side: run as a script (``python -I -S sandbox_init.py``), never imported by the worker.

``sandbox.Sandbox`` starts this file as a fresh, single-threaded interpreter and writes a JSON spec on its stdin.
It does the privileged set-up a ``preexec_fn`` would otherwise do inside a forked copy of the (multi-threaded)
worker, where Python code between fork and exec can deadlock on a lock another thread held:

1. outer process (root, host namespaces): ``unshare`` new mount, network, PID, IPC and UTS namespaces, fork the
   namespace's init and wait for it; kill it if the worker dies (stdin, kept open by the worker, reaches EOF);
2. init (PID 1 of the new PID namespace, still root): die with the outer process (``PR_SET_PDEATHSIG``), build a
   private root on a tmpfs (read-only ``/usr`` and friends, the task workspace read-write at ``/workspace``, a
   size-limited ``/tmp``, a minimal ``/dev``, a fresh ``/proc``; no ``/etc/passwd``, no ``/home``, no ``/root``,
   no host ``/tmp``, no unix sockets), ``chroot`` into it, fork the program, reap, and report its status;
3. program: resource limits (CPU, address space, file size, processes, open files, no core dumps), no groups,
   the run's unprivileged uid/gid, ``PR_SET_NO_NEW_PRIVS``, the scrubbed environment, ``exec``.

When PID 1 exits the kernel kills every process left in the namespace; when the outer process is killed (the
worker's wall-clock limit), PID 1 gets SIGKILL and the same happens. Only the standard library is used here.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import stat
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

SETUP_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def _bind(source: str, target: str, *, writable: bool) -> None:
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (0 if writable else MS_RDONLY)
    _mount(None, target, None, flags)


def _place(source: str, target: str, *, writable: bool = False) -> None:
    """Make ``source`` (a host path) appear at ``target``: a symlink is copied, a file or directory is bound."""
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
    elif os.path.exists(source) and stat.S_ISCHR(os.stat(source).st_mode):  # /dev/null and friends
        with open(target, "w"):
            pass
        _mount(source, target, None, MS_BIND)
    elif os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
        _bind(source, target, writable=writable)
    elif os.path.exists(source):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w"):
            pass
        _bind(source, target, writable=writable)


def _build_root(spec: dict[str, Any]) -> None:
    """Mount the sandbox's file system under ``spec['root']`` (in our private mount namespace) and chroot."""
    root = spec["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in spec["read_only"]:
        _place(path, root + path)
    workspace = root + "/workspace"
    os.mkdir(workspace)
    _bind(spec["workspace"], workspace, writable=True)
    tmp = root + "/tmp"
    os.mkdir(tmp)
    _mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmp_bytes']},mode=1777")
    dev = root + "/dev"
    os.mkdir(dev)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for name in ("null", "zero", "random", "urandom"):
        _place("/dev/" + name, dev + "/" + name)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev + "/" + name)
    proc = root + "/proc"
    os.mkdir(proc)
    _mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, content in spec["files"].items():
        path = os.path.join(tmp, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(path, 0o644)
    _mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)  # nothing new at the top level
    os.chroot(root)
    os.chdir("/workspace")


def _exec_program(spec: dict[str, Any]) -> None:
    """In the program's process: limits, unprivileged credentials, exec. Never returns."""
    try:
        limits = spec["limits"]
        for name, value in (
            ("RLIMIT_CPU", (limits["cpu_seconds"], limits["cpu_seconds"] + 1)),
            ("RLIMIT_AS", (limits["memory_bytes"],) * 2),
            ("RLIMIT_FSIZE", (limits["file_size_bytes"],) * 2),
            ("RLIMIT_NPROC", (limits["max_processes"],) * 2),
            ("RLIMIT_NOFILE", (limits["max_open_files"],) * 2),
            ("RLIMIT_CORE", (0, 0)),
        ):
            resource.setrlimit(getattr(resource, name), value)
        os.setgroups([])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])  # after this no capability is left, so nothing below can be undone
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        os.umask(0o022)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        argv = spec["argv"]
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:
        os.write(2, f"sandbox: cannot run {spec['argv'][0]!r}: {exc.strerror or exc}\n".encode())
        os._exit(127)
    os._exit(127)  # not reached


def _init(spec: dict[str, Any], status_fd: int, alive_fd: int) -> None:
    """PID 1 of the sandbox's PID namespace."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        if not os.read(alive_fd, 1):  # EOF: the outer process died before the line above
            os._exit(SETUP_FAILED)
    except BlockingIOError:  # the outer process still holds the write end: alive
        pass
    os.close(alive_fd)
    status: dict[str, Any]
    try:
        _check(_libc.sethostname(b"sandbox", 7), "sethostname")
        _build_root(spec)
    except OSError as exc:
        status = {"setup_error": str(exc)}
    else:
        program = os.fork()
        if program == 0:
            os.close(status_fd)
            _exec_program(spec)
        status = _reap(program)
    os.write(status_fd, json.dumps(status).encode())
    os._exit(SETUP_FAILED if "setup_error" in status else 0)  # the kernel now kills what is left in here


def _reap(program: int) -> dict[str, Any]:
    """Reap every child (PID 1 inherits orphans) until the program itself exits; return its status."""
    while True:
        try:
            pid, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            return {"exit_code": None, "signal": None}
        except InterruptedError:
            continue
        if pid != program:
            continue
        if os.WIFSIGNALED(wait_status):
            return {"exit_code": None, "signal": os.WTERMSIG(wait_status)}
        return {"exit_code": os.WEXITSTATUS(wait_status), "signal": None}


def _wait(child: int) -> int:
    """Wait for init; kill it if stdin (the worker's lifeline) reaches EOF first. Returns the wait status."""
    try:
        pidfd: int | None = os.pidfd_open(child)
    except (AttributeError, OSError):
        pidfd = None
    watched = [0] if pidfd is None else [0, pidfd]
    lifeline = True
    while True:
        pid, wait_status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            return wait_status
        if not lifeline:
            return os.waitpid(child, 0)[1]
        ready, _, _ = select.select(watched, [], [], 0.5 if pidfd is None else None)
        if 0 in ready and not os.read(0, 4096):  # the worker is gone: take the sandbox down with us
            os.kill(child, signal.SIGKILL)
            lifeline = False


def main() -> None:
    spec = json.loads(sys.stdin.buffer.readline())
    status_fd = int(spec["status_fd"])
    try:
        _check(
            _libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare"
        )
    except OSError as exc:
        os.write(status_fd, json.dumps({"setup_error": str(exc)}).encode())
        os._exit(SETUP_FAILED)
    alive_r, alive_w = os.pipe()
    os.set_blocking(alive_r, False)
    child = os.fork()
    if child == 0:
        os.close(alive_w)
        _init(spec, status_fd, alive_r)
    os.close(alive_r)
    os.close(status_fd)
    wait_status = _wait(child)
    os._exit(os.waitstatus_to_exitcode(wait_status) if os.WIFEXITED(wait_status) else SETUP_FAILED)


if __name__ == "__main__":
    main()
