"""``/metrics`` for a process group in Prometheus's multiprocess mode.

A prefork worker's children, a thread-pool worker, the reaper and the autoscaler's worker children all write their
samples to memory-mapped files under one directory per process group (``PROMETHEUS_MULTIPROC_DIR``); the group's
main process serves them merged (``MultiProcessCollector``) on one port.

Order matters: ``prometheus_client`` decides at import time whether to write files, so ``use_multiprocess_dir``
runs before anything imports it (``autogpt_workers.metrics`` does). A directory is wiped when its group starts
(stale files from a previous run would add up); a directory inherited from a parent (the autoscaler) is kept.
Files of processes that died are marked dead when their child exits and, for those killed without a goodbye,
swept at each scrape.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def use_multiprocess_dir(role: str, base: Path) -> Path:
    """The process group's sample directory, exported as ``PROMETHEUS_MULTIPROC_DIR`` for its children.

    An inherited ``PROMETHEUS_MULTIPROC_DIR`` (a parent process serves it) is used as it is; otherwise
    ``base/<role>-<pid>`` is created empty.
    """
    inherited = os.environ.get(MULTIPROC_ENV)
    if inherited:
        path = Path(inherited)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = (base / f"{role}-{os.getpid()}").resolve()
    fresh_directory(path)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def fresh_directory(path: Path) -> None:
    """Create ``path`` empty (its previous samples belong to processes that no longer exist)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Drop a finished process's live gauges (its counters stay: totals must not go down)."""
    from prometheus_client import multiprocess

    directory = path or os.environ.get(MULTIPROC_ENV)
    if directory:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_processes(path: str) -> list[int]:
    """Mark dead every process that left live-gauge files but no longer runs (killed, never said goodbye)."""
    dead = set()
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(path):
            m = _LIVE_FILE.match(name)
            if m and not _alive(int(m.group(1))):
                dead.add(int(m.group(1)))
    for pid in dead:
        mark_process_dead(pid, path)
    return sorted(dead)


class _SweepingCollector:
    """``MultiProcessCollector`` that first forgets the live gauges of processes that died."""

    def __init__(self, path: str) -> None:
        from prometheus_client import multiprocess

        self.path = path
        self._inner = multiprocess.MultiProcessCollector(None, path)

    def collect(self) -> Iterator[Any]:
        sweep_dead_processes(self.path)
        yield from self._inner.collect()


class MetricsServer:
    """The HTTP server of a process group's ``/metrics`` (a daemon thread)."""

    def __init__(self, port: int, host: str, collectors: Iterable[Collector] = ()) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        path = os.environ.get(MULTIPROC_ENV)
        if path:
            registry.register(_SweepingCollector(path))
        else:
            from prometheus_client import REGISTRY

            registry = REGISTRY
        for collector in collectors:
            registry.register(collector)
        self.registry = registry
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


_lock = threading.Lock()


def serve(port: int, host: str, collectors: Iterable[Collector] = ()) -> MetricsServer:
    """Serve this process group's samples (plus ``collectors``) on ``host:port``; raises ``OSError`` if taken."""
    with _lock:
        return MetricsServer(port, host, collectors)


def start_group_metrics(
    role: str,
    metrics_dir: Path,
    port: int,
    host: str,
    collectors: Callable[[], Iterable[Collector]] | None = None,
) -> MetricsServer | None:
    """Choose this process group's sample directory, then serve it on ``port`` unless ``port`` is 0.

    Call it first thing in a process's main, before anything imports ``prometheus_client``; ``collectors``
    builds extra collectors after that point. Raises ``OSError`` when the port is taken.
    """
    use_multiprocess_dir(role, metrics_dir)
    if not port:
        return None
    return serve(port, host, collectors() if collectors is not None else ())
