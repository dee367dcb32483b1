"""Rolling abandonment windows: abandons / live answers over a campaign's regulatory window.

The in-memory ledger serves the simulator and single-node runs; `RedisAbandonLedger`, with the same
interface, shares the budget across nodes (30 days for `us`, 24 h with the AMD false-positive
estimate for `uk`, the calendar month for `ca`; see `dialer.compliance.rules`). `AbandonProtection`
implements Ofcom's 72-hour rule.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from dialer.compliance.rules import AbandonPolicy, WindowKind
from dialer.errors import ComplianceError


@dataclass(frozen=True, slots=True)
class AbandonStatus:
    """A campaign's abandon position over its rolling window at one instant."""

    live_answers: int
    abandons: int
    limit: float
    window_s: float = 0.0  # length of a rolling window (0: a calendar window, which does not roll)

    @property
    def rate(self) -> float:
        """Abandons / live answers (0 when nothing has been answered yet)."""
        return self.abandons / self.live_answers if self.live_answers else 0.0

    @property
    def limit_reached(self) -> bool:
        """True when one more abandon now could put the window over its limit."""
        return (self.abandons + 1) > self.limit * max(self.live_answers, 1)


class AbandonLedger(Protocol):
    """Records live answers and abandons per campaign and reports the rolling window.

    `event_id` (the call's id) makes a record idempotent: the engine retries a record whose reply was
    lost, and a ledger that may have applied it already must not count it twice (a live answer
    counted twice understates the abandon rate).
    """

    async def record(self, campaign: str, at: float, *, abandoned: bool, event_id: str | None = None) -> None:
        """Record one live answer at epoch `at`; `abandoned` if it was not connected in time."""
        ...

    async def record_machine(self, campaign: str, at: float, *, event_id: str | None = None) -> None:
        """Record one AMD "machine" verdict (rule packs that estimate AMD false positives use it)."""
        ...

    async def status(self, campaign: str, at: float) -> AbandonStatus:
        """The window ending at `at`."""
        ...


class MemoryAbandonLedger:
    """In-process rolling windows, one per campaign, with a fixed window length and limit.

    A call in the same process cannot lose its reply, so `event_id` is not needed here.
    """

    def __init__(self, window_s: float, limit: float) -> None:
        self.window_s = window_s
        self.limit = limit
        self._events: dict[str, deque[tuple[float, bool]]] = {}
        self._counts: dict[str, list[int]] = {}

    async def record(self, campaign: str, at: float, *, abandoned: bool, event_id: str | None = None) -> None:
        self._events.setdefault(campaign, deque()).append((at, abandoned))
        counts = self._counts.setdefault(campaign, [0, 0])
        counts[0] += 1
        counts[1] += int(abandoned)

    async def record_machine(self, campaign: str, at: float, *, event_id: str | None = None) -> None:
        """Machine verdicts do not count in a plain rolling window."""

    async def status(self, campaign: str, at: float) -> AbandonStatus:
        events = self._events.get(campaign)
        if not events:
            return AbandonStatus(0, 0, self.limit, self.window_s)
        counts = self._counts[campaign]
        horizon = at - self.window_s
        while events and events[0][0] <= horizon:
            _, abandoned = events.popleft()
            counts[0] -= 1
            counts[1] -= int(abandoned)
        return AbandonStatus(counts[0], counts[1], self.limit, self.window_s)


# Redis-backed ledger ------------------------------------------------------------------------------


def bucket_s(policy: AbandonPolicy) -> float:
    """Bucket width of a rolling window: 1/720 of it (1 h for 30 days, 2 min for 24 h), at least 1 s."""
    return max(1.0, policy.window_s / 720)


RECEIPT_TTL_S = 3600
"""How long the receipt of an identified record is kept: far longer than the engine retries one."""

