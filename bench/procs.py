"""Processes the bench starts (each in its own session, logging to a file) and their CPU and RSS from /proc.

A process started with ``start_new_session`` leads a session whose id is its pid; its children (a prefork
worker's pool) share that session, so "the process and its children" is every pid whose session is that id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, ``state``)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rindex(")") + 2 :].split()


def session_pids(sid: int) -> list[int]:
    """Every live pid in session ``sid`` (the leader and all its descendants that stayed in it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (and of its children it has waited for), in seconds; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[21]) * PAGE_SIZE if fields is not None else 0


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, since boot (from /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # up to steal; guest time is already in user
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


class CpuMeter:
    """CPU seconds used by a set of process trees between ``start()`` and ``stop()``, and the host's busy share."""

    def __init__(self, sids: Iterable[int]) -> None:
        self.sids = list(sids)
        self._before: dict[int, float] = {}
        self._host_before = (0.0, 0.0)
        self.seconds = 0.0
        self.host_busy = 0.0  # fraction of all cores busy during the interval (anyone's work)

    def _snapshot(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for sid in self.sids for pid in session_pids(sid)}

    def start(self) -> CpuMeter:
        self._before = self._snapshot()
        self._host_before = host_cpu()
        return self

    def stop(self) -> float:
        after = self._snapshot()
        busy, total = host_cpu()
        self.seconds = sum(v - self._before.get(pid, 0.0) for pid, v in after.items())
        span = total - self._host_before[1]
        self.host_busy = (busy - self._host_before[0]) / span if span > 0 else 0.0
        return self.seconds


class Proc:
    """A child process in its own session, stdout and stderr appended to ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was not started"
        return self.popen.pid

    def start(self) -> Proc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in session_pids(self.pid)) if self.alive() else 0.0

    def rss_bytes(self) -> int:
        return sum(rss_bytes(pid) for pid in session_pids(self.pid)) if self.alive() else 0

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the session (a Celery worker's warm shutdown), SIGKILL what is left after ``grace_s``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # children that outlived their leader (a prefork pool after a crash)
        for pid in session_pids(self.popen.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.1, what: str = "it") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
