"""`issabel`: a faithful baseline of the Issabel (ex-Elastix) call-center dialer's predictor.

Modelled on Issabel's `Predictor.class.php` and `CampaignProcess.class.php`, read from the sources
and re-expressed here:

- A busy agent counts as "about to be free" when the probability that a call lasting an
  exponentially distributed time with the campaign's mean duration is over by (its elapsed time +
  the mean time to answer) is at least `probability_threshold` (Issabel: the `dialer_qos` setting,
  0.97 by default). This is the unconditional CDF at elapsed + answer time, as Issabel computes it.
- calls = free agents + agents about to be free − callers waiting in the queue; then the calls
  already placed and waiting for an answer are subtracted (never below 0).
- Overcommit: if at least 10 calls finished in the last 30 minutes and some were answered, calls =
  round(calls / max(answer ratio, 0.20)).
- The prediction is used once the campaign has at least 10 completed calls; before that only free
  agents count (Issabel's MIN_MUESTRAS).

Mapping onto this dialer: the "call duration" an agent is busy for is the handle time (talk +
wrap-up), and its elapsed time is the time since the call was connected. Issabel has no answering-
machine detection, so every answered call reaches an agent; here machines are screened out, so the
answer ratio counts human answers only unless `count_machines_as_answered` is set.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from dialer.outcomes import AgentState, Outcome
from dialer.pacing.base import PacingPolicy, PacingSnapshot, PolicyParams

HISTORY_WINDOW_S = 30 * 60.0  # Issabel's overcommit window
MIN_HISTORY_CALLS = 10  # overcommit needs this many finished calls in the window
MIN_SAMPLES = 10  # Issabel's MIN_MUESTRAS: completed calls before predicting
ANSWER_RATIO_FLOOR = 0.20
DEFAULT_ANSWER_TIME_S = 8.0  # Issabel's fixed default time to answer


class IssabelParams(PolicyParams):
    """Knobs of the `issabel` policy."""

    probability_threshold: float = Field(
        0.97, gt=0.0, lt=1.0, description="P(busy agent free by the time a new call answers) to count it"
    )
    overcommit: bool = Field(True, description="divide by the 30-minute answer ratio (dialer_overcommit)")
    count_machines_as_answered: bool = Field(
        False, description="count machine answers in the answer ratio (Issabel has no AMD)"
    )


@dataclass
class IssabelPolicy(PacingPolicy):
    """Free agents plus agents likely free by the next answer, divided by the answer ratio."""

    name: ClassVar[str] = "issabel"
    Params: ClassVar[type[PolicyParams]] = IssabelParams

    _history: deque[tuple[float, bool]] = field(default_factory=deque)  # (seen at, answered)
    _handles: int = 0
    _handle_sum_s: float = 0.0
    _answers: int = 0
    _answer_time_sum_s: float = 0.0

    @property
    def _p(self) -> IssabelParams:
        params = self.params
        assert isinstance(params, IssabelParams)
        return params

    def observe(self, snap: PacingSnapshot) -> None:
        count_machines = self._p.count_machines_as_answered
        for attempt in snap.new_attempts:
            live = attempt.outcome.is_live
            answered = live or (count_machines and attempt.outcome is Outcome.MACHINE)
            self._history.append((snap.now, answered))
            if live:
                self._answers += 1
                self._answer_time_sum_s += attempt.ring_s
        for handle in snap.new_handles:
            self._handles += 1
            self._handle_sum_s += handle.talk_s + handle.wrap_s
        horizon = snap.now - HISTORY_WINDOW_S
        while self._history and self._history[0][0] < horizon:
            self._history.popleft()

    @property
    def mean_handle_s(self) -> float:
        """Mean handle time of the calls completed so far (Issabel's `promedio`)."""
        return self._handle_sum_s / self._handles if self._handles else 0.0

    @property
    def mean_answer_s(self) -> float:
        """Mean time from dial to a human answer (Issabel's `tiempo contestar`)."""
        return self._answer_time_sum_s / self._answers if self._answers else DEFAULT_ANSWER_TIME_S

    def decide(self, snap: PacingSnapshot) -> int:
        self.observe(snap)
        p = self._p
        free = snap.ready
        about_to_free = 0
        if self._handles >= MIN_SAMPLES and self.mean_handle_s > 0:
            rate = 1.0 / self.mean_handle_s
            answer_s = self.mean_answer_s
            for agent in snap.agents:
                if agent.state in (AgentState.TALKING, AgentState.WRAP_UP, AgentState.RESERVED):
                    p_done = 1.0 - math.exp(-rate * (agent.handle_elapsed_s + answer_s))
                    if p_done >= p.probability_threshold:
                        about_to_free += 1
        calls = max(0, free + about_to_free - snap.waiting)
        pending = len(snap.ringing)
        calls = calls - pending if calls > pending else 0
        if calls > 0 and p.overcommit and len(self._history) >= MIN_HISTORY_CALLS:
            answered = sum(1 for _, ok in self._history if ok)
            if answered > 0:
                ratio = max(answered / len(self._history), ANSWER_RATIO_FLOOR)
                calls = int(calls / ratio + 0.5)  # PHP round(): half away from zero
        return calls