# KEYS[1] the campaign's hash, KEYS[2] the record's receipt (optional); ARGV[1] the hash's TTL (s),
# ARGV[2] the receipt's (s), ARGV[3..] the counters to increment. With a receipt, a record applied
# before (its reply lost, the client retrying) changes nothing; the receipt and the counts are
# written together, so either both survive a crash or neither does.
_RECORD = """
if #KEYS > 1 and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
for i = 3, #ARGV do
  redis.call('HINCRBY', KEYS[1], ARGV[i], 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def month_key(at: float) -> str:
    """Calendar month (UTC) of epoch `at`, e.g. "2026-11"."""
    return time.strftime("%Y-%m", time.gmtime(at))


class RedisAbandonLedger:
    """Abandonment windows shared by every dialer node through Redis.

    Rolling windows are kept as counters per bucket (1/720 of the window) in one hash per campaign,
    `{prefix}abandon:{campaign}`, fields `<bucket>:l|a|m` (live answers, abandons, machine verdicts).
    A bucket counts while any part of it overlaps the window, so the window reads up to one bucket
    long: slightly more history, never less. Calendar-month windows (CRTC) use the month as bucket.
    A record with an `event_id` leaves a receipt, `{prefix}abandon:{campaign}:rec:<kind>:<event_id>`
    (kept `RECEIPT_TTL_S`), so that a retried record counts once.

    Ofcom counts an estimate of live people AMD took for machines as both answered and abandoned:
    `machines x amd_false_positive_rate`, rounded up, is added to both sides of the ratio.
    """

    def __init__(self, redis: aioredis.Redis, windows: Mapping[str, AbandonPolicy], *,
                 default: AbandonPolicy | None = None, prefix: str = "dialer:") -> None:
        """`windows` maps campaign names to their policy (`rules.abandon_policy(campaign)`)."""
        self.redis = redis
        self.windows = dict(windows)
        self.default = default
        self.prefix = prefix
        self._record = redis.register_script(_RECORD)

    def _window(self, campaign: str) -> AbandonPolicy:
        window = self.windows.get(campaign, self.default)
        if window is None:
            raise ComplianceError(f"no abandonment window configured for campaign {campaign!r}")
        return window

    def _key(self, campaign: str) -> str:
        return f"{self.prefix}abandon:{campaign}"

    @staticmethod
    def _bucket(window: AbandonPolicy, at: float) -> str:
        if window.kind is WindowKind.CALENDAR_MONTH:
            return month_key(at)
        return str(int(at // bucket_s(window)))

    def _ttl_s(self, window: AbandonPolicy) -> int:
        # Keep a campaign's counters a little beyond its window; an idle campaign's hash expires.
        span = 32 * 86400.0 if window.kind is WindowKind.CALENDAR_MONTH else window.window_s
        return int(span + bucket_s(window)) + 60

    async def record(self, campaign: str, at: float, *, abandoned: bool, event_id: str | None = None) -> None:
        window = self._window(campaign)
        bucket = self._bucket(window, at)
        fields = [f"{bucket}:l", f"{bucket}:a"] if abandoned else [f"{bucket}:l"]
        await self._apply(campaign, window, "l", event_id, fields)

    async def record_machine(self, campaign: str, at: float, *, event_id: str | None = None) -> None:
        """Count one AMD "machine" verdict (for the Ofcom false-positive estimate)."""
        window = self._window(campaign)
        await self._apply(campaign, window, "m", event_id, [f"{self._bucket(window, at)}:m"])

    async def _apply(self, campaign: str, window: AbandonPolicy, kind: str, event_id: str | None,
                     fields: list[str]) -> None:
        key = self._key(campaign)
        keys = [key] if event_id is None else [key, f"{key}:rec:{kind}:{event_id}"]
        await self._record(keys=keys, args=[self._ttl_s(window), RECEIPT_TTL_S, *fields])

    async def status(self, campaign: str, at: float) -> AbandonStatus:
        window = self._window(campaign)
        key = self._key(campaign)
        raw: dict[bytes | str, bytes | str] = await self.redis.hgetall(key)
        counts = {"l": 0, "a": 0, "m": 0}
        stale: list[bytes | str] = []
        current = month_key(at)
        horizon = at - window.window_s
        for field, value in raw.items():
            name = field.decode() if isinstance(field, bytes) else field
            bucket, _, kind = name.rpartition(":")
            if window.kind is WindowKind.CALENDAR_MONTH:
                inside = bucket == current
                old = bucket < current
            else:
                start = int(bucket) * bucket_s(window)
                inside = start + bucket_s(window) > horizon and start <= at
                old = start + bucket_s(window) <= horizon
            if inside and kind in counts:
                counts[kind] += int(value)
            elif old:
                stale.append(field)
        if stale:
            await self.redis.hdel(key, *stale)
        false_positives = math.ceil(counts["m"] * window.amd_false_positive_rate)
        rolling = window.window_s if window.kind is WindowKind.ROLLING else 0.0
        return AbandonStatus(counts["l"] + false_positives, counts["a"] + false_positives, window.limit,
                             rolling)


class AbandonProtection:
    """Ofcom's 72-hour rule: a number whose call was abandoned is not called again within 72 hours
    unless a live agent is guaranteed for it. Shared through Redis; the gate reads the same key.
    """

    def __init__(self, redis: aioredis.Redis, *, protect_s: float = 72 * 3600.0,
                 prefix: str = "dialer:") -> None:
        self.redis = redis
        self.protect_s = protect_s
        self.prefix = prefix

    def key(self, number: str) -> str:
        """Redis key protecting `number` (value: epoch until which it is protected)."""
        return f"{self.prefix}abandon:protect:{number}"

    async def protect(self, number: str, at: float) -> None:
        """Protect `number` for `protect_s` from epoch `at` (the abandon), keeping the later expiry."""
        until = at + self.protect_s
        current = await self.protected_until(number)
        if current is not None and current >= until:
            return
        await self.redis.set(self.key(number), repr(until), pxat=int(until * 1000))

    async def protected_until(self, number: str) -> float | None:
        """Epoch until which `number` is protected, or None."""
        raw = await self.redis.get(self.key(number))
        return float(raw) if raw is not None else None
