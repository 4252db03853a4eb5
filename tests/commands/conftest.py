"""Fixtures for the command tests: a sandbox with short limits, a workspace, a local HTTP server (moto's S3 server is
in ``tests/conftest.py``)."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autogpt_workers.commands import CommandContext, Sandbox, SandboxLimits, Workspace

# Worker processes started in this session (tests/commands/test_e2e_*.py use the shared ``stack``): short sandbox
# limits, and web_fetch may reach this host (the local HTTP server's port changes per run).
os.environ.update(
    {
        "AUTOGPT_SANDBOX_CPU_SECONDS": "2",
        "AUTOGPT_SANDBOX_WALL_SECONDS": "6",
        "AUTOGPT_SANDBOX_MEMORY_MB": "256",
        "AUTOGPT_WEB_ALLOWED_DOMAINS": '["127.0.0.1"]',
    }
)

FAST_LIMITS = SandboxLimits(
    cpu_seconds=2, wall_seconds=6, memory_bytes=256 * 2**20, file_size_bytes=2 * 2**20, max_processes=16,
    tmp_bytes=8 * 2**20, output_bytes=16 * 2**10,
)


def sandbox_uids_in_use(base: int = 200_000, count: int = 1024) -> list[str]:
    """Processes on this host owned by a sandbox uid (none must survive a run)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except FileNotFoundError:
            continue
        if base <= uid < base + count:
            found.append(f"{pid} (uid {uid})")
    return found


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Sandbox:
    box = Sandbox(FAST_LIMITS, runtime_dir=tmp_path_factory.mktemp("sandbox-runtime"))
    reason = box.unavailable_reason()
    if reason is not None:
        pytest.fail(f"the sandbox cannot run on this machine: {reason}")
    return box


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.create()
    return ws


@pytest.fixture
def ctx(workspace: Workspace) -> CommandContext:
    return CommandContext(workspace=workspace, task_id="task-1", step_index=3, max_output_chars=4_000)


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(3)
        status, headers, body = self.routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"not here"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        type(self).hits.append(self.path)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def http_server() -> Iterator[str]:
    """A local HTTP server on a free port: ``/page.html``, ``/data.json``, ``/big``, ``/slow``, ``/image``,
    ``/redirect-out`` (to another port), ``/redirect-in`` (to ``/data.json``), anything else 404."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = server.server_address[1]
    _Handler.hits = []  # type: ignore[attr-defined]
    _Handler.routes = {
        "/page.html": (200, {"Content-Type": "text/html; charset=utf-8"},
                       b"<html><head><title>Hi</title><style>p{}</style><script>var x=1;</script></head>"
                       b"<body><h1>Heading</h1><p>First &amp; only paragraph.</p></body></html>"),
        "/data.json": (200, {"Content-Type": "application/json"}, json.dumps({"answer": 42}).encode()),
        "/big": (200, {"Content-Type": "text/plain"}, b"z" * 50_000),
        "/slow": (200, {"Content-Type": "text/plain"}, b"finally"),
        "/image": (200, {"Content-Type": "image/png"}, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100),
        "/redirect-out": (302, {"Location": "http://127.0.0.2:1/elsewhere"}, b""),
        "/redirect-in": (302, {"Location": "/data.json"}, b""),
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
