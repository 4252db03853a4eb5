"""The services the chaos suite runs against: private PostgreSQL, RabbitMQ and Redis instances on free ports.

Private, so restarting them under load disturbs nobody else on the machine (the shared services keep running for
other people's tests); real, so what is measured is what production sees. Each lives in a temporary directory and
is stopped (and the directory removed) when the suite ends, whatever happens.

    PostgreSQL  initdb + pg_ctl as the ``postgres`` user (fsync off: a restart is a clean ``-m fast`` restart)
    RabbitMQ    a second node (``chaos-<port>@localhost``) with its own config, data and ports, no plugins
    Redis       ``redis-server`` without persistence
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not open port {port} within {timeout_s:.0f}s")


def _run(args: list[str], timeout_s: float = 60, user: str | None = None, env: dict[str, str] | None = None) -> str:
    cmd = ["runuser", "-u", user, "--", *args] if user and os.geteuid() == 0 else args
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, start_new_session=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stdout}{done.stderr}")
    return done.stdout


class Postgres:
    def __init__(self, root: Path) -> None:
        self.root = root / "pg"
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/chaos"

    def _opts(self) -> str:
        return (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB"
        )

    def start(self) -> None:
        self.root.mkdir(parents=True)
        shutil.chown(self.root, "postgres")
        _run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"],
             user="postgres")
        self._ctl("start")
        _run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-qc", "CREATE DATABASE chaos"])

    def _ctl(self, action: str, mode: str = "fast") -> None:
        args = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "log")]
        if action in ("start", "restart"):
            args += ["-o", self._opts()]
        if action in ("stop", "restart"):
            args += ["-m", mode]
        _run([*args, action], user="postgres", timeout_s=90)

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._ctl("stop", mode="immediate")


class Rabbit:
    def __init__(self, root: Path) -> None:
        self.root = root / "rabbit"
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"chaos-{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
        }

    def start(self) -> None:
        self.root.mkdir(parents=True)
        os.chmod(self.root, 0o777)
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (self.root / "plugins").write_text("[].\n")
        for f in ("rabbitmq.conf", "plugins"):
            os.chmod(self.root / f, 0o644)
        server = RABBIT_BIN / "rabbitmq-server"
        cmd = ["runuser", "-u", "rabbitmq", "--", str(server), "-detached"] if os.geteuid() == 0 else [str(server),
                                                                                                        "-detached"]
        subprocess.run(cmd, env=self.env, cwd=self.root, check=True, capture_output=True, timeout=60,
                       start_new_session=True)
        _wait_port(self.port, 120, "RabbitMQ")

    def ctl(self, *args: str, timeout_s: float = 90) -> str:
        return _run(["rabbitmqctl", "-n", self.node, *args], timeout_s=timeout_s)

    def restart(self) -> None:
        """Stop and start the RabbitMQ application (the node stays up): every connection drops; durable queues
        and persistent messages survive."""
        self.ctl("stop_app")
        self.ctl("start_app")
        _wait_port(self.port, 60, "RabbitMQ")

    def consumer_timeout_ms(self) -> int | None:
        out = self.ctl("eval", "application:get_env(rabbit, consumer_timeout).")
        digits = "".join(ch for ch in out if ch.isdigit())
        return int(digits) if digits else None

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ctl("stop", timeout_s=60)


class Redis:
    def __init__(self, root: Path) -> None:
        self.root = root / "redis"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.root)],
            stdout=(self.root / "log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_port(self.port, 30, "Redis")

    def flush(self) -> None:
        _run(["redis-cli", "-p", str(self.port), "FLUSHALL"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


class PrivateServices:
    """PostgreSQL, RabbitMQ and Redis of the chaos suite's own, started together and stopped together."""

    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="autogpt-chaos-"))
        os.chmod(self.root, 0o755)
        self.postgres = Postgres(self.root)
        self.rabbit = Rabbit(self.root)
        self.redis = Redis(self.root)
        self.keep = keep

    def start(self) -> None:
        try:
            self.redis.start()
            self.postgres.start()
            self.rabbit.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for service in (self.rabbit, self.postgres, self.redis):
            with contextlib.suppress(Exception):
                service.stop()
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def urls(self) -> dict[str, str]:
        return {
            "AUTOGPT_DATABASE_URL": self.postgres.url,
            "AUTOGPT_BROKER_URL": self.rabbit.url,
            "AUTOGPT_REDIS_URL": self.redis.url,
        }
