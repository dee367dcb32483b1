"""Property tests: whatever sequence of snapshots a policy is fed, its dial count is sane."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialer.outcomes import AgentState, Outcome
from dialer.pacing import POLICIES, make_policy
from dialer.pacing.base import AgentView, AttemptResult, HandleResult, PacingSnapshot, RingingCall

agent_views = st.builds(
    AgentView,
    state=st.sampled_from([s for s in AgentState if s is not AgentState.LOGGED_OUT]),
    state_elapsed_s=st.floats(0, 5000),
    handle_elapsed_s=st.floats(0, 5000),
)
attempts = st.builds(
    AttemptResult,
    outcome=st.sampled_from([o for o in Outcome if o is not Outcome.BLOCKED]),
    ring_s=st.floats(0, 200),
)
handles = st.builds(HandleResult, talk_s=st.floats(0, 20000), wrap_s=st.floats(0, 3000))


@st.composite
def snapshot_sequences(draw: st.DrawFn) -> list[PacingSnapshot]:
    """A few minutes of a campaign with arbitrary (even inconsistent) states and counters."""
    now = draw(st.floats(-1e6, 1e6))
    live = draw(st.integers(0, 10_000))
    abandons = draw(st.integers(0, 500))
    window_s = draw(st.sampled_from([0.0, 60.0, 3600.0, 30 * 86400.0]))  # 0: a calendar window
    sequence = []
    for _ in range(draw(st.integers(1, 12))):
        now += draw(st.floats(0, 30))
        live += draw(st.integers(0, 50))
        abandons = min(live, abandons + draw(st.integers(0, 5)))
        sequence.append(PacingSnapshot(
            now=now,
            agents=tuple(draw(st.lists(agent_views, max_size=30))),
            ringing=tuple(RingingCall(r) for r in draw(st.lists(st.floats(0, 300), max_size=40))),
            waiting=draw(st.integers(0, 10)),
            max_lines=draw(st.integers(0, 200)),
            ring_timeout_s=draw(st.floats(15, 60)),
            abandon_target=0.025,
            abandon_limit=0.03,
            window_live_answers=live,
            window_abandons=abandons,
            abandon_limit_reached=draw(st.booleans()),
            new_attempts=tuple(draw(st.lists(attempts, max_size=60))),
            new_handles=tuple(draw(st.lists(handles, max_size=30))),
            abandon_window_s=window_s,
        ))
    return sequence


# Low warm-up thresholds so that the model-based branch of `predictive` runs within a sequence.
VARIANTS: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in sorted(POLICIES)] + [
    ("predictive", {"min_handles": 1, "min_attempts": 1, "min_live_answers": 1}),
    ("predictive", {"min_handles": 1, "min_attempts": 1, "min_live_answers": 1, "exact_supply_agents": 0,
                    "burst_risk": 0.0}),
    ("ratio", {"dial_level": 7.5}),
    ("vicidial_adaptive", {"auto_dial_level": 3.0, "adaptive_intensity": 40,
                           "available_only_ratio_tally": False}),
    ("issabel", {"probability_threshold": 0.01}),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(VARIANTS), sequence=snapshot_sequences())
def test_dial_count_is_never_negative_nor_above_free_lines(
    variant: tuple[str, dict[str, Any]], sequence: list[PacingSnapshot]
) -> None:
    name, params = variant
    policy = make_policy(name, params)
    for snap in sequence:
        n = policy.dial_count(snap)
        assert isinstance(n, int)
        assert 0 <= n <= max(0, snap.max_lines - snap.in_flight)
        if snap.working == 0:
            assert n == 0
