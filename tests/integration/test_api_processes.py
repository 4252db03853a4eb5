"""``autogpt-workers api --workers N``: N processes on one port, each listening with a socket of its own
(``api_server``), so that clients keeping their connections alive are spread over them by the kernel; a child that
dies is replaced; SIGTERM stops them all.

Started from the real CLI; sockets are read from ``/proc`` (which process holds which listening or connected
socket on the port).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Proc, free_port, wait_http

LISTEN, ESTABLISHED = "0A", "01"


def _sockets_on(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets whose local port is ``port``, in ``state`` (``/proc/net/tcp``'s hex code)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def _held_by(pid: int, inodes: set[str]) -> set[str]:
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            held.add(target[8:-1])
    return held


def _servers(parent: int, port: int) -> dict[int, set[str]]:
    """The parent's children that listen on ``port``, each with the listening sockets it holds."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    listening = _sockets_on(port, LISTEN)
    held = {int(pid): _held_by(int(pid), listening) for pid in children if Path(f"/proc/{pid}").exists()}
    return {pid: inodes for pid, inodes in held.items() if inodes}


def _wait_servers(parent: int, port: int, n: int, timeout_s: float = 45) -> dict[int, set[str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        servers = _servers(parent, port)
        if len(servers) == n or time.monotonic() > deadline:
            return servers
        time.sleep(0.2)


@pytest.fixture
def api_processes(migrated) -> Iterator[tuple[Proc, int]]:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = Proc("api-processes", ["api", "--port", str(port), "--workers", "2"], dict(os.environ)).start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield proc, port
    finally:
        proc.stop()


def test_each_process_listens_with_its_own_socket_and_connections_reach_both(api_processes) -> None:  # type: ignore[no-untyped-def]
    proc, port = api_processes
    assert proc.popen is not None
    servers = _wait_servers(proc.popen.pid, port, 2)
    assert len(servers) == 2
    first, second = servers.values()
    assert len(first) == 1 and len(second) == 1 and first != second  # not one socket shared

    # 40 keep-alive clients, as the bench's submit load keeps its 32: the kernel spreads them over both sockets
    clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(40)]
    try:
        for client in clients:
            client.request("GET", "/healthz")
            assert client.getresponse().read() == b'{"status":"ok"}'
        connected = _sockets_on(port, ESTABLISHED)
        per_process = {pid: len(_held_by(pid, connected)) for pid in servers}
        assert sum(per_process.values()) == 40
        assert all(n > 0 for n in per_process.values()), per_process  # all 40 on one: a 2**-39 chance
    finally:
        for client in clients:
            client.close()


def test_a_dead_process_is_replaced_and_sigterm_stops_them_all(api_processes) -> None:  # type: ignore[no-untyped-def]
    proc, port = api_processes
    assert proc.popen is not None
    servers = _wait_servers(proc.popen.pid, port, 2)
    victim = min(servers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        servers = _servers(proc.popen.pid, port)
        if len(servers) == 2 and victim not in servers:
            break
        time.sleep(0.2)
    assert len(servers) == 2 and victim not in servers
    wait_http(f"http://127.0.0.1:{port}/healthz")

    os.kill(proc.popen.pid, signal.SIGTERM)  # the parent only, as an orchestrator would
    assert proc.popen.wait(timeout=30) == 0
    for pid in servers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens any more


def test_a_taken_port_is_a_clear_error(migrated) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = Proc("api-processes-taken", ["api", "--port", str(port), "--workers", "2"], dict(os.environ)).start()
        assert proc.popen is not None
        assert proc.popen.wait(timeout=60) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.log_path.read_text()
