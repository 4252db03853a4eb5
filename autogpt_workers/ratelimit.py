"""Per-tenant request rate limit: a token bucket in Redis, refilled continuously, checked atomically by a script.

The bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; a request takes one. When it is empty the
caller is told how long until a token is back (the API answers 429 with that ``Retry-After``). The clock is Redis's
own (``TIME``), so every API process agrees on it. If Redis is unreachable the limiter lets requests through and
says so in the log: rate limiting protects the platform, it must not take the API down with it.
"""

from __future__ import annotations

import dataclasses
import math
import time

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

# KEYS[1] bucket; ARGV rate_per_s, burst, cost. Returns {allowed (0/1), retry_after_s, tokens_left} (as strings).
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
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
local allowed = 0
local retry = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(retry), tostring(tokens)}
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


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, prefix: str = "autogpt:ratelimit:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._script = redis.register_script(TOKEN_BUCKET)
        self._last_warning = 0.0

    @classmethod
    def from_url(cls, url: str) -> RateLimiter:
        return cls(aioredis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    async def hit(self, tenant_id: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        try:
            allowed, retry, left = await self._script(keys=[self.prefix + tenant_id], args=[rate_per_s, burst, cost])
        except (RedisError, OSError) as exc:
            now = time.monotonic()
            if now - self._last_warning > 10:  # one line per 10 s, not one per request
                self._last_warning = now
                log.warning("rate_limit_unavailable", error=str(exc), detail="requests are let through")
            return Decision(True)
        return Decision(bool(int(allowed)), float(retry), float(left))

    async def close(self) -> None:
        await self.redis.aclose()
