"""Ratio dialing: a fixed dial level times the ready agents, less the calls already in flight.

The classic "power dialer" setting. It knows nothing about when busy agents will free up, so its
dial level must be tuned by hand for each list and team size; the simulator's benchmark tunes it
with hindsight to show the best any fixed level could do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field

from dialer.pacing.base import PacingPolicy, PacingSnapshot, PolicyParams


class RatioParams(PolicyParams):
    """Knobs of the `ratio` policy."""

    dial_level: float = Field(
        1.5, ge=1.0, le=20.0, description="lines kept in flight per ready agent (1.0 = progressive)"
    )


@dataclass
class RatioPolicy(PacingPolicy):
    """Keep round(dial_level x ready agents) calls in flight."""

    name: ClassVar[str] = "ratio"
    Params: ClassVar[type[PolicyParams]] = RatioParams

    def decide(self, snap: PacingSnapshot) -> int:
        params = self.params
        assert isinstance(params, RatioParams)
        # Round half up so that 1 ready agent at level 1.5 gets 2 lines, as operators expect.
        goal = int(params.dial_level * snap.ready + 0.5)
        return goal - snap.in_flight
