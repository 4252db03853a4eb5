"""``autogpt-workers api --workers N``: N uvicorn processes on one port, each with a listening socket of its own
(``SO_REUSEPORT``), so that the kernel spreads new connections over them.

uvicorn's own ``--workers`` binds one socket in its parent and shares it with every worker: whichever worker wakes
first accepts all the connections waiting (libuv accepts until the queue is empty), so a burst of new keep-alive
clients can land on one process, which then works on one core while the others idle until the clients reconnect.
``make bench``'s submit figure saw it in one run of four: all 32 clients on one of the two API processes, 617 tasks/s
with the host 76% busy, against 834-870 tasks/s at 95-96% when they were split (``ss -tnp`` during the runs). With a
socket per process the kernel picks one for each new connection by its address hash.

The parent only supervises: it starts the processes, replaces one that exits (unless it failed while starting,
which would only repeat: then everything stops, exit 1), and on SIGTERM or SIGINT passes SIGTERM on (each uvicorn
finishes its requests) and waits ``grace_s`` before killing what is left.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import MutableSequence
from multiprocessing.context import SpawnProcess
from typing import Any

import structlog

from autogpt_workers.metrics_server import mark_process_dead

log = structlog.get_logger(__name__)

STARTUP_S = 5.0  # a process that exits sooner than this after its start failed to start


class PortTaken(RuntimeError):
    """Something already listens on the API's port."""


def listening_socket(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to ``host:port``; with ``reuse_port`` it shares the port with the other processes' sockets
    (the kernel balances connections over them)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on: ``SO_REUSEPORT`` would let a second instance of this server (the
    same user's) bind beside the first and quietly take half of its connections."""
    try:
        listening_socket(host, port, reuse_port=False).close()
    except OSError as exc:
        raise PortTaken(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _serve_one(config: dict[str, Any], index: int = 0, counts: MutableSequence[int] | None = None) -> None:
    """One API process: its own socket on the shared port, then uvicorn on it. With ``counts`` (one entry per
    process, shared) it keeps its share of the connections even (``connection_share``)."""
    import uvicorn

    from autogpt_workers import connection_share

    sock = listening_socket(config["host"], config["port"])
    server = uvicorn.Server(uvicorn.Config(**config))
    if counts is not None and len(counts) > 1:
        share = connection_share.ConnectionShare(counts, index, lambda: len(server.server_state.connections))
        share.keep_published()
        connection_share.CURRENT = share
    server.run(sockets=[sock])


def serve(config: dict[str, Any], workers: int, grace_s: float = 30.0) -> int:
    """Run ``workers`` processes of ``uvicorn.Config(**config)`` until SIGTERM or SIGINT; the exit code."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if not config.get("port"):
        raise ValueError("several API processes need a fixed port (not 0)")
    check_port_free(config["host"], config["port"])
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: nothing of the parent's state
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    started: list[tuple[SpawnProcess, float]] = []
    counts = context.Array("i", workers, lock=False)  # each process's connections (``connection_share``)

    def start(index: int) -> tuple[SpawnProcess, float]:
        counts[index] = 0  # a replaced process starts with none
        process = context.Process(target=_serve_one, args=(config, index, counts), name=f"autogpt-api-{index}")
        process.start()
        log.info("api_process_started", index=index, pid=process.pid)
        return process, time.monotonic()

    code = 0
    try:
        started = [start(i) for i in range(workers)]
        while not stop.wait(0.5):
            for index, (process, at) in enumerate(started):
                if process.is_alive():
                    continue
                if time.monotonic() - at < STARTUP_S:
                    log.error("api_process_failed_to_start", index=index, exitcode=process.exitcode)
                    code = 1
                    stop.set()
                    break
                log.warning("api_process_exited", index=index, pid=process.pid, exitcode=process.exitcode)
                if process.pid is not None:
                    mark_process_dead(process.pid)  # its live gauges go (a no-op without a samples directory)
                started[index] = start(index)
    finally:
        _stop_all([process for process, _ in started], grace_s)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _stop_all(processes: list[SpawnProcess], grace_s: float) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            log.warning("api_process_killed", pid=process.pid, grace_s=grace_s)
            process.kill()
            process.join()
