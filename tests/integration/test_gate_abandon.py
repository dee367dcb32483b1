"""The Redis abandonment ledger and Ofcom's 72-hour protection against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from dialer.compliance.abandon import (
    RECEIPT_TTL_S,
    AbandonProtection,
    MemoryAbandonLedger,
    RedisAbandonLedger,
)
from dialer.compliance.dnc import connect
from dialer.compliance.rules import abandon_policy
from dialer.engine import RECORD_RETRY_S
from dialer.errors import ComplianceError
from tests.integration.compliance_support import NOW, campaign

pytestmark = pytest.mark.integration

DAY = 86400.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_url)
    yield c
    await c.aclose()


def ledger(client: aioredis.Redis, **packs: str) -> RedisAbandonLedger:
    return RedisAbandonLedger(client, {name: abandon_policy(campaign(name, rule_pack=pack))
                                       for name, pack in packs.items()})


async def test_us_thirty_day_window_is_shared_between_nodes(client: aioredis.Redis, redis_url: str) -> None:
    node_a = ledger(client, c="us")
    other = connect(redis_url)
    try:
        node_b = ledger(other, c="us")
        for i in range(97):
            await node_a.record("c", NOW - 20 * DAY + i, abandoned=False)
        for i in range(3):
            await node_b.record("c", NOW - 1 * DAY + i, abandoned=True)
        s = await node_a.status("c", NOW)
        assert (s.live_answers, s.abandons, s.limit) == (100, 3, 0.03)
        assert s.rate == 0.03 and s.limit_reached
        assert s.window_s == 30 * DAY  # pacing looks ahead at when the window's calls leave it
        # 31 days on, the 97 answers of day -20 have left the window; the 3 abandons of day -1 too
        # by day +30; in between, only the abandons are left.
        s = await node_b.status("c", NOW + 15 * DAY)
        assert (s.live_answers, s.abandons) == (3, 3)
        s = await node_b.status("c", NOW + 31 * DAY)
        assert (s.live_answers, s.abandons) == (0, 0)
    finally:
        await other.aclose()


async def test_uk_day_window_includes_the_amd_false_positive_estimate(client: aioredis.Redis) -> None:
    uk = RedisAbandonLedger(client, {"u": abandon_policy(campaign("u", rule_pack="uk",
                                                                  amd_false_positive_rate=0.05))})
    for i in range(100):
        await uk.record("u", NOW - 3600 + i, abandoned=i < 1)
    for i in range(40):
        await uk.record_machine("u", NOW - 1800 + i)
    s = await uk.status("u", NOW)
    # 40 machine verdicts x 5 % = 2 live people hung up on: (1 + 2) / (100 + 2).
    assert (s.live_answers, s.abandons) == (102, 3)
    assert s.limit_reached
    s = await uk.status("u", NOW + DAY)  # a day later the window is empty
    assert (s.live_answers, s.abandons) == (0, 0)


async def test_ca_calendar_month_at_five_percent(client: aioredis.Redis) -> None:
    ca = RedisAbandonLedger(client, {"k": abandon_policy(campaign("k", rule_pack="ca", abandon_limit=0.05,
                                                                  abandon_target=0.04))})
    oct31 = datetime(2026, 10, 31, 23, 0, tzinfo=UTC).timestamp()
    nov1 = datetime(2026, 11, 1, 1, 0, tzinfo=UTC).timestamp()
    for i in range(10):
        await ca.record("k", oct31 + i, abandoned=True)
    for i in range(20):
        await ca.record("k", nov1 + i, abandoned=i == 0)
    s = await ca.status("k", oct31 + 100)
    assert (s.live_answers, s.abandons) == (10, 10)
    # On November 1st the month starts afresh: October's abandons no longer count.
    s = await ca.status("k", nov1 + 100)
    assert (s.live_answers, s.abandons, s.limit) == (20, 1, 0.05)
    assert s.rate == 0.05
    assert s.window_s == 0.0  # a calendar month does not roll: nothing leaves it before its end
    assert s.limit_reached  # one more abandon would make 2/20 = 10 %


async def test_unknown_campaign_is_an_error(client: aioredis.Redis) -> None:
    with pytest.raises(ComplianceError, match="no abandonment window configured for campaign 'x'"):
        await ledger(client, c="us").status("x", NOW)


async def test_redis_window_is_the_exact_window_or_up_to_one_bucket_more(client: aioredis.Redis) -> None:
    policy = abandon_policy(campaign("c", rule_pack="uk", amd_false_positive_rate=0.0))
    redis_ledger = RedisAbandonLedger(client, {"c": policy})
    bucket = policy.window_s / 720
    exact = MemoryAbandonLedger(policy.window_s, policy.limit)
    longer = MemoryAbandonLedger(policy.window_s + bucket, policy.limit)
    for i in range(300):
        at = NOW + i * 599.0  # every ~10 minutes over 50 hours, never aligned on buckets
        await redis_ledger.record("c", at, abandoned=i % 7 == 0)
        await exact.record("c", at, abandoned=i % 7 == 0)
        await longer.record("c", at, abandoned=i % 7 == 0)
        if i % 20 == 0:
            r = await redis_ledger.status("c", at)
            lo, hi = await exact.status("c", at), await longer.status("c", at)
            assert lo.live_answers <= r.live_answers <= hi.live_answers
            assert lo.abandons <= r.abandons <= hi.abandons


async def test_ofcom_protection_keeps_the_later_expiry(client: aioredis.Redis) -> None:
    p = AbandonProtection(client)
    await p.protect("+447911123456", NOW)
    assert await p.protected_until("+447911123456") == NOW + 72 * 3600
    await p.protect("+447911123456", NOW - 3600)  # an older abandon does not shorten it
    assert await p.protected_until("+447911123456") == NOW + 72 * 3600
    assert await p.protected_until("+447911000000") is None


async def test_a_retried_record_counts_once(client: aioredis.Redis) -> None:
    """The engine retries a record whose reply was lost (Redis stopped right after applying it): a
    repeat with the same call id changes nothing, so a live answer never dilutes the rate twice."""
    us = ledger(client, c="us")
    await us.record("c", NOW, abandoned=False, event_id="call-1")
    await us.record("c", NOW, abandoned=False, event_id="call-1")  # the retry
    await us.record("c", NOW + 1, abandoned=True, event_id="call-2")
    await us.record("c", NOW + 1, abandoned=True, event_id="call-2")
    await us.record("c", NOW + 2, abandoned=False)  # unidentified records always count
    await us.record("c", NOW + 2, abandoned=False)
    s = await us.status("c", NOW + 3)
    assert (s.live_answers, s.abandons) == (4, 1)
    # A machine verdict of the same call is a different record; its retry counts once too.
    uk = RedisAbandonLedger(client, {"u": abandon_policy(campaign("u", rule_pack="uk",
                                                                  amd_false_positive_rate=0.5))})
    await uk.record_machine("u", NOW, event_id="call-3")
    await uk.record_machine("u", NOW, event_id="call-3")
    await uk.record("u", NOW, abandoned=False, event_id="call-3")
    s = await uk.status("u", NOW + 1)
    assert (s.live_answers, s.abandons) == (2, 1)  # 1 answer + ceil(1 machine x 0.5) both sides
    ttl = await client.ttl("dialer:abandon:c:rec:l:call-1")
    assert RECORD_RETRY_S < ttl <= RECEIPT_TTL_S
