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


def _get_health(conn: socket.socket) -> bool:
    """One health check on a kept-alive connection; False if the answer closed it (``connection_share``: a process
    holding more than its share of the connections sheds one now and then)."""
    conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:  # the head and the body may come in separate segments
        chunk = conn.recv(4096)
        assert chunk, f"connection closed mid-answer: {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += conn.recv(4096)
    return b"connection: close" not in head.lower()


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
            kept = sum(_get_health(conn) for conn in clients)  # each one answered, and kept alive unless shed
            held = wait_for(
                lambda: (h := _sockets(port, "established")) and sum(h.values()) == kept and h, 10, "the shed closed"
            )
            # every process took some of the 40 (all on one: a chance of 2 in 2**40)
            assert set(held) == set(listeners), held
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


def test_the_processes_even_out_their_share_of_kept_alive_connections(migrated: None) -> None:
    """32 kept-alive clients, placed by the kernel's hash (rarely 16 / 16: about one time in seven), asking over and
    over; a client whose answer closes its connection opens another. The split becomes even."""
    port = free_port()
    api = Proc("api-share", ["api", "--port", str(port), "--workers", "2"], dict(os.environ)).start()
    clients: list[socket.socket] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_for(lambda: _listening(port, 2), 30, "two listening processes")
        clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        shed = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for i, conn in enumerate(clients):
                if not _get_health(conn):
                    shed += 1
                    conn.close()
                    clients[i] = socket.create_connection(("127.0.0.1", port), timeout=10)
            held = _sockets(port, "established")
            if sum(held.values()) == 32 and len(held) == 2 and max(held.values()) == 16:
                break
        else:
            raise AssertionError(f"the split stayed uneven: {held}, {shed} connections shed")
        time.sleep(1.0)  # even, it stays so: nothing more is shed
        assert all(_get_health(conn) for conn in clients)
    finally:
        for conn in clients:
            conn.close()
        api.stop()
