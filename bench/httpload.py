"""A small HTTP/1.1 load generator on asyncio streams: N keep-alive clients, each one request at a time.

Hand-written rather than httpx so that the client spends as little as possible of the 2 cores it shares with the
server it measures: a request is one write and a few reads on a kept-alive connection, no client-side models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

# (method, path, JSON body or None) for request number i
RequestFactory = Callable[[int], tuple[str, str, Any]]


@dataclasses.dataclass
class LoadResult:
    elapsed_s: float
    latencies_s: list[float]  # of the requests answered 2xx
    statuses: Counter[int]
    bodies: list[Any]  # decoded JSON of 2xx answers, when kept
    errors: list[str]
    # per client: the local port of its (last) connection and its 2xx latencies; which server process a client
    # talked to can be told from the port (``server_connections``)
    clients: list[tuple[int | None, list[float]]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _Conn:
    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.local_port: int | None = None

    async def request(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.local_port = self.writer.get_extra_info("sockname")[1]
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = 0, False, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "connection" and value == "close":
                close = True
        data = await self._chunked() if chunked else await self.reader.readexactly(length)
        if close:
            self.close()
        return status, data

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readline()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _load(
    base_url: str,
    make: RequestFactory,
    clients: int,
    duration_s: float | None,
    total: int | None,
    headers: dict[str, str],
    keep_bodies: bool,
) -> LoadResult:
    url = urlparse(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    counter = iter(range(total if total is not None else 10**12))
    result = LoadResult(0.0, [], Counter(), [], [])
    start = time.perf_counter()
    stop_at = start + duration_s if duration_s is not None else float("inf")

    async def client() -> None:
        conn = _Conn(host, port, headers)
        latencies: list[float] = []
        try:
            for i in counter:
                if time.perf_counter() >= stop_at:
                    break
                method, path, body = make(i)
                sent = time.perf_counter()
                try:
                    status, data = await conn.request(method, path, body)
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    continue
                result.statuses[status] += 1
                if 200 <= status < 300:
                    latencies.append(time.perf_counter() - sent)
                    result.latencies_s.append(latencies[-1])
                    if keep_bodies:
                        result.bodies.append(json.loads(data) if data else None)
                elif len(result.errors) < 20:
                    result.errors.append(f"HTTP {status}: {data[:200].decode(errors='replace')}")
        finally:
            result.clients.append((conn.local_port, latencies))
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed_s = time.perf_counter() - start
    return result


def load(
    base_url: str,
    make: RequestFactory,
    clients: int,
    duration_s: float | None = None,
    total: int | None = None,
    headers: dict[str, str] | None = None,
    keep_bodies: bool = False,
) -> LoadResult:
    """Run ``clients`` concurrent keep-alive clients for ``duration_s`` seconds or ``total`` requests in all."""
    if (duration_s is None) == (total is None):
        raise ValueError("give exactly one of duration_s and total")
    return asyncio.run(_load(base_url, make, clients, duration_s, total, headers or {}, keep_bodies))


def server_connections(port: int, pids: list[int]) -> dict[int, int]:
    """The established TCP connections to ``port`` on this host served by ``pids``: the client's port -> the pid
    holding the server's end (from ``/proc/net/tcp`` and ``tcp6`` and the processes' socket inodes)."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owner[int(target[8:-1])] = pid
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port and inode in owner:
                found[int(remote.rsplit(":", 1)[1], 16)] = owner[inode]
    return found
