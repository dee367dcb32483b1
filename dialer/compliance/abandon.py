"""Rolling abandonment windows: abandons / live answers over a campaign's regulatory window.

Pure logic: the in-memory ledger here serves the simulator and single-node runs; a Redis-backed
ledger with the same interface shares the budget across nodes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class AbandonStatus:
    """A campaign's abandon position over its rolling window at one instant."""

    live_answers: int
    abandons: int
    limit: float

    @property
    def rate(self) -> float:
        """Abandons / live answers (0 when nothing has been answered yet)."""
        return self.abandons / self.live_answers if self.live_answers else 0.0

    @property
    def limit_reached(self) -> bool:
        """True when one more abandon now could put the window over its limit."""
        return (self.abandons + 1) > self.limit * max(self.live_answers, 1)


class AbandonLedger(Protocol):
    """Records live answers and abandons per campaign and reports the rolling window."""

    async def record(self, campaign: str, at: float, *, abandoned: bool) -> None:
        """Record one live answer at epoch `at`; `abandoned` if it was not connected in time."""
        ...

    async def status(self, campaign: str, at: float) -> AbandonStatus:
        """The window ending at `at`."""
        ...


class MemoryAbandonLedger:
    """In-process rolling windows, one per campaign, with a fixed window length and limit."""

    def __init__(self, window_s: float, limit: float) -> None:
        self.window_s = window_s
        self.limit = limit
        self._events: dict[str, deque[tuple[float, bool]]] = {}
        self._counts: dict[str, list[int]] = {}

    async def record(self, campaign: str, at: float, *, abandoned: bool) -> None:
        self._events.setdefault(campaign, deque()).append((at, abandoned))
        counts = self._counts.setdefault(campaign, [0, 0])
        counts[0] += 1
        counts[1] += int(abandoned)

    async def status(self, campaign: str, at: float) -> AbandonStatus:
        events = self._events.get(campaign)
        if not events:
            return AbandonStatus(0, 0, self.limit)
        counts = self._counts[campaign]
        horizon = at - self.window_s
        while events and events[0][0] <= horizon:
            _, abandoned = events.popleft()
            counts[0] -= 1
            counts[1] -= int(abandoned)
        return AbandonStatus(counts[0], counts[1], self.limit)
