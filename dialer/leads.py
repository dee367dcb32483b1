"""Leads: the records the engine dials, the store interface, retry rules and call detail records.

`LeadStore` is what the engine needs. `MemoryLeadStore` serves the simulator and tests; the Redis
store (scale-out) implements the same protocol with leases shared across nodes.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from dialer.config import RetryRule
from dialer.outcomes import Outcome


@dataclass(frozen=True, slots=True)
class Lead:
    """A number to call for a campaign, with how often it has been attempted."""

    lead_id: str
    campaign: str
    number: str  # E.164
    attempts: int = 0
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class AttemptRecord:
    """One dial attempt from claim to end: the lead's attempt record and the CDR line."""

    call_id: str
    lead_id: str
    campaign: str
    number: str
    attempt: int
    claimed_at: float
    dialled_at: float | None = None
    answered_at: float | None = None
    answer_kind: str | None = None
    connected_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    agent_id: str | None = None
    sip_status: int = 0
    reason: str = ""
    disposition: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON/CSV export."""
        return asdict(self)


def next_attempt_at(outcome: Outcome, attempts: int, rules: Mapping[Outcome, RetryRule],
                    now: float) -> float | None:
    """When to dial the lead again after `attempts` attempts ending in `outcome`, or None if done."""
    rule = rules.get(outcome)
    if rule is None or attempts >= rule.max_attempts:
        return None
    return now + rule.delay_s


class LeadStore(Protocol):
    """Claims leads for dialing and records what became of each attempt."""

    async def claim(self, campaign: str, count: int, now: float) -> list[Lead]:
        """Lease up to `count` leads due at `now`; each is claimed by this node alone."""
        ...

    async def complete(self, lead: Lead, record: AttemptRecord, retry_at: float | None) -> None:
        """Record the attempt, release the lease, and reschedule the lead at `retry_at` (or finish it)."""
        ...

    async def schedule_callback(self, campaign: str, lead_id: str, at: float) -> None:
        """Dial the lead again at epoch `at` (an agent-set callback)."""
        ...


class MemoryLeadStore:
    """An in-process hopper: a schedule of due leads, optionally refilled by a generator."""

    def __init__(self, generator: Callable[[str, int], Lead] | None = None) -> None:
        self._due: dict[str, list[tuple[float, int, Lead]]] = {}
        self._leads: dict[str, Lead] = {}
        self._claimed: set[str] = set()
        self._seq = itertools.count()
        self._generator = generator
        self._generated: dict[str, int] = {}
        self.records: list[AttemptRecord] = []

    def add(self, lead: Lead, at: float = 0.0) -> None:
        """Put a lead in the hopper, due at `at`."""
        self._leads[lead.lead_id] = lead
        heapq.heappush(self._due.setdefault(lead.campaign, []), (at, next(self._seq), lead))

    async def claim(self, campaign: str, count: int, now: float) -> list[Lead]:
        out: list[Lead] = []
        due = self._due.setdefault(campaign, [])
        while len(out) < count and due and due[0][0] <= now:
            _, _, lead = heapq.heappop(due)
            self._claimed.add(lead.lead_id)
            out.append(lead)
        while len(out) < count and self._generator is not None:
            n = self._generated.get(campaign, 0)
            self._generated[campaign] = n + 1
            lead = self._generator(campaign, n)
            self._leads[lead.lead_id] = lead
            self._claimed.add(lead.lead_id)
            out.append(lead)
        return out

    async def complete(self, lead: Lead, record: AttemptRecord, retry_at: float | None) -> None:
        self._claimed.discard(lead.lead_id)
        self.records.append(record)
        updated = Lead(lead.lead_id, lead.campaign, lead.number, record.attempt, lead.data)
        self._leads[lead.lead_id] = updated
        if retry_at is not None:
            heapq.heappush(self._due.setdefault(lead.campaign, []), (retry_at, next(self._seq), updated))

    async def schedule_callback(self, campaign: str, lead_id: str, at: float) -> None:
        lead = self._leads[lead_id]
        heapq.heappush(self._due.setdefault(campaign, []), (at, next(self._seq), lead))

    def pending(self, campaign: str) -> int:
        """Leads waiting in the hopper (due or not), excluding claimed ones."""
        return len(self._due.get(campaign, ()))
