"""Progressive dialing: one line per ready agent. No abandons by construction (beyond AMD errors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dialer.pacing.base import PacingPolicy, PacingSnapshot, PolicyParams, progressive_count


class ProgressiveParams(PolicyParams):
    """Progressive has no knobs."""


@dataclass
class ProgressivePolicy(PacingPolicy):
    """Dial one number per ready agent that has no call in flight for it."""

    name: ClassVar[str] = "progressive"
    Params: ClassVar[type[PolicyParams]] = ProgressiveParams

    def decide(self, snap: PacingSnapshot) -> int:
        return progressive_count(snap)
