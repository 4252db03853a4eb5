"""Test helpers for the fake LLM: a sync control client and a subprocess launcher.

server = start_fake_llm()              # or: with start_fake_llm() as server: ...
process, base_url = server             # base_url = "http://127.0.0.1:PORT" (OpenAI: base_url + "/v1")
control = FakeLLMControl(base_url)
control.register_script("flaky", [{"faults": ["429"], "tool": "finish", "arguments": {"reason": "ok"}}])
...
control.log("task-1"); control.summary(); control.reset()
server.stop()                          # or stop_fake_llm(process)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import httpx

from tests.fake_llm.models import Turn

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeLLMControl:
    """Sync client of the control endpoints (``/_scripts``, ``/_config``, ``/_reset``, ``/_log``)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/v1")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        try:
            return bool(self._json("GET", "/healthz").get("ok"))
        except httpx.HTTPError:
            return False

    def register_script(self, name: str, turns: list[Turn | dict[str, Any]]) -> None:
        """Register script NAME; goals containing ``[[script:NAME]]`` follow it."""
        body = [t.model_dump(exclude_none=True) if isinstance(t, Turn) else t for t in turns]
        self._json("POST", f"/_scripts/{name}", json={"turns": body})

    def set_config(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into the global config: latency_s, latency_jitter_s, fault_rate, fault_kinds, ..."""
        result: dict[str, Any] = self._json("POST", "/_config", json=fields)
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/_config")
        return result

    def reset(self) -> None:
        self._json("POST", "/_reset")

    def log(self, conversation: str | None = None) -> list[dict[str, Any]]:
        params = {"conversation": conversation} if conversation is not None else None
        entries: list[dict[str, Any]] = self._json("GET", "/_log", params=params)["entries"]
        return entries

    def summary(self) -> dict[str, dict[str, dict[str, int]]]:
        result: dict[str, dict[str, dict[str, int]]] = self._json("GET", "/_log/summary")
        return result

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FakeLLMControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_fake_llm(process: subprocess.Popen[bytes]) -> None:
    """Terminate the server process (kill it if it has not exited after 5 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class FakeLLMServer(NamedTuple):
    """A running fake LLM subprocess; unpacks as ``(process, base_url)`` and is a context manager."""

    process: subprocess.Popen[bytes]
    base_url: str

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    def stop(self) -> None:
        stop_fake_llm(self.process)

    def __enter__(self) -> FakeLLMServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_fake_llm(
    port: int | None = None, host: str = "127.0.0.1", startup_timeout: float = 15.0
) -> FakeLLMServer:
    """Start ``python -m tests.fake_llm`` in the repo root and wait until ``/healthz`` answers."""
    port = port or free_port()
    base_url = f"http://{host}:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_llm", "--host", host, "--port", str(port)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake LLM exited with code {process.returncode} before answering /healthz")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=0.5).status_code == 200:
                return FakeLLMServer(process, base_url)
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_fake_llm(process)
    raise RuntimeError(f"fake LLM did not answer {base_url}/healthz within {startup_timeout} s")
