"""The API served by several processes on one port, each process with a listening socket of its own.

uvicorn's ``--workers`` binds one socket in its parent and shares it among its children. A connection stays with
the child that accepted it, and a child woken by a burst of new connections accepts every one it finds, so clients
that keep their connections alive can all land on one child while the others idle: the bench's 32 submit clients
fell 1 / 31 in one run (568 tasks/s) and 20 / 12 in the next (800 tasks/s). Here every child binds its own socket
to the address with ``SO_REUSEPORT`` (Linux 3.9+), and the kernel hands each new connection to one of them by a hash
of the connection's addresses.

The parent supervises: it starts the children (spawned, as uvicorn does), starts a new one in place of one that
dies, stops them all on SIGTERM or SIGINT (each finishes its requests: uvicorn's graceful shutdown), and gives up
with uvicorn's start-up failure code if a child cannot start (the app does not load, the address is taken). It keeps
a socket bound to the address, not listening, for its whole life: the port stays reserved between a child's death
and its replacement, and port 0 is resolved once for all the children.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("uvicorn.error")

STARTUP_FAILURE = 3  # uvicorn's exit code for a server that never started


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` that this user's other processes may bind too (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_one(options: Mapping[str, Any]) -> None:
    """A child: its own listening socket on the address, one uvicorn server on it (``options``: uvicorn.Config's)."""
    import uvicorn

    config = uvicorn.Config(**options)
    try:
        sock = shared_port_socket(config.host, config.port)
    except OSError as exc:
        print(f"autogpt-workers api: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(STARTUP_FAILURE)


def serve(workers: int, options: Mapping[str, Any]) -> int:
    """Run ``workers`` children on ``options["host"]``:``options["port"]`` until SIGTERM or SIGINT; the exit code."""
    reserved = shared_port_socket(options["host"], options["port"])  # OSError: the address is taken
    options = {**options, "port": reserved.getsockname()[1], "workers": 1}
    spawn = multiprocessing.get_context("spawn")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def start() -> BaseProcess:
        child = spawn.Process(target=serve_one, args=(options,), name="autogpt-api")
        child.start()
        log.info("Started child process [%s]", child.pid)
        return child

    children = [start() for _ in range(workers)]
    code = 0
    try:
        while not stop.wait(0.5):
            for index, child in enumerate(children):
                if child.exitcode is None or stop.is_set():
                    continue
                if child.exitcode == STARTUP_FAILURE:
                    log.error("Child process [%s] failed to start, stopping the parent process.", child.pid)
                    code = STARTUP_FAILURE
                    stop.set()
                    break
                log.warning("Child process [%s] died (exit code %s); starting another", child.pid, child.exitcode)
                children[index] = start()
    finally:
        for child in children:
            if child.exitcode is None and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        for child in children:
            child.join()
        reserved.close()
    return code
