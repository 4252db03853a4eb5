"""OpenAI-compatible fake LLM server for tests, demos and load/chaos runs.

The HTTP and control API is documented in ``tests/fake_llm/server.py``; test helpers are in
``tests/fake_llm/client.py`` (``FakeLLMControl``, ``start_fake_llm``). Exports are imported lazily so that
the server process does not load the test helpers (and vice versa).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fake_llm.client import FakeLLMControl, FakeLLMServer, start_fake_llm, stop_fake_llm
    from tests.fake_llm.models import Config, Script, Turn, Usage
    from tests.fake_llm.server import create_app

_EXPORTS = {
    "FakeLLMControl": "client",
    "FakeLLMServer": "client",
    "start_fake_llm": "client",
    "stop_fake_llm": "client",
    "Config": "models",
    "Script": "models",
    "Turn": "models",
    "Usage": "models",
    "create_app": "server",
}

__all__ = [
    "Config",
    "FakeLLMControl",
    "FakeLLMServer",
    "Script",
    "Turn",
    "Usage",
    "create_app",
    "start_fake_llm",
    "stop_fake_llm",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"tests.fake_llm.{_EXPORTS[name]}"), name)
