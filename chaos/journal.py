"""The fault journal: one JSON line per fault injected, by the workers' crash hook (``autogpt_workers.crashpoints``,
written just before it fires) and by the harness (kills, service restarts, flushes).

Record fields: ``ts`` (epoch seconds), ``kind`` (``crash`` for the hook, ``sigkill``, ``postgres_restart``,
``rabbitmq_restart``, ``redis_flush``), ``window`` (the hook's window, or ``random``/``service``), and as they
apply ``pid``/``pids`` (the processes killed), ``role``, ``task_id``/``step``/``phase`` (hook), ``end_ts``
(when a service was back).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(record) + "\n").encode())
            finally:
                os.close(fd)

    def read(self, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Records from byte ``offset`` on (whole lines only), and the offset after them."""
        with self.path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        records = []
        for line in data[:end].splitlines():
            if line.strip():
                record = json.loads(line)
                if "kind" not in record:  # written by the workers' crash hook
                    record["kind"] = "crash"
                records.append(record)
        return records, offset + end

    def records(self) -> list[dict[str, Any]]:
        return self.read(0)[0]
