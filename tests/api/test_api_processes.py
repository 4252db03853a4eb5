"""``autogpt-workers api --workers 2``: a listening socket per process on one port (``SO_REUSEPORT``), so that new
connections spread over the processes (uvicorn's shared socket let one process accept a whole burst); the parent
refuses a port already taken, replaces a process that dies, and stops them all on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

from autogpt_workers.api_processes import STARTUP_S
from tests.api.conftest import wait_for
from tests.conftest import REPO_ROOT, Proc, free_port, wait_http


def _sockets(port: int, state: str) -> Counter[int]:
    """How many of the server's sockets on ``port`` in ``state`` each process holds (``ss``)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", state, f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return Counter(int(pid) for pid in re.findall(r"pid=(\d+)", out))


def _listening(port: int, processes: int) -> Counter[int] | None:
    found = _sockets(port, "listening")
    return found if len(found) == processes else None


def _get_health(conn: socket.socket) -> None:
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert conn.recv(4096).startswith(b"HTTP/1.1 200")


def test_each_process_listens_on_its_own_socket_and_new_connections_spread(migrated: None) -> None:
    port = free_port()
    env = dict(os.environ)
    api = Proc("api-workers", ["api", "--port", str(port), "--workers", "2"], env).start()
    assert api.popen is not None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        listeners = wait_for(lambda: _listening(port, 2), 30, "two listening processes")
        started = time.monotonic()  # the processes were started before this (not before the parent's own start-up)
        assert api.popen.pid not in listeners  # the parent only supervises
        assert all(count == 1 for count in listeners.values())

        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
        try:
            for conn in clients:  # each one answered, and kept alive
                _get_health(conn)
            held = _sockets(port, "established")
            # every process took some of the 40 (all on one: a chance of 2 in 2**40)
            assert set(held) == set(listeners) and sum(held.values()) == 40, held
        finally:
            for conn in clients:
                conn.close()

        taken = subprocess.run(
            [sys.executable, "-m", "autogpt_workers.cli", "api", "--port", str(port), "--workers", "2"],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert taken.returncode == 2 and "cannot listen on" in taken.stderr, taken.stderr

        time.sleep(max(0.0, STARTUP_S + 0.5 - (time.monotonic() - started)))  # past the start-up window
        victim = next(iter(listeners))
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(
            lambda: (ls := _listening(port, 2)) and victim not in ls and ls, 30, "a replacement process"
        )
        assert len(set(replaced) & set(listeners)) == 1
        wait_http(f"http://127.0.0.1:{port}/healthz")
    finally:
        api.stop()
    assert api.popen.returncode == 0
    assert not _sockets(port, "listening")  # every process gone
