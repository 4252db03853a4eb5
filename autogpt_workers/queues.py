"""The broker's queues as an operator sees them: depth, unacknowledged messages, consumers and the age of the
oldest message, read from the RabbitMQ management API (``/api/queues/{vhost}``).

Two limits of that API to keep in mind:

- its message counts are statistics the broker refreshes every ``collect_statistics_interval`` (5 s by default),
  so a reading may be that much behind the queue;
- ``head_message_timestamp`` (the oldest message's AMQP ``timestamp`` property, whole seconds) exists only when
  publishers set that property: ``stamp_publish_time`` makes every Celery publish of this process set it.

Nothing here imports Celery at module level; the API, the workers, the reaper and the autoscaler all use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx

from autogpt_workers.contracts import ACT_QUEUE, DEAD_LETTER_QUEUE, THINK_QUEUE

MANAGEMENT_PORT = 15672
# label value (short, stable) -> RabbitMQ queue name
PLATFORM_QUEUES = {"think": THINK_QUEUE, "act": ACT_QUEUE, "dead": DEAD_LETTER_QUEUE}
_COLUMNS = "name,messages,messages_ready,messages_unacknowledged,consumers,head_message_timestamp"


class ManagementAPIError(Exception):
    """The management API could not be reached or refused the request (a clear message, never a traceback)."""


@dataclasses.dataclass(frozen=True)
class QueueStats:
    name: str
    ready: int
    unacked: int
    consumers: int
    oldest_age_s: float | None  # None: the queue is empty or its head carries no timestamp

    @property
    def depth(self) -> int:
        """Messages in the queue, delivered or not (what KEDA's RabbitMQ scaler calls QueueLength over HTTP)."""
        return self.ready + self.unacked


@dataclasses.dataclass(frozen=True)
class ManagementEndpoint:
    base_url: str  # http://host:15672 (no credentials, no trailing slash)
    username: str
    password: str
    vhost: str

    @classmethod
    def from_urls(cls, broker_url: str, management_url: str | None = None) -> ManagementEndpoint:
        """The management API beside an ``amqp://user:pass@host:port/vhost`` broker URL.

        ``management_url`` (``http://user:pass@host:15672``) overrides the host and, when it names them, the
        credentials; the vhost always comes from the broker URL (``//`` and an empty path mean ``/``).
        """
        broker = urlparse(broker_url)
        path = broker.path[1:] if broker.path.startswith("/") else broker.path
        vhost = unquote(path) or "/"
        user, password = unquote(broker.username or "guest"), unquote(broker.password or "guest")
        if management_url:
            mgmt = urlparse(management_url)
            if mgmt.scheme not in ("http", "https") or not mgmt.hostname:
                raise ValueError(f"not an http(s) URL: {management_url!r}")
            port = f":{mgmt.port}" if mgmt.port else ""
            base = f"{mgmt.scheme}://{mgmt.hostname}{port}"
            if mgmt.username:
                user, password = unquote(mgmt.username), unquote(mgmt.password or "")
        else:
            base = f"http://{broker.hostname or '127.0.0.1'}:{MANAGEMENT_PORT}"
        return cls(base, user, password, vhost)

    @property
    def api_url_with_credentials(self) -> str:
        """``http://user:pass@host:15672/api/``: the form Flower's ``--broker_api`` wants."""
        scheme, rest = self.base_url.split("://", 1)
        return f"{scheme}://{quote(self.username, safe='')}:{quote(self.password, safe='')}@{rest}/api/"


def _age(head_timestamp: Any, now: float) -> float | None:
    if not isinstance(head_timestamp, int | float) or head_timestamp <= 0:
        return None
    return max(0.0, now - float(head_timestamp))


class QueueReader:
    """Reads the platform's queues in one request; thread-safe (one ``httpx.Client``)."""

    def __init__(self, endpoint: ManagementEndpoint, timeout_s: float = 3.0) -> None:
        self.endpoint = endpoint
        self._client = httpx.Client(
            base_url=endpoint.base_url, auth=(endpoint.username, endpoint.password), timeout=timeout_s
        )

    @classmethod
    def from_settings(cls, broker_url: str, management_url: str | None = None) -> QueueReader:
        return cls(ManagementEndpoint.from_urls(broker_url, management_url))

    def read(self, names: list[str] | None = None) -> dict[str, QueueStats]:
        """Stats of the vhost's queues (only ``names`` when given) keyed by queue name; absent queues are absent."""
        vhost = quote(self.endpoint.vhost, safe="")
        try:
            resp = self._client.get(f"/api/queues/{vhost}", params={"columns": _COLUMNS})
        except httpx.HTTPError as exc:
            where = self.endpoint.base_url
            raise ManagementAPIError(f"cannot reach the RabbitMQ management API at {where}: {exc}") from exc
        if resp.status_code != 200:
            raise ManagementAPIError(
                f"the RabbitMQ management API answered {resp.status_code} for vhost {self.endpoint.vhost!r}: "
                f"{resp.text[:200]}"
            )
        now = time.time()
        wanted = set(names) if names is not None else None
        out: dict[str, QueueStats] = {}
        for q in resp.json():
            name = q.get("name")
            if not isinstance(name, str) or (wanted is not None and name not in wanted):
                continue
            out[name] = QueueStats(
                name=name,
                ready=int(q.get("messages_ready") or 0),
                unacked=int(q.get("messages_unacknowledged") or 0),
                consumers=int(q.get("consumers") or 0),
                oldest_age_s=_age(q.get("head_message_timestamp"), now),
            )
        return out

    def platform(self) -> dict[str, QueueStats]:
        """The think, act and dead-letter queues keyed by their short label (think, act, dead)."""
        stats = self.read(list(PLATFORM_QUEUES.values()))
        return {label: stats[name] for label, name in PLATFORM_QUEUES.items() if name in stats}

    def close(self) -> None:
        self._client.close()


class ReadyCounter:
    """Messages ready in queues right now, over AMQP (passive ``queue.declare``): exact, unlike the management
    API's periodic statistics. One connection, reopened after an error; a queue it cannot read is left out."""

    def __init__(self, broker_url: str) -> None:
        self.broker_url = broker_url
        self._conn: Any = None
        self._lock = threading.Lock()

    def __call__(self, names: list[str]) -> dict[str, int]:
        from kombu import Connection

        with self._lock:
            out: dict[str, int] = {}
            try:
                if self._conn is None:
                    self._conn = Connection(self.broker_url, connect_timeout=3)
                channel = self._conn.default_channel
                for name in names:
                    out[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except Exception:  # the broker restarts, or a queue is missing: the management reading stands
                self.close()
            return out

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.release()
            self._conn = None


def stamp_publish_time() -> None:
    """Make every task message this process publishes carry the AMQP ``timestamp`` property (idempotent).

    RabbitMQ reports the oldest message's timestamp as ``head_message_timestamp``; Celery does not set the
    property itself. Connected to ``before_task_publish``, whose ``properties`` become the message's properties.
    """
    from celery import signals

    signals.before_task_publish.connect(_stamp, weak=False, dispatch_uid="autogpt-stamp-publish-time")


def _stamp(properties: dict[str, Any] | None = None, **_: Any) -> None:
    if properties is not None and "timestamp" not in properties:
        properties["timestamp"] = int(time.time())
