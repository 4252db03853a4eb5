"""``LeanTransport`` (the LLM client's HTTP/1.1 transport) against raw local sockets that answer byte for byte:
keep-alive, the three ways a body ends, gzip, a server that hangs up, timeouts, the pool's limit, and the errors the
openai client then raises."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx2
import openai
import pytest

from autogpt_workers.llm.lean_transport import LeanTransport
from autogpt_workers.llm.openai_chat import make_client

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": 1}\r\n"

# one function per connection: it reads requests off the socket and answers as it likes
Handler = Callable[[socket.socket], None]


class RawServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn)

    def read_request(self, conn: socket.socket) -> bytes | None:
        """One request (head and a Content-Length body), or None when the client closed."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += conn.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + rest)
        return head

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer_each(server_box: list[RawServer], reply: bytes) -> Handler:
    def handler(conn: socket.socket) -> None:
        while server_box[0].read_request(conn) is not None:
            conn.sendall(reply)

    return handler


def client(max_connections: int = 4, **timeouts: float) -> httpx2.Client:
    timeout = httpx2.Timeout(timeouts.get("read", 5.0), pool=timeouts.get("pool", 5.0))
    return httpx2.Client(transport=LeanTransport(max_connections), timeout=timeout)


def test_a_kept_alive_connection_carries_every_request(serve: Callable[[Handler], RawServer]) -> None:
    box: list[RawServer] = []
    box.append(server := serve(answer_each(box, OK)))
    with client() as c:
        for i in range(5):
            r = c.post(f"{server.url}/v1/chat/completions?n={i}", content=b'{"a": 1}', headers={"X-Test": "yes"})
            assert r.status_code == 200 and r.json() == {"ok": 1} and r.reason_phrase == "OK"
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions?n=0 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nX-Test: yes\r\n" in first.replace(b"x-test", b"X-Test")
    assert first.endswith(b'\r\n\r\n{"a": 1}')


def test_chunked_and_close_delimited_bodies_and_gzip(serve: Callable[[Handler], RawServer]) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n4\r\n: 2}\r\n0\r\n\r\n"
    packed = gzip.compress(json.dumps({"zipped": True}).encode())
    zipped = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(packed), packed)
    box: list[RawServer] = []
    box.append(kept := serve(answer_each(box, chunked)))
    zbox: list[RawServer] = []
    zbox.append(gz := serve(answer_each(zbox, zipped)))

    def until_close(conn: socket.socket) -> None:  # HTTP/1.0 style: the body ends when the server hangs up
        closing.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"closed\": ")
        time.sleep(0.05)
        conn.sendall(b"true}")

    closing = serve(until_close)
    with client() as c:
        assert c.get(kept.url).json() == {"a": 2}
        assert c.get(kept.url).json() == {"a": 2}
        assert c.get(gz.url).json() == {"zipped": True}
        assert c.get(closing.url).json() == {"closed": True}
        assert c.get(closing.url).json() == {"closed": True}
    assert kept.connections == 1 and closing.connections == 2


def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Callable[[Handler], RawServer]) -> None:
    hung_up = threading.Semaphore(0)

    def one_request_then_hang_up(conn: socket.socket) -> None:
        server.read_request(conn)
        conn.sendall(OK)  # keep-alive by its headers, then closed anyway (a server's idle timeout)
        conn.close()
        hung_up.release()

    server = serve(one_request_then_hang_up)
    with client() as c:
        for _ in range(3):
            assert c.get(server.url).status_code == 200
            assert hung_up.acquire(timeout=10)
            time.sleep(0.1)  # the server's FIN reaches the client's socket
    assert server.connections == 3


def test_a_connection_idle_past_the_keepalive_expiry_is_not_reused(serve: Callable[[Handler], RawServer]) -> None:
    box: list[RawServer] = []
    box.append(server := serve(answer_each(box, OK)))
    with httpx2.Client(transport=LeanTransport(2, keepalive_expiry_s=0.5)) as c:
        c.get(server.url)
        c.get(server.url)
        time.sleep(1.0)
        c.get(server.url)
    assert server.connections == 2


