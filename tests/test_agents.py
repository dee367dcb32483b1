from __future__ import annotations

import pytest

from dialer.agents import AgentError, AgentPool
from dialer.outcomes import AgentState as S


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_legal_path_through_a_call_and_time_accounting() -> None:
    clock = Clock()
    pool = AgentPool(clock)
    pool.add("a1", "sip:a1@pbx")
    pool.transition("a1", S.READY)
    clock.now += 30
    pool.transition("a1", S.RESERVED, call_id="c1")
    assert pool.get("a1").call_id == "c1"
    pool.transition("a1", S.TALKING)
    clock.now += 120
    pool.transition("a1", S.WRAP_UP)
    clock.now += 10
    pool.transition("a1", S.READY)
    agent = pool.get("a1")
    assert pool.seconds_in(agent, S.TALKING) == 120
    assert pool.seconds_in(agent, S.WRAP_UP) == 10
    assert pool.seconds_in(agent, S.READY) == 30
    assert agent.ready_spells == 1 and agent.calls_handled == 1 and agent.call_id is None


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ((), S.TALKING),  # logged out cannot talk
        ((S.READY,), S.TALKING),  # only a reserved agent starts talking
        ((S.READY, S.RESERVED, S.TALKING), S.READY),  # talking must go through wrap-up
        ((S.READY, S.RESERVED, S.TALKING), S.LOGGED_OUT),  # nor log out mid-call
        ((S.PAUSED,), S.RESERVED),  # a paused agent is never offered a call
    ],
)
def test_illegal_transitions_are_refused(path: tuple[S, ...], bad: S) -> None:
    pool = AgentPool(Clock())
    pool.add("a1", "sip:a1@pbx")
    for state in path:
        pool.transition("a1", state)
    with pytest.raises(AgentError, match=f"cannot go from {pool.get('a1').state} to {bad}"):
        pool.transition("a1", bad)


def test_unknown_agent_is_a_clear_error() -> None:
    with pytest.raises(AgentError, match="unknown agent 'ghost'"):
        AgentPool(Clock()).get("ghost")


def test_selection_prefers_priority_then_longest_idle_in_the_pool_with_skills() -> None:
    clock = Clock()
    pool = AgentPool(clock)
    for name, skills, prio, pool_name in [
        ("early", {"es"}, 0, "sales"),
        ("late", {"es"}, 0, "sales"),
        ("other_pool", {"es"}, 0, "support"),
        ("no_skill", set(), 0, "sales"),
    ]:
        pool.add(name, f"sip:{name}@pbx", pool_name, skills=skills, priority=prio)
    pool.transition("no_skill", S.READY)
    clock.now += 1
    pool.transition("early", S.READY)
    clock.now += 1
    pool.transition("late", S.READY)
    pool.transition("other_pool", S.READY)
    assert pool.select("sales").agent_id == "no_skill"  # type: ignore[union-attr]
    assert pool.select("sales", frozenset({"es"})).agent_id == "early"  # type: ignore[union-attr]
    pool.add("late", "sip:late@pbx", "sales", skills={"es"}, priority=5)
    assert pool.select("sales", frozenset({"es"})).agent_id == "late"  # type: ignore[union-attr]
    assert pool.select("nobody") is None


def test_listeners_see_every_change_with_the_previous_state() -> None:
    pool = AgentPool(Clock())
    seen: list[tuple[str, S, S]] = []
    pool.subscribe(lambda agent, prev: seen.append((agent.agent_id, prev, agent.state)))
    pool.add("a1", "sip:a1@pbx")
    pool.transition("a1", S.READY)
    pool.transition("a1", S.PAUSED, reason="lunch")
    assert pool.get("a1").pause_reason == "lunch"
    assert seen == [("a1", S.LOGGED_OUT, S.READY), ("a1", S.READY, S.PAUSED)]
