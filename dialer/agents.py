"""Agents: the state machine, pools, and selection of the agent who takes an answered call.

Pure logic with an injected clock; the engine and the API drive it, the Redis registry (scale-out)
mirrors it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from dialer.errors import DialerError
from dialer.outcomes import AgentState

S = AgentState

TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    S.LOGGED_OUT: frozenset({S.READY, S.PAUSED}),
    S.READY: frozenset({S.RESERVED, S.PAUSED, S.LOGGED_OUT}),
    S.RESERVED: frozenset({S.TALKING, S.READY, S.PAUSED}),
    S.TALKING: frozenset({S.WRAP_UP}),
    S.WRAP_UP: frozenset({S.READY, S.PAUSED, S.LOGGED_OUT}),
    S.PAUSED: frozenset({S.READY, S.LOGGED_OUT}),
}
"""Allowed moves. A talking agent must go through wrap-up; only a reserved agent can start talking."""


class AgentError(DialerError):
    """An agent operation is not possible (unknown agent, illegal state change)."""


@dataclass(slots=True)
class Agent:
    """One agent: identity, where to reach them, and their current state with its start time."""

    agent_id: str
    uri: str
    pool: str = "default"
    skills: frozenset[str] = frozenset()
    priority: int = 0  # higher is offered calls first
    state: AgentState = S.LOGGED_OUT
    state_since: float = 0.0
    call_started_at: float = 0.0  # when the current call was connected (talking and wrap-up)
    pause_reason: str = ""
    call_id: str | None = None
    time_in_state: dict[AgentState, float] = field(default_factory=dict)
    calls_handled: int = 0
    ready_spells: int = 0  # completed spells of waiting in READY (for mean wait between calls)
    last_spell_s: float = 0.0  # length of the state spell that the last transition ended


Listener = Callable[[Agent, AgentState], None]


class AgentPool:
    """All agents known to this node, grouped by pool name, with a validated state machine."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._agents: dict[str, Agent] = {}
        self._pools: dict[str, list[Agent]] = {}
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(agent, previous_state)` after every state change."""
        self._listeners.append(listener)

    def add(self, agent_id: str, uri: str, pool: str = "default", *, skills: Iterable[str] = (),
            priority: int = 0) -> Agent:
        """Register an agent (logged out). Re-adding an existing id updates its URI, pool and skills."""
        existing = self._agents.get(agent_id)
        if existing is not None:
            if existing.pool != pool:
                self._pools[existing.pool].remove(existing)
                self._pools.setdefault(pool, []).append(existing)
            existing.uri, existing.pool, existing.skills = uri, pool, frozenset(skills)
            existing.priority = priority
            return existing
        agent = Agent(agent_id, uri, pool, frozenset(skills), priority, state_since=self._clock())
        self._agents[agent_id] = agent
        self._pools.setdefault(pool, []).append(agent)
        return agent

    def get(self, agent_id: str) -> Agent:
        """The agent named `agent_id`, or `AgentError`."""
        try:
            return self._agents[agent_id]
        except KeyError:
            raise AgentError(f"unknown agent {agent_id!r}") from None

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)

    def in_pool(self, pool: str) -> list[Agent]:
        """Agents of `pool`, logged in or not."""
        return list(self._pools.get(pool, ()))

    def transition(self, agent_id: str, new: AgentState, *, call_id: str | None = None,
                   reason: str = "") -> Agent:
        """Move an agent to `new`, or raise `AgentError` if the state machine forbids it."""
        agent = self.get(agent_id)
        old = agent.state
        if new not in TRANSITIONS[old]:
            raise AgentError(f"agent {agent_id!r} cannot go from {old} to {new}")
        now = self._clock()
        agent.last_spell_s = now - agent.state_since
        agent.time_in_state[old] = agent.time_in_state.get(old, 0.0) + agent.last_spell_s
        if old is S.READY:
            agent.ready_spells += 1
        agent.state, agent.state_since = new, now
        if new is S.RESERVED:
            agent.call_id = call_id
        elif new is S.TALKING:
            agent.call_started_at = now
            agent.calls_handled += 1
        elif new in (S.READY, S.LOGGED_OUT, S.PAUSED):
            agent.call_id = None
        agent.pause_reason = reason if new is S.PAUSED else ""
        for listener in self._listeners:
            listener(agent, old)
        return agent

    def select(self, pool: str, skills: frozenset[str] = frozenset()) -> Agent | None:
        """The ready agent of `pool` to offer a call to: highest priority, then longest idle."""
        best: Agent | None = None
        for agent in self._pools.get(pool, ()):
            if agent.state is not S.READY or not skills <= agent.skills:
                continue
            if best is None or (-agent.priority, agent.state_since) < (-best.priority, best.state_since):
                best = agent
        return best

    def seconds_in(self, agent: Agent, state: AgentState) -> float:
        """Total time `agent` has spent in `state`, including the current spell."""
        total = agent.time_in_state.get(state, 0.0)
        if agent.state is state:
            total += self._clock() - agent.state_since
        return total
