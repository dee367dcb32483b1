"""`vicidial_adaptive`: a faithful baseline of VICIdial's ADAPT_* dial-level algorithm.

Modelled on AST_VDadapt.pl (dial level) and AST_VDauto_dial.pl (calls to place), read from the
VICIdial sources and re-expressed here:

- Every second a sample of R (agents READY), W (answered calls waiting for an agent) and T (agents
  logged in, paused ones included) is taken; the averages are over the last 15 samples.
- Every 15 s: differential d = (R̄ − W̄) + adaptive_dl_diff_target; m = d / T̄; the intensity bends
  m: g = m·(1 + i/100) when m ≥ 0, g = m·|i/100 − 1| when m < 0; L ← clamp(L·(1 + g), 1, max).
  Then the drop rules: if more than 20 calls were placed in the last minute and more than 50 % of
  them were dropped, L is halved; if more than 50 calls were placed today and drops / answers today
  exceed adaptive_dropped_percentage, ADAPT_HARD_LIMIT sets L = 1, ADAPT_AVERAGE halves L, and
  ADAPT_TAPERED scales L by the share of the shift left (VICIdial: hours to the latest target time
  / 10, at most 1; past the target L = 1). L never goes below 1.
- Every 2.5 s (the auto-dial loop): goal = round(L × agents) − calls already in flight, where agents
  are the READY ones (available_only_ratio_tally = Y, the setting that matches the formula
  above) or every non-paused agent, whose connected calls then also count as in flight (= N).

"Today" is the policy's lifetime (one shift); drops are counted from the campaign window's abandon
counter, calls and answers from the attempts the policy is shown.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from pydantic import Field

from dialer.outcomes import AgentState
from dialer.pacing.base import PacingPolicy, PacingSnapshot, PolicyParams

SAMPLE_INTERVAL_S = 1.0  # AST_VDadapt.pl loop delay
SAMPLES = 15  # averaging depth of R, W, T
LEVEL_INTERVAL_S = 15.0  # dial level recalculation
DROPS_INTERVAL_S = 60.0  # drop statistics refresh
DIAL_INTERVAL_S = 2.5  # AST_VDauto_dial.pl loop
ONE_MINUTE_S = 60.0


class DropMethod(StrEnum):
    """What VICIdial does once today's drop percentage is over the limit."""

    HARD_LIMIT = "hard_limit"  # ADAPT_HARD_LIMIT: dial level 1.0
    AVERAGE = "average"  # ADAPT_AVERAGE: halve the dial level
    TAPERED = "tapered"  # ADAPT_TAPERED: scale by the share of the shift left


class VicidialParams(PolicyParams):
    """The knobs VICIdial exposes for adaptive campaigns (same meaning and units)."""

    auto_dial_level: float = Field(1.0, ge=1.0, le=20.0, description="starting dial level")
    adaptive_intensity: int = Field(
        0, ge=-40, le=40, description="percent: >0 raises the level faster, <0 slower (VICIdial -20..20)"
    )
    adaptive_dl_diff_target: float = Field(
        0.0, ge=-50.0, le=50.0, description="agents: -1 aims at one agent waiting, +1 at one call waiting"
    )
    adaptive_maximum_level: float = Field(3.0, ge=1.0, le=20.0, description="cap on the dial level")
    adaptive_dropped_percentage: float = Field(
        3.0, gt=0.0, le=100.0, description="percent of answered calls dropped today that triggers the method"
    )
    drop_method: DropMethod = DropMethod.TAPERED
    adaptive_latest_target_s: float = Field(
        8 * 3600.0, gt=0.0, description="ADAPT_TAPERED: seconds from the start of the shift to its end"
    )
    available_only_ratio_tally: bool = Field(
        True, description="multiply the level by READY agents only (Y) or by every non-paused agent (N)"
    )


