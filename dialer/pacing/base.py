"""The pacing interface: a snapshot of one campaign's state in, a dial count out.

Policies are pure: no I/O, no clock, no event loop. A policy object may keep state between ticks
(learnt distributions, a dial level), but that state is updated only from the snapshots it is fed,
so a policy replays identically on the same snapshot sequence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from pydantic import BaseModel, ConfigDict

from dialer.outcomes import AgentState, Outcome


class AgentView(NamedTuple):
    """One logged-in agent of the campaign's pool, as pacing sees it.

    A named tuple, not a dataclass: the engine builds one per agent per tick, on the hot path.
    """

    state: AgentState
    state_elapsed_s: float  # time in the current state
    handle_elapsed_s: float = 0.0  # for talking / wrap_up: time since the current call was connected


class RingingCall(NamedTuple):
    """A call in flight that has not been answered yet."""

    elapsed_s: float  # since the INVITE


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """A dial attempt resolved since the previous tick (answered or failed)."""

    outcome: Outcome  # LIVE for any human answer, MACHINE, or a failure outcome
    ring_s: float  # INVITE to answer or to failure
    censored: bool = False  # cancelled by pacing while still ringing: it only rang longer than ring_s


@dataclass(frozen=True, slots=True)
class HandleResult:
    """An agent finished a call since the previous tick."""

    talk_s: float
    wrap_s: float


@dataclass(frozen=True, slots=True)
class PacingSnapshot:
    """Everything a policy may use to decide how many numbers to dial now for one campaign."""

    now: float  # seconds, any monotonic origin; only differences matter
    agents: tuple[AgentView, ...]  # logged-in agents (not logged-out ones)
    ringing: tuple[RingingCall, ...]  # dialled, not answered yet
    waiting: int  # answered live calls waiting for an agent (inside their 2 s)
    max_lines: int  # the campaign's cap on calls in flight (ringing + waiting)
    ring_timeout_s: float
    abandon_target: float  # fraction the controller aims for (e.g. 0.025)
    abandon_limit: float  # regulatory limit (e.g. 0.03)
    window_live_answers: int  # live answers in the campaign's rolling window
    window_abandons: int  # abandons in the window
    abandon_limit_reached: bool  # set by the abandon budget: fall back to progressive
    new_attempts: tuple[AttemptResult, ...] = ()
    new_handles: tuple[HandleResult, ...] = ()
    tick_interval_s: float = 1.0
    abandon_window_s: float = 0.0  # length of the rolling window (0: not rolling, or not known)
    # Agents per state, counted from `agents` when not given (the engine counts while it builds them).
    state_counts: Mapping[AgentState, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.state_counts and self.agents:
            object.__setattr__(self, "state_counts", Counter(a.state for a in self.agents))

    def count(self, state: AgentState) -> int:
        """Logged-in agents in `state`."""
        return self.state_counts.get(state, 0)

    @property
    def ready(self) -> int:
        """Agents waiting for a call."""
        return self.state_counts.get(AgentState.READY, 0)

    @property
    def working(self) -> int:
        """Logged-in agents that are not paused."""
        return len(self.agents) - self.state_counts.get(AgentState.PAUSED, 0)

    @property
    def in_flight(self) -> int:
        """Calls that may still need an agent: ringing plus answered-and-waiting."""
        return len(self.ringing) + self.waiting

    @property
    def window_abandon_rate(self) -> float:
        """Abandons / live answers over the rolling window."""
        return self.window_abandons / self.window_live_answers if self.window_live_answers else 0.0


class PolicyParams(BaseModel):
    """Base for each policy's parameters: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class PacingPolicy(ABC):
    """A pacing policy. Subclasses implement `decide`; `dial_count` applies the common rules."""

    name: ClassVar[str]
    Params: ClassVar[type[PolicyParams]]
    params: PolicyParams = field(default_factory=PolicyParams)

    def dial_count(self, snap: PacingSnapshot) -> int:
        """How many numbers to dial now. Never negative, never above the free lines."""
        if snap.working == 0:
            self.observe(snap)
            return 0
        if snap.abandon_limit_reached:
            self.observe(snap)
            n = progressive_count(snap)
        else:
            n = self.decide(snap)
        return max(0, min(n, snap.max_lines - snap.in_flight))

    def late_calls_to_keep(self, snap: PacingSnapshot) -> int | None:
        """How many unanswered calls that have rung the regulatory minimum (15 s) to keep ringing.

        The engine cancels the others, oldest first. None (the default) keeps every call until it
        resolves or reaches the campaign's ring timeout.
        """
        return None

    def observe(self, snap: PacingSnapshot) -> None:  # noqa: B027 - optional hook, empty by default
        """Learn from a snapshot on ticks where `decide` is not called."""

    @abstractmethod
    def decide(self, snap: PacingSnapshot) -> int:
        """The policy's own dial count (may be negative or too large: `dial_count` clamps)."""


def progressive_count(snap: PacingSnapshot) -> int:
    """One line per ready agent, less the calls already in flight for them."""
    return snap.ready - snap.in_flight
