"""RabbitMQ's management API, as the bench uses it: create the vhost, purge its queues, read its publish counts.

The management API samples message statistics every ``collect_statistics_interval`` (5 s by default): read the
counters only after the vhost has been quiet that long.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx

DEFAULT_API = "http://127.0.0.1:15672"


@dataclasses.dataclass(frozen=True)
class PublishCounts:
    """Messages published in a vhost, in total and per exchange (``""`` is the default exchange)."""

    total: int
    by_exchange: dict[str, int]

    def minus(self, before: PublishCounts) -> PublishCounts:
        names = set(self.by_exchange) | set(before.by_exchange)
        return PublishCounts(
            self.total - before.total,
            {n: self.by_exchange.get(n, 0) - before.by_exchange.get(n, 0) for n in sorted(names)},
        )


class Management:
    def __init__(self, broker_url: str, api_url: str | None = None) -> None:
        parsed = urlparse(broker_url)
        self.vhost = unquote(parsed.path[1:]) if len(parsed.path) > 1 else "/"
        self.user = unquote(parsed.username or "guest")
        auth = (self.user, unquote(parsed.password or "guest"))
        base = api_url or os.environ.get("AUTOGPT_BENCH_RABBITMQ_API", DEFAULT_API)
        self._http = httpx.Client(base_url=base.rstrip("/") + "/api", auth=auth, timeout=10)
        self._v = quote(self.vhost, safe="")

    def _get(self, path: str, **params: Any) -> Any:
        resp = self._http.get(path, params=params or None)
        resp.raise_for_status()
        return resp.json()

    def ensure_vhost(self) -> None:
        """Create the vhost and give the broker URL's user every permission on it (both idempotent)."""
        self._http.put(f"/vhosts/{self._v}", json={}).raise_for_status()
        perms = {"configure": ".*", "write": ".*", "read": ".*"}
        self._http.put(f"/permissions/{self._v}/{quote(self.user, safe='')}", json=perms).raise_for_status()

    def queue_names(self) -> list[str]:
        """Durable queues (the work queues); not the workers' own exclusive control and event queues."""
        queues = self._get(f"/queues/{self._v}", columns="name,durable,exclusive")
        return [q["name"] for q in queues if q.get("durable") and not q.get("exclusive")]

    def purge(self, queue: str) -> None:
        resp = self._http.delete(f"/queues/{self._v}/{quote(queue, safe='')}/contents")
        if resp.status_code not in (204, 400, 404):  # 400: an exclusive queue (another connection's)
            resp.raise_for_status()

    def consumers(self, queue: str) -> int:
        resp = self._http.get(f"/queues/{self._v}/{quote(queue, safe='')}", params={"columns": "consumers"})
        if resp.status_code == 404:
            return 0
        resp.raise_for_status()
        return int(resp.json().get("consumers", 0))

    def publish_counts(self) -> PublishCounts:
        vhost = self._get(f"/vhosts/{self._v}")
        total = int(vhost.get("message_stats", {}).get("publish", 0))
        exchanges = self._get(f"/exchanges/{self._v}", columns="name,message_stats.publish_in")
        by_exchange = {e["name"]: int(e.get("message_stats", {}).get("publish_in", 0)) for e in exchanges}
        return PublishCounts(total, by_exchange)

    def node_info(self) -> dict[str, str]:
        overview = self._get("/overview", columns="rabbitmq_version,erlang_version")
        return {"rabbitmq": overview.get("rabbitmq_version", "?"), "erlang": overview.get("erlang_version", "?")}

    def close(self) -> None:
        self._http.close()