def test_a_server_that_hangs_up_without_answering_is_a_protocol_error(serve: Callable[[Handler], RawServer]) -> None:
    server = serve(lambda conn: (server.read_request(conn), None)[1])
    with client() as c, pytest.raises(httpx2.RemoteProtocolError, match="without sending a response"):
        c.get(server.url)

    def half(conn: socket.socket) -> None:
        cut.read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")

    cut = serve(half)
    with client() as c, pytest.raises(httpx2.RemoteProtocolError, match="middle of its response"):
        c.get(cut.url)


def test_garbage_is_a_protocol_error(serve: Callable[[Handler], RawServer]) -> None:
    box: list[RawServer] = []
    box.append(server := serve(answer_each(box, b"SMTP ready, not HTTP\r\n\r\n")))
    with client() as c, pytest.raises(httpx2.RemoteProtocolError, match="malformed"):
        c.get(server.url)


def test_timeouts_and_refusals_are_httpx_errors(serve: Callable[[Handler], RawServer]) -> None:
    def silent(conn: socket.socket) -> None:
        slow.read_request(conn)
        time.sleep(1.0)

    slow = serve(silent)
    with client(read=0.2) as c, pytest.raises(httpx2.ReadTimeout):
        c.get(slow.url)
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with client() as c, pytest.raises(httpx2.ConnectError):
        c.get(f"http://127.0.0.1:{port}/")


def test_the_pool_limit_makes_a_caller_wait_then_time_out(serve: Callable[[Handler], RawServer]) -> None:
    def slow_ok(conn: socket.socket) -> None:
        while server.read_request(conn) is not None:
            time.sleep(0.5)
            conn.sendall(OK)

    server = serve(slow_ok)
    with client(max_connections=1, pool=0.1) as c:
        first = threading.Thread(target=c.get, args=(server.url,))
        first.start()
        deadline = time.monotonic() + 10
        while not server.requests and time.monotonic() < deadline:  # the first caller holds the one connection
            time.sleep(0.01)
        with pytest.raises(httpx2.PoolTimeout):
            c.get(server.url)
        first.join()
    statuses: list[int] = []
    with client(max_connections=1, pool=5.0) as c:  # a patient caller gets the connection once it is free
        threads = [threading.Thread(target=lambda: statuses.append(c.get(server.url).status_code)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == [200, 200]
    assert len(server.requests) == 3  # the first caller's, then the patient two: the timed-out one sent nothing


def test_the_openai_client_turns_transport_failures_into_its_own_errors(
    serve: Callable[[Handler], RawServer], no_proxy_env: None
) -> None:
    """What ``OpenAIChatModel`` catches: ``APITimeoutError`` and ``APIConnectionError``, as with httpx's transport."""
    def silent(conn: socket.socket) -> None:
        slow.read_request(conn)
        time.sleep(1.0)

    slow = serve(silent)
    hang_up = serve(lambda conn: (hang_up.read_request(conn), None)[1])
    assert isinstance(make_client(f"{slow.url}/v1", "sk-test", 0.2, 4)._client._transport, LeanTransport)
    with pytest.raises(openai.APITimeoutError):
        make_client(f"{slow.url}/v1", "sk-test", 0.2, 4).post("/chat/completions", content=b"{}", cast_to=bytes)
    with pytest.raises(openai.APIConnectionError):
        make_client(f"{hang_up.url}/v1", "sk-test", 2.0, 4).post("/chat/completions", content=b"{}", cast_to=bytes)


def test_a_closed_transport_drops_its_idle_connections(serve: Callable[[Handler], RawServer]) -> None:
    box: list[RawServer] = []
    box.append(server := serve(answer_each(box, OK)))
    transport = LeanTransport(2)
    with httpx2.Client(transport=transport) as c:
        c.get(server.url)
        assert sum(len(v) for v in transport._idle.values()) == 1
    assert transport._idle == {}
    with pytest.raises(ValueError):
        LeanTransport(0)


def test_head_is_refused_and_the_reply_keeps_its_http_version(serve: Callable[[Handler], RawServer]) -> None:
    """A HEAD reply announces a body it does not carry, which the parser cannot know: refused, not hung on."""
    box: list[RawServer] = []
    box.append(server := serve(answer_each(box, OK.replace(b"HTTP/1.1", b"HTTP/1.0"))))
    with client() as c:
        with pytest.raises(httpx2.UnsupportedProtocol, match="HEAD"):
            c.head(server.url)
        assert c.get(server.url).http_version == "HTTP/1.0"
    assert len(server.requests) == 1
