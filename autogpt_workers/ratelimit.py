"""Per-tenant request rate limit: a token bucket in Redis, refilled continuously, checked atomically by a script.

The bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a request takes one. When it is empty the
caller is told how long until a token is back (the API answers 429 with that ``Retry-After``). The clock is Redis's
own (``TIME``), so every API process agrees on it. If Redis is unreachable the limiter lets requests through and
says so in the log: rate limiting protects the platform, it must not take the API down with it.

The hits of one tenant that arrive while its script call is in flight share the next call: one round trip and one
script run take ``n`` tokens for ``n`` requests, granted in order of arrival while the bucket holds them, exactly
what ``n`` calls one after the other would decide (``python -m bench --only submit`` sends 32 concurrent requests
of one tenant; a call cost the API's event loop 100-155 us of CPU).

With ``lease_s`` above 0 (``AUTOGPT_API_RATE_LEASE_S``; off by default), a tenant allowed many requests a second
has its tokens taken a few at a time: a call that finds the bucket full enough takes up to ``lease_s`` seconds'
worth of the refill more than its requests need (at most 5% of the burst, at most ``MAX_LEASE``), and the process
spends that lease on the tenant's next requests without a round trip, for up to ``lease_ttl_s``; what is left then
is dropped, not given back (the limit errs strict). A lease under ``MIN_LEASE`` requests is not taken: at the
default limits (20/s, burst 100) every request is one call's. Leased tokens are out of the bucket, so another
process's request may be refused while they sit here: a few tokens, for a tenant that sends hundreds a second.
``remaining`` counts them as still in the bucket.

Measured (``python -m bench.ab`` on the submit figure, 32 clients of one tenant, 2026-12-07): with leases 1.10x the
tasks/s, 0.92x the API's CPU per task and 0.88x the median latency, but 1.13x the p99 (54 to 61 ms), the submit
figure's goal; so they are off unless an operator wants Redis's load and the CPU more than the tail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

# KEYS[1] bucket; ARGV rate_per_s, burst, cost, n: n requests of ``cost`` tokens each, in order. Returns {granted (how
# many of the n were allowed: the first ones), retry_after_s (for the others), tokens_left} (as strings).
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = 0
while granted < n and tokens >= cost do
  tokens = tokens - cost
  granted = granted + 1
end
local retry = 0
if granted < n then
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, tostring(retry), tostring(tokens)}
"""


@dataclasses.dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: float = 0.0
    remaining: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, at least 1 (``Retry-After`` takes integers)."""
        return str(max(1, math.ceil(self.retry_after_s)))


MIN_LEASE = 4
MAX_LEASE = 64
LEASE_BURST_SHARE = 0.05


@dataclasses.dataclass
class _Lease:
    left: int  # requests of the key's cost, already taken from the bucket
    remaining: float  # the bucket's tokens after the call that took them
    until: float  # monotonic: dropped after this


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str = "autogpt:ratelimit:",
        lease_s: float = 0.0,
        lease_ttl_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.lease_s = lease_s  # 0: no leases, every request is decided by a call
        self.lease_ttl_s = lease_ttl_s
        self._leases: dict[tuple[str, float, int, int], _Lease] = {}
        self._script = redis.register_script(TOKEN_BUCKET)
        self._last_warning = 0.0
        # per bucket and limits, while a call is in flight: the hits that arrived meanwhile (for the next call)
        self._waiting: dict[tuple[str, float, int, int], list[asyncio.Future[Decision]]] = {}
        self._serving: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, url: str, lease_s: float = 0.0) -> RateLimiter:
        return cls(aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2), lease_s=lease_s)

    def lease_size(self, rate_per_s: float, burst: int, cost: int) -> int:
        """Requests a call takes beyond its own for this key's lease: 0 unless the tenant's rate is high."""
        size = int(min(rate_per_s * self.lease_s, burst * LEASE_BURST_SHARE, MAX_LEASE * cost) // cost)
        return size if size >= MIN_LEASE else 0

    async def hit(self, tenant_id: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` tokens from the tenant's bucket, or be told when to retry. A hit that arrives while another
        of the same tenant (and limits) is in flight waits for it, then goes with the others that waited, in one
        call."""
        key = (self.prefix + tenant_id, rate_per_s, burst, cost)
        leased = self._spend(key)
        if leased is not None:
            return leased
        waiting = self._waiting.get(key)
        if waiting is not None:
            future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
            waiting.append(future)
            return await future
        self._waiting[key] = []
        try:
            return (await self._take(key, 1))[0]
        finally:
            if self._waiting[key]:  # served by a task of its own: this request is answered now
                task = asyncio.get_running_loop().create_task(self._serve(key))
                self._serving.add(task)
                task.add_done_callback(self._serving.discard)
            else:
                del self._waiting[key]

    def _spend(self, key: tuple[str, float, int, int]) -> Decision | None:
        """A request's decision from the key's lease, if one holds a token; a lapsed or spent lease is dropped."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        if lease.left > 0 and time.monotonic() < lease.until:
            lease.left -= 1
            return Decision(True, 0.0, lease.remaining + lease.left * key[3])
        del self._leases[key]
        return None

    async def _serve(self, key: tuple[str, float, int, int]) -> None:
        """Answer the hits that waited for ``key``, a call per round, until none arrived during the last one."""
        futures: list[asyncio.Future[Decision]] = []
        try:
            while True:
                futures = [f for f in self._waiting[key] if not f.done()]  # a cancelled request takes no token
                self._waiting[key] = []
                while futures and (leased := self._spend(key)) is not None:  # the last call's lease first
                    futures.pop(0).set_result(leased)
                if not futures:
                    return
                for future, decision in zip(futures, await self._take(key, len(futures)), strict=True):
                    if not future.done():
                        future.set_result(decision)
        finally:
            for future in [*futures, *self._waiting.pop(key, [])]:
                if not future.done():  # this task was cancelled (the server stops): let them through
                    future.set_result(Decision(True))

    async def _take(self, key: tuple[str, float, int, int], n: int) -> list[Decision]:
        """``n`` requests' decisions from one script call, in order; all let through if Redis fails. The call also
        asks for a lease (``lease_size``); what it gets beyond the ``n`` is this process's to spend."""
        bucket, rate_per_s, burst, cost = key
        extra = self.lease_size(rate_per_s, burst, cost)
        try:
            granted, retry, left = await self._script(keys=[bucket], args=[rate_per_s, burst, cost, n + extra])
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._last_warning > 10:  # one line per 10 s, not one per request
                self._last_warning = now
                log.warning("rate_limit_unavailable", error=str(exc), detail="requests are let through")
            return [Decision(True)] * n
        granted, retry_s, left_s = int(granted), float(retry), float(left)
        leased = max(0, granted - n)
        if leased:
            now = time.monotonic()
            if len(self._leases) >= 1024:  # tenants that went quiet: their leases lapsed
                self._leases = {k: v for k, v in self._leases.items() if v.until > now}
            self._leases[key] = _Lease(leased, left_s, now + self.lease_ttl_s)
        granted -= leased
        # each allowed request sees the tokens left after its own, as if the calls had come one by one (a lease's
        # tokens counted as still in the bucket)
        allowed = [Decision(True, 0.0, left_s + (leased + granted - 1 - i) * cost) for i in range(granted)]
        return allowed + [Decision(False, retry_s, left_s)] * (n - granted)

    async def close(self) -> None:
        await self.redis.aclose()