@dataclass
class VicidialAdaptivePolicy(PacingPolicy):
    """VICIdial's adaptive-predictive dial level, driven by the agents-waiting differential."""

    name: ClassVar[str] = "vicidial_adaptive"
    Params: ClassVar[type[PolicyParams]] = VicidialParams

    level: float = 1.0
    _started_at: float | None = None
    _next_sample: float = 0.0
    _next_level: float = 0.0
    _next_drops: float = 0.0
    _next_dial: float = 0.0
    _samples: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    _recent_calls: deque[float] = field(default_factory=deque)
    _recent_drops: deque[float] = field(default_factory=deque)
    _prev_window_abandons: int | None = None
    _calls_today: int = 0
    _answers_today: int = 0
    _drops_today: int = 0
    # Drop statistics as last refreshed (VICIdial recomputes them once a minute).
    _calls_one: int = 0
    _drops_one: int = 0
    _drops_answers_today_pct: float = 0.0

    def __post_init__(self) -> None:
        self.level = self._p.auto_dial_level

    @property
    def _p(self) -> VicidialParams:
        params = self.params
        assert isinstance(params, VicidialParams)
        return params

    def observe(self, snap: PacingSnapshot) -> None:
        if self._started_at is None:
            self._started_at = snap.now
            self._next_sample = self._next_drops = self._next_dial = snap.now
            self._next_level = snap.now + LEVEL_INTERVAL_S
        self._count_outcomes(snap)
        if snap.now >= self._next_sample:
            self._next_sample = snap.now + SAMPLE_INTERVAL_S
            self._samples.append((snap.ready, snap.waiting, len(snap.agents)))
        if snap.now >= self._next_drops:
            self._next_drops = snap.now + DROPS_INTERVAL_S
            self._refresh_drop_stats()
        if snap.now >= self._next_level:
            self._next_level = snap.now + LEVEL_INTERVAL_S
            self._recalculate_level(snap.now)

    def decide(self, snap: PacingSnapshot) -> int:
        self.observe(snap)
        if snap.now < self._next_dial:
            return 0
        # Keep the 2.5 s cadence on average even when ticks are whole seconds apart.
        self._next_dial += DIAL_INTERVAL_S
        if self._next_dial <= snap.now:
            self._next_dial = snap.now + DIAL_INTERVAL_S
        p = self._p
        if p.available_only_ratio_tally:
            agents = snap.ready
            existing = snap.in_flight
        else:
            connected = snap.count(AgentState.RESERVED) + snap.count(AgentState.TALKING)
            agents = snap.ready + connected
            existing = snap.in_flight + connected
        agents_target = max(0.0, agents + p.adaptive_dl_diff_target)
        goal = int(self.level * agents_target + 0.5)  # Perl sprintf("%.0f")
        return goal - existing

    def _count_outcomes(self, snap: PacingSnapshot) -> None:
        for attempt in snap.new_attempts:
            self._calls_today += 1
            self._recent_calls.append(snap.now)
            if attempt.outcome.is_live:
                self._answers_today += 1
        if self._prev_window_abandons is not None:
            # The window counter only grows within a shift; a drop in it is old abandons expiring.
            new_drops = max(0, snap.window_abandons - self._prev_window_abandons)
            self._drops_today += new_drops
            self._recent_drops.extend([snap.now] * new_drops)
        self._prev_window_abandons = snap.window_abandons
        horizon = snap.now - ONE_MINUTE_S
        while self._recent_calls and self._recent_calls[0] <= horizon:
            self._recent_calls.popleft()
        while self._recent_drops and self._recent_drops[0] <= horizon:
            self._recent_drops.popleft()

    def _refresh_drop_stats(self) -> None:
        self._calls_one = len(self._recent_calls)
        self._drops_one = len(self._recent_drops)
        answers = max(1, self._answers_today)
        self._drops_answers_today_pct = 100.0 * self._drops_today / answers if self._drops_today else 0.0

    def _recalculate_level(self, now: float) -> None:
        p = self._p
        if not self._samples:
            return
        n = len(self._samples)
        ready_avg = sum(s[0] for s in self._samples) / n
        waiting_avg = sum(s[1] for s in self._samples) / n
        total_avg = sum(s[2] for s in self._samples) / n
        if total_avg <= 0:
            return
        differential = (ready_avg - waiting_avg) + p.adaptive_dl_diff_target
        mul = differential / total_avg if differential != 0 else 0.0
        intensity = p.adaptive_intensity / 100.0
        bent = mul * abs(intensity - 1.0) if mul < 0 else mul * (intensity + 1.0)
        level = min(self.level * (1.0 + bent), p.adaptive_maximum_level)
        level = max(level, 1.0)
        # Drop percentage rules (VICIdial applies them after the cap, before the floor of 1).
        if self._calls_one > 20 and 100.0 * self._drops_one / self._calls_one > 50.0:
            level /= 2.0
        if self._calls_today > 50 and self._drops_answers_today_pct > p.adaptive_dropped_percentage:
            if p.drop_method is DropMethod.HARD_LIMIT:
                level = 1.0
            elif p.drop_method is DropMethod.AVERAGE:
                level /= 2.0
            else:
                assert self._started_at is not None
                hours_left = (p.adaptive_latest_target_s - (now - self._started_at)) / 3600.0
                level = 1.0 if hours_left < 0 else level * min(1.0, hours_left / 10.0)
        self.level = max(level, 1.0)
