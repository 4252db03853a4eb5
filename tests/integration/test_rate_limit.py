"""The per-tenant token bucket on real Redis: concurrent hits of one tenant share a script call and are decided as
if they had come one by one."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from autogpt_workers.ratelimit import Decision, RateLimiter


def _limiter(settings: Any) -> tuple[RateLimiter, list[int]]:
    """A limiter on the test Redis, under a prefix of its own, and the sizes of its script calls."""
    limiter = RateLimiter.from_url(settings.redis_url)
    limiter.prefix = f"test:ratelimit:{uuid.uuid4().hex}:"
    calls: list[int] = []
    script = limiter._script

    async def counted(keys: list[str], args: list[Any]) -> Any:
        calls.append(int(args[3]))
        return await script(keys=keys, args=args)

    limiter._script = counted  # type: ignore[assignment]
    return limiter, calls


async def _hits(limiter: RateLimiter, n: int, rate: float = 0.001, burst: int = 5) -> list[Decision]:
    try:
        return list(await asyncio.gather(*(limiter.hit("t", rate, burst) for _ in range(n))))
    finally:
        await limiter.close()


def test_concurrent_hits_share_a_call_and_the_first_ones_get_the_tokens(settings: Any) -> None:
    limiter, calls = _limiter(settings)
    decisions = asyncio.run(_hits(limiter, 20))
    assert calls == [1, 19]  # the first alone; the 19 that arrived meanwhile in one call
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 15
    assert [round(d.remaining) for d in decisions[:5]] == [4, 3, 2, 1, 0]  # as five calls one by one would say
    assert all(d.retry_after_s > 100 for d in decisions[5:])  # a token comes back every 1000 s


def test_hits_one_after_the_other_are_a_call_each(settings: Any) -> None:
    limiter, calls = _limiter(settings)

    async def one_by_one() -> list[Decision]:
        try:
            return [await limiter.hit("t", 0.001, 3) for _ in range(5)]
        finally:
            await limiter.close()

    decisions = asyncio.run(one_by_one())
    assert calls == [1, 1, 1, 1, 1]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert decisions[3].retry_after_header == decisions[4].retry_after_header


def test_tenants_and_limits_are_separate_buckets(settings: Any) -> None:
    limiter, calls = _limiter(settings)

    async def mixed() -> list[Decision]:
        try:
            return list(
                await asyncio.gather(
                    limiter.hit("a", 0.001, 1), limiter.hit("b", 0.001, 1), limiter.hit("a", 0.001, 1),
                    limiter.hit("b", 0.001, 1),
                )
            )  # fmt: skip
        finally:
            await limiter.close()

    decisions = asyncio.run(mixed())
    assert [d.allowed for d in decisions] == [True, True, False, False]
    assert sorted(calls) == [1, 1, 1, 1]


def test_a_cancelled_hit_takes_no_token(settings: Any) -> None:
    limiter, calls = _limiter(settings)

    async def with_a_cancel() -> list[Decision]:
        try:
            first = asyncio.ensure_future(limiter.hit("t", 0.001, 2))
            await asyncio.sleep(0)  # the first call is in flight
            gone = asyncio.ensure_future(limiter.hit("t", 0.001, 2))
            kept = asyncio.ensure_future(limiter.hit("t", 0.001, 2))
            await asyncio.sleep(0)
            gone.cancel()  # its client went away while it waited
            return [await first, await kept, await limiter.hit("t", 0.001, 2)]
        finally:
            await limiter.close()

    decisions = asyncio.run(with_a_cancel())
    assert [d.allowed for d in decisions] == [True, True, False]
    assert calls == [1, 1, 1]


def test_without_redis_requests_are_let_through(settings: Any) -> None:
    limiter = RateLimiter.from_url("redis://127.0.0.1:1/0")
    decisions = asyncio.run(_hits(limiter, 3, burst=1))
    assert all(d.allowed for d in decisions)



async def _tokens(limiter: RateLimiter, tenant: str = "t") -> float:
    return float(await limiter.redis.hget(limiter.prefix + tenant, "tokens"))


def _leasing(settings: Any) -> tuple[RateLimiter, list[int]]:
    limiter, calls = _limiter(settings)
    limiter.lease_s = 0.05  # AUTOGPT_API_RATE_LEASE_S=0.05
    return limiter, calls


def test_without_a_lease_setting_a_high_rate_tenant_makes_a_call_per_hit(settings: Any) -> None:
    limiter, calls = _limiter(settings)
    assert limiter.lease_size(10_000, 10_000, 1) == 0

    async def run() -> list[Decision]:
        try:
            return [await limiter.hit("t", 10_000, 10_000) for _ in range(3)]
        finally:
            await limiter.close()

    assert all(d.allowed for d in asyncio.run(run()))
    assert calls == [1, 1, 1]


def test_a_high_rate_tenant_leases_tokens_and_spends_them_without_a_call(settings: Any) -> None:
    limiter, calls = _leasing(settings)
    assert limiter.lease_size(10_000, 10_000, 1) == 64  # capped
    assert limiter.lease_size(20, 100, 1) == 0  # the default limits: no lease

    async def run() -> tuple[list[Decision], float]:
        try:
            decisions = [await limiter.hit("t", 10_000, 10_000) for _ in range(70)]
            return decisions, await _tokens(limiter)
        finally:
            await limiter.close()

    decisions, tokens = asyncio.run(run())
    # one call took 1 + 64; the next 64 hits spent the lease; the 66th made the second call
    assert calls == [65, 65]
    assert all(d.allowed for d in decisions)
    remaining = [d.remaining for d in decisions]
    assert remaining[:65] == sorted(remaining[:65], reverse=True)  # counts down as if each hit had called
    assert remaining[0] - remaining[64] == 64
    assert tokens < 10_000 - 64  # the second lease is out of the bucket (what refilled meanwhile aside)


def test_a_tenant_at_the_default_limits_takes_one_token_per_hit(settings: Any) -> None:
    limiter, calls = _leasing(settings)

    async def run() -> tuple[list[Decision], float]:
        try:
            decisions = [await limiter.hit("t", 0.001, 100) for _ in range(3)]  # burst 100, a rate under 80/s
            return decisions, await _tokens(limiter)
        finally:
            await limiter.close()

    decisions, tokens = asyncio.run(run())
    assert calls == [1, 1, 1]
    assert [round(d.remaining) for d in decisions] == [99, 98, 97]
    assert round(tokens) == 97


def test_a_lapsed_lease_is_dropped_not_given_back(settings: Any) -> None:
    limiter, calls = _leasing(settings)
    limiter.lease_ttl_s = 0.2
    rate, burst = 100.0, 100  # a lease of min(5, 5) = 5 requests

    async def run() -> list[Decision]:
        try:
            first = await limiter.hit("t", rate, burst)
            await asyncio.sleep(0.3)  # the lease lapses unspent
            return [first, await limiter.hit("t", rate, burst)]
        finally:
            await limiter.close()

    decisions = asyncio.run(run())
    assert calls == [6, 6]
    assert all(d.allowed for d in decisions)


def test_hits_waiting_on_a_call_spend_its_lease_and_a_lease_takes_only_what_is_left(settings: Any) -> None:
    limiter, calls = _leasing(settings)
    limiter.lease_s = 20.0  # a slow refill (one token in 2 s: none between the calls) with a lease of min(10, 5) = 5
    rate, burst = 0.5, 100

    async def run() -> list[Decision]:
        try:
            await limiter.redis.hset(limiter.prefix + "t", mapping={"tokens": "2", "ts": "99999999999"})  # two left
            return list(await asyncio.gather(*(limiter.hit("t", rate, burst) for _ in range(3))))
        finally:
            await limiter.close()

    decisions = asyncio.run(run())
    # the first call asked for 1 + 5 and got 2: the first hit's token and a lease of one, which the second hit
    # (waiting meanwhile) spends; the third makes the next call and finds the bucket empty
    assert calls == [6, 6]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].retry_after_s > 0
