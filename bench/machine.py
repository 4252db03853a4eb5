"""The machine a run was made on: CPU, cores, memory, OS, and the versions of the services and libraries."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from bench.env import BenchEnv, Sql


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _pkg(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def describe(env: BenchEnv, db: Sql | None) -> dict[str, Any]:
    """The host and the services' versions (``db`` None: a run that started no platform, services not asked)."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": {p: _pkg(p) for p in ("celery", "kombu", "sqlalchemy", "psycopg2-binary", "fastapi", "uvicorn",
                                          "openai", "langgraph", "langgraph-checkpoint-postgres", "sqlite-vec", "numpy",
                                          "torch")},
    }  # fmt: skip
    if db is None:
        return {**info, "postgresql": "-", "rabbitmq": "-"}
    try:
        info["postgresql"] = str(db.scalar("SHOW server_version"))
    except Exception as exc:  # the description must not fail the run
        info["postgresql"] = f"? ({exc})"
    try:
        info.update(env.mgmt.node_info())
    except Exception as exc:
        info["rabbitmq"] = f"? ({exc})"
    return info


def one_line(info: dict[str, Any]) -> str:
    return (
        f"{info.get('cpu')}, {info.get('cores')} cores, {info.get('memory_gib')} GiB, {info.get('os')} "
        f"(kernel {info.get('kernel')}), Python {info.get('python')}, PostgreSQL {info.get('postgresql')}, "
        f"RabbitMQ {info.get('rabbitmq')}; load average (1, 5, 15 min) at start {info.get('load_average_at_start')}, "
        f"at end {info.get('load_average_at_end')}"
    )
