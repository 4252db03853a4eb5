"""A lean HTTP/1.1 transport under the openai client: kept-alive sockets, replies parsed by httptools (llhttp, C).

The openai client stays what calls the LLM (its request building, its errors); only the layer under ``httpx2``
changes. In the think worker's py-spy profile, httpx's send path (its transport: httpcore and h11, in Python) was
about half of an LLM call's samples: writing the request through h11's state machine, reading the reply event by
event, and the body as a stream of chunks. Here a request is one ``sendall`` and the reply is fed to llhttp as it
arrives, then handed to httpx whole (content decoding, gzip included, stays httpx's).

Semantics kept from httpcore's pool: at most ``max_connections`` requests at once (a caller waits up to the pool
timeout, then ``PoolTimeout``), idle connections kept for ``keepalive_expiry_s`` and dropped when the server has
closed them (or sent anything unasked) while idle, no request ever retried here (an LLM call costs money: the
caller's retry policy decides), socket errors raised as httpx's ``Connect``/``Read``/``Write`` errors and
timeouts, so the openai client turns them into ``APIConnectionError``/``APITimeoutError`` as before.

Not here: HTTP/2, proxies (``make_client`` keeps httpx's own transport when a proxy is configured in the
environment), streamed replies (a body is read whole: chat completions without ``stream=True``), ``HEAD`` requests
(refused: their replies announce a body they do not carry), and 1xx interim replies (no ``Expect: 100-continue`` is
sent; a ``103 Early Hints`` would be taken for the reply).
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from contextlib import suppress
from typing import Any

import httptools
import httpx2
from gevent.monkey import get_original

# the real ``poll`` even under gevent's patch: a zero-timeout poll never blocks, and gevent's costs a watcher per call
_poll = get_original("select", "poll")

DEFAULT_PORTS = {b"http": 80, b"https": 443}
# how long an idle connection is kept: under the 5 s after which uvicorn-based servers (vLLM, the fake LLM) close an
# idle one. At 5 s, as httpcore keeps them, a request sent on a connection the server is closing at that instant
# gets no answer, and ``OpenAIChatModel`` retries it after its backoff (0.5 s and up) as a ``connection`` retry; a
# second less leaves a second's margin for that race, at the cost of a new connection after 4 to 5 idle seconds
KEEPALIVE_EXPIRY_S = 4.0
READ_SIZE = 65536

Origin = tuple[bytes, str, int]


class _Reply:
    """httptools' callbacks: the reply's status text, headers and body as they are parsed."""

    __slots__ = ("body", "done", "headers", "headers_done", "http_version", "keep_alive", "parser", "reason", "status")

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.status = 0
        self.http_version = b"HTTP/1.1"
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.headers_done = False
        self.done = False
        self.keep_alive = False

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.headers_done = True
        assert self.parser is not None
        self.status = self.parser.get_status_code()
        self.http_version = b"HTTP/" + self.parser.get_http_version().encode("ascii")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()  # read here: the parser resets once this returns

    def ends_at_close(self) -> bool:
        """A body delimited by the server closing the connection (no length, not chunked)."""
        names = {name.lower() for name, _ in self.headers}
        return self.headers_done and b"content-length" not in names and b"transfer-encoding" not in names


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = 0.0

    def usable(self, now: float, expiry_s: float) -> bool:
        """Idle long enough that the server may drop it, or readable (closed, or bytes nobody asked for): not reused."""
        if now - self.idle_since > expiry_s:
            return False
        try:
            poller = _poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def exchange(self, head: bytes, body: bytes, timeouts: dict[str, Any]) -> tuple[int, _Reply, bool]:
        """Send one request, read its whole reply: (status, reply, whether the connection can be reused)."""
        sock = self.sock
        try:
            sock.settimeout(timeouts.get("write"))
            sock.sendall(head + body)
        except TimeoutError as exc:
            raise httpx2.WriteTimeout(f"writing the request timed out: {exc}") from exc
        except OSError as exc:
            raise httpx2.WriteError(f"writing the request failed: {exc}") from exc
        reply = _Reply()
        parser = reply.parser
        assert parser is not None
        sock.settimeout(timeouts.get("read"))
        closed = False
        while not reply.done:
            try:
                data = sock.recv(READ_SIZE)
            except TimeoutError as exc:
                raise httpx2.ReadTimeout(f"reading the reply timed out: {exc}") from exc
            except OSError as exc:
                raise httpx2.ReadError(f"reading the reply failed: {exc}") from exc
            if not data:
                closed = True
                if reply.ends_at_close():
                    break
                if not reply.headers_done:
                    raise httpx2.RemoteProtocolError("Server disconnected without sending a response.")
                raise httpx2.RemoteProtocolError("Server disconnected in the middle of its response.")
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                raise httpx2.RemoteProtocolError("the server asked for a protocol upgrade") from exc
            except httptools.HttpParserError as exc:
                raise httpx2.RemoteProtocolError(f"malformed HTTP reply: {exc}") from exc
        reply.parser = None  # the parser holds the reply: no cycle left for the garbage collector
        return reply.status, reply, not closed and reply.keep_alive

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


class LeanTransport(httpx2.BaseTransport):
    """HTTP/1.1 with kept-alive connections, thread- and greenlet-safe; see the module docstring."""

    def __init__(
        self,
        max_connections: int,
        *,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.keepalive_expiry_s = keepalive_expiry_s
        self._ssl_context = ssl_context
        self._slots = threading.BoundedSemaphore(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        if not self._slots.acquire(timeout=timeouts.get("pool")):
            raise httpx2.PoolTimeout(f"all {self.max_connections} connections to the LLM stayed busy")
        try:
            return self._send(request, timeouts)
        finally:
            self._slots.release()

    def _send(self, request: httpx2.Request, timeouts: dict[str, Any]) -> httpx2.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx2.UnsupportedProtocol(f"no transport for {scheme.decode(errors='replace')!r} URLs")
        if request.method == "HEAD":
            raise httpx2.UnsupportedProtocol("the LLM transport sends no HEAD requests (httpx's transport does)")
        origin = (scheme, url.host, url.port or DEFAULT_PORTS[scheme])
        head, body = _encode(request)
        connection = self._take(origin) or self._connect(origin, timeouts.get("connect"))
        try:
            status, reply, reusable = connection.exchange(head, body, timeouts)
        except BaseException:
            connection.close()
            raise
        if reusable:
            self._give_back(origin, connection)
        else:
            connection.close()
        return httpx2.Response(
            status,
            headers=reply.headers,
            stream=httpx2.ByteStream(b"".join(reply.body)),
            extensions={"http_version": reply.http_version, "reason_phrase": reply.reason},
        )

    def _take(self, origin: Origin) -> _Connection | None:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                connection = idle.pop() if idle else None
            if connection is None:
                return None
            if connection.usable(now, self.keepalive_expiry_s):
                return connection
            connection.close()

    def _give_back(self, origin: Origin, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            if not self._closed:
                self._idle.setdefault(origin, []).append(connection)
                return
        connection.close()

    def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise httpx2.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OSError as exc:
            raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == b"https":
                sock = self._tls().wrap_socket(sock, server_hostname=host)
        except TimeoutError as exc:
            sock.close()
            raise httpx2.ConnectTimeout(f"the TLS handshake with {host}:{port} timed out") from exc
        except OSError as exc:  # ssl.SSLError included
            sock.close()
            raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Connection(sock)

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = httpx2.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _encode(request: httpx2.Request) -> tuple[bytes, bytes]:
    """The request's head and body as they go on the wire (httpx has set Host and the body's length)."""
    body = request.read()
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        lines.append(b"%s: %s\r\n" % (name, value))
        if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    lines.append(b"\r\n")
    if chunked:  # a body httpx could not measure: sent as one chunk
        body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return b"".join(lines), body
