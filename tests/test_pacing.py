"""Unit tests of the pacing policies on hand-built snapshots (pure logic, no event loop)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytest

from dialer.errors import ConfigError
from dialer.outcomes import AgentState, Outcome
from dialer.pacing import POLICIES, PacingPolicy, PacingSnapshot, make_policy
from dialer.pacing.base import AgentView, AttemptResult, HandleResult, RingingCall
from dialer.pacing.kernels import poisson_binomial_cdf
from dialer.pacing.predictive import PredictivePolicy, _Pool
from dialer.pacing.vicidial import VicidialAdaptivePolicy

S = AgentState


def agents(ready: int = 0, talking: Sequence[float] = (), wrap: Sequence[float] = (), paused: int = 0
           ) -> tuple[AgentView, ...]:
    """Agents: `ready` idle ones, one talking per elapsed time, one wrapping up per elapsed time."""
    views = [AgentView(S.READY, 5.0) for _ in range(ready)]
    views += [AgentView(S.TALKING, e, e) for e in talking]
    views += [AgentView(S.WRAP_UP, e, 100.0 + e) for e in wrap]
    views += [AgentView(S.PAUSED, 60.0) for _ in range(paused)]
    return tuple(views)


def snap(
    now: float = 0.0,
    agent_views: Iterable[AgentView] = (),
    ringing: Sequence[float] = (),
    waiting: int = 0,
    max_lines: int = 1000,
    window: tuple[int, int] = (0, 0),
    limit_reached: bool = False,
    attempts: Sequence[AttemptResult] = (),
    handles: Sequence[HandleResult] = (),
    window_s: float = 0.0,
) -> PacingSnapshot:
    """A snapshot with sensible defaults; `window` is (live answers, abandons) over `window_s`."""
    return PacingSnapshot(
        now=now,
        agents=tuple(agent_views),
        ringing=tuple(RingingCall(r) for r in ringing),
        waiting=waiting,
        max_lines=max_lines,
        ring_timeout_s=25.0,
        abandon_target=0.025,
        abandon_limit=0.03,
        window_live_answers=window[0],
        window_abandons=window[1],
        abandon_limit_reached=limit_reached,
        new_attempts=tuple(attempts),
        new_handles=tuple(handles),
        abandon_window_s=window_s,
    )


ALL = sorted(POLICIES)


# -- rules common to every policy ----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_no_agent_logged_in_dials_nothing(name: str) -> None:
    policy = make_policy(name)
    assert policy.dial_count(snap(agent_views=())) == 0


@pytest.mark.parametrize("name", ALL)
def test_all_agents_paused_dials_nothing(name: str) -> None:
    policy = make_policy(name)
    assert policy.dial_count(snap(agent_views=agents(paused=5))) == 0


@pytest.mark.parametrize("name", ALL)
def test_campaign_at_abandon_limit_falls_back_to_progressive(name: str) -> None:
    policy = make_policy(name)
    views = agents(ready=6, talking=[30.0, 200.0])
    # 6 ready agents, 2 calls already ringing for them: progressive places exactly 4 more.
    assert policy.dial_count(snap(agent_views=views, ringing=[3.0, 4.0], limit_reached=True)) == 4


@pytest.mark.parametrize("name", ALL)
def test_count_is_clamped_to_free_lines(name: str) -> None:
    policy = make_policy(name)
    views = agents(ready=20)
    assert policy.dial_count(snap(agent_views=views, ringing=[1.0, 2.0], max_lines=5)) <= 3


def test_registry_lists_every_policy() -> None:
    assert set(POLICIES) == {"progressive", "ratio", "vicidial_adaptive", "issabel", "predictive"}


# -- parameter validation --------------------------------------------------------------------------


def test_unknown_policy_is_rejected_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"pacing\.policy: unknown policy 'psychic'"):
        make_policy("psychic")


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("ratio", {"dial_levl": 2.0}, "pacing.params.dial_levl: Extra inputs are not permitted"),
        ("ratio", {"dial_level": 0.5}, "pacing.params.dial_level: Input should be greater than or equal"),
        ("vicidial_adaptive", {"adaptive_intensity": 90}, "pacing.params.adaptive_intensity"),
        ("vicidial_adaptive", {"drop_method": "panic"}, "pacing.params.drop_method"),
        ("issabel", {"probability_threshold": 1.5}, "pacing.params.probability_threshold"),
        ("predictive", {"attempts_half_life_s": -1}, "pacing.params.attempts_half_life_s"),
        ("progressive", {"dial_level": 2}, "pacing.params.dial_level"),
    ],
)
def test_bad_params_are_rejected_naming_the_key(name: str, params: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_policy(name, params)
    assert any(key in problem for problem in info.value.problems), info.value.problems


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        make_policy("vicidial_adaptive", {"adaptive_maximum_level": 0, "bogus": 1}, where="campaign.x.pacing")
    text = str(info.value)
    assert "campaign.x.pacing.params.adaptive_maximum_level" in text
    assert "campaign.x.pacing.params.bogus" in text


def test_predictive_alpha_bounds_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="alpha_min <= alpha_initial <= alpha_max"):
        make_policy("predictive", {"alpha_min": 0.2, "alpha_initial": 0.1})


# -- ratio -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "expected"), [(1.0, 2), (1.5, 4), (2.0, 6), (3.0, 10)])
def test_ratio_keeps_level_times_ready_in_flight(level: float, expected: int) -> None:
    policy = make_policy("ratio", {"dial_level": level})
    s = snap(agent_views=agents(ready=4, talking=[10.0]), ringing=[1.0, 2.0])
    assert policy.dial_count(s) == expected


def test_ratio_rounds_half_up() -> None:
    policy = make_policy("ratio", {"dial_level": 1.5})
    assert policy.dial_count(snap(agent_views=agents(ready=1))) == 2


# -- vicidial_adaptive -----------------------------------------------------------------------------


def run_vicidial(policy: PacingPolicy, seconds: int, *, ready: int, total: int, waiting: int = 0,
                 start: float = 0.0, attempts_per_s: Sequence[AttemptResult] = (),
                 abandons_at: dict[int, int] | None = None) -> list[int]:
    """Feed one snapshot a second; return the dial counts."""
    busy = [60.0] * (total - ready)
    counts = []
    abandons = 0
    for t in range(seconds):
        abandons += (abandons_at or {}).get(t, 0)
        counts.append(policy.dial_count(snap(
            now=start + t, agent_views=agents(ready=ready, talking=busy), waiting=waiting,
            attempts=attempts_per_s, window=(1000, abandons))))
    return counts


def vicidial(**params: Any) -> VicidialAdaptivePolicy:
    policy = make_policy("vicidial_adaptive", params)
    assert isinstance(policy, VicidialAdaptivePolicy)
    return policy


def test_vicidial_raises_level_while_agents_wait() -> None:
    policy = vicidial(auto_dial_level=1.0)
    run_vicidial(policy, 16, ready=5, total=10)
    # d = 5 - 0, m = 5/10, L = 1 * 1.5
    assert policy.level == pytest.approx(1.5)


def test_vicidial_lowers_level_while_calls_wait() -> None:
    policy = vicidial(auto_dial_level=2.0)
    run_vicidial(policy, 16, ready=0, total=10, waiting=2)
    # d = 0 - 2, m = -0.2, L = 2 * 0.8
    assert policy.level == pytest.approx(1.6)


def test_vicidial_intensity_bends_the_step() -> None:
    up = vicidial(adaptive_intensity=20)
    run_vicidial(up, 16, ready=5, total=10)
    assert up.level == pytest.approx(1.0 * (1 + 0.5 * 1.2))
    down = vicidial(auto_dial_level=2.0, adaptive_intensity=20)
    run_vicidial(down, 16, ready=0, total=10, waiting=2)
    assert down.level == pytest.approx(2.0 * (1 - 0.2 * 0.8))


def test_vicidial_diff_target_shifts_the_differential_and_the_goal() -> None:
    policy = vicidial(adaptive_dl_diff_target=-1.0)
    run_vicidial(policy, 16, ready=1, total=10)
    assert policy.level == pytest.approx(1.0)  # d = 1 - 0 - 1 = 0: no change
    policy = vicidial(auto_dial_level=2.0, adaptive_dl_diff_target=-1.0)
    # goal = round(2 * (4 - 1)) - 0 in flight
    assert policy.dial_count(snap(agent_views=agents(ready=4))) == 6


def test_vicidial_level_is_capped_by_maximum_level() -> None:
    policy = vicidial(auto_dial_level=2.5, adaptive_maximum_level=2.8)
    run_vicidial(policy, 16, ready=10, total=10)
    assert policy.level == pytest.approx(2.8)


def test_vicidial_dials_every_two_and_a_half_seconds() -> None:
    policy = vicidial(auto_dial_level=1.0)
    counts = run_vicidial(policy, 7, ready=3, total=3)
    assert counts == [3, 0, 0, 3, 0, 3, 0]  # dial loops due at 0, 2.5, 5.0, 7.5


LIVE = AttemptResult(Outcome.LIVE, 8.0)


@pytest.mark.parametrize(
    ("method", "expected"),
    [("hard_limit", 1.0), ("average", 1.5), ("tapered", 3.0 * 0.4)],
)
def test_vicidial_drop_methods_over_the_daily_limit(method: str, expected: float) -> None:
    # Start at level 3, nobody waits (the differential alone changes nothing).
    policy = vicidial(auto_dial_level=3.0, drop_method=method, adaptive_latest_target_s=8 * 3600.0)
    policy.dial_count(snap(now=0.0, agent_views=agents(ready=0, talking=[60.0] * 4), window=(1000, 0)))
    # 10 drops, 112 calls all answered: 8.9 % of answers > 3 %. At 4 h, 4 h are left: tapered x 0.4.
    run_vicidial(policy, 16, ready=0, total=4, start=4 * 3600.0 - 15, attempts_per_s=[LIVE] * 7,
                 abandons_at={0: 10})
    assert policy.level == pytest.approx(expected)


def test_vicidial_tapered_past_the_latest_target_goes_to_one() -> None:
    policy = vicidial(auto_dial_level=3.0, drop_method="tapered", adaptive_latest_target_s=3600.0)
    policy.dial_count(snap(now=0.0, agent_views=agents(talking=[60.0] * 4), window=(1000, 0)))
    run_vicidial(policy, 16, ready=0, total=4, start=7200.0, attempts_per_s=[LIVE] * 7,
                 abandons_at={0: 10})
    assert policy.level == 1.0


def test_vicidial_halves_on_a_minute_with_most_calls_dropped() -> None:
    policy = vicidial(auto_dial_level=3.0, adaptive_maximum_level=3.0, adaptive_dropped_percentage=100.0)
    # A call a second, 40 of the last minute's calls dropped; drop stats and level update at t=60.
    run_vicidial(policy, 61, ready=0, total=4, attempts_per_s=[LIVE], abandons_at={30: 40})
    assert policy.level == pytest.approx(1.5)


def test_vicidial_counts_non_paused_agents_without_available_only_tally() -> None:
    policy = vicidial(auto_dial_level=2.0, available_only_ratio_tally=False)
    # 2 ready + 3 talking = 5 agents -> goal 10, minus 1 ringing and the 3 connected calls.
    assert policy.dial_count(snap(agent_views=agents(ready=2, talking=[5.0, 6.0, 7.0]), ringing=[1.0])) == 6


# -- issabel ---------------------------------------------------------------------------------------


def issabel_trained(threshold: float = 0.97, **params: Any) -> PacingPolicy:
    policy = make_policy("issabel", {"probability_threshold": threshold, **params})
    handles = [HandleResult(talk_s=85.0, wrap_s=15.0)] * 10  # mean handle 100 s
    attempts = [AttemptResult(Outcome.LIVE, 10.0)] * 4 + [AttemptResult(Outcome.NO_ANSWER, 25.0)] * 6
    policy.observe(snap(now=0.0, handles=handles, attempts=attempts))
    return policy


def test_issabel_counts_busy_agents_likely_free_by_the_next_answer() -> None:
    # P(done by 290 + 10 s) = 1 - e^-3 = 0.95; by 30 + 10 s = 0.33.
    views = agents(ready=1, talking=[290.0, 30.0])
    strict = issabel_trained(0.97, overcommit=False)
    assert strict.dial_count(snap(now=1.0, agent_views=views)) == 1
    loose = issabel_trained(0.90, overcommit=False)
    assert loose.dial_count(snap(now=1.0, agent_views=views)) == 2
    looser = issabel_trained(0.30, overcommit=False)
    assert looser.dial_count(snap(now=1.0, agent_views=views)) == 3


def test_issabel_subtracts_waiting_then_pending_then_overcommits() -> None:
    policy = issabel_trained(0.97)
    # 6 free - 1 waiting = 5; minus 2 pending = 3; answer ratio 4/10 -> round(3 / 0.4) = 8.
    assert policy.dial_count(snap(now=1.0, agent_views=agents(ready=6), waiting=1, ringing=[2.0, 3.0])) == 8
    # As many pending as free: nothing.
    assert policy.dial_count(snap(now=2.0, agent_views=agents(ready=2), ringing=[2.0, 3.0])) == 0


def test_issabel_answer_ratio_has_a_floor() -> None:
    policy = make_policy("issabel")
    attempts = [AttemptResult(Outcome.LIVE, 10.0)] + [AttemptResult(Outcome.BUSY, 3.0)] * 19
    policy.observe(snap(now=0.0, attempts=attempts))
    assert policy.dial_count(snap(now=1.0, agent_views=agents(ready=2))) == 10  # 2 / 0.2


def test_issabel_forgets_calls_older_than_thirty_minutes() -> None:
    policy = issabel_trained(0.97)
    assert policy.dial_count(snap(now=1.0, agent_views=agents(ready=2))) == 5
    assert policy.dial_count(snap(now=31 * 60.0, agent_views=agents(ready=2))) == 2


def test_issabel_needs_ten_completed_calls_before_predicting() -> None:
    policy = make_policy("issabel", {"probability_threshold": 0.3, "overcommit": False})
    policy.observe(snap(handles=[HandleResult(85.0, 15.0)] * 9))
    assert policy.dial_count(snap(now=1.0, agent_views=agents(ready=1, talking=[290.0]))) == 1


# -- predictive ------------------------------------------------------------------------------------


def training(n_handles: int = 400, n_attempts: int = 2000, p_live: float = 0.25, wrap_s: float = 15.0
             ) -> tuple[list[HandleResult], list[AttemptResult]]:
    """Talk times spread evenly over 60..300 s, fixed wrap-up; live answers ring 6..14 s."""
    handles = [HandleResult(60.0 + 240.0 * (i + 0.5) / n_handles, wrap_s) for i in range(n_handles)]
    attempts = []
    lives = int(n_attempts * p_live)
    for i in range(n_attempts):
        if i < lives:
            attempts.append(AttemptResult(Outcome.LIVE, 6.0 + 8.0 * (i % 9) / 8))
        elif i % 2:
            attempts.append(AttemptResult(Outcome.NO_ANSWER, 25.0))
        else:
            attempts.append(AttemptResult(Outcome.BUSY, 4.0))
    return handles, attempts


def trained(p_live: float = 0.25, wrap_s: float = 15.0, **params: Any) -> PredictivePolicy:
    policy = make_policy("predictive", params)
    assert isinstance(policy, PredictivePolicy)
    handles, attempts = training(p_live=p_live, wrap_s=wrap_s)
    policy.observe(snap(now=0.0, handles=handles, attempts=attempts, window=(0, 0)))
    return policy


def test_predictive_is_progressive_until_warmed_up() -> None:
    policy = make_policy("predictive")
    assert isinstance(policy, PredictivePolicy)
    views = agents(ready=5, talking=[250.0] * 5)
    assert policy.dial_count(snap(now=1.0, agent_views=views, ringing=[1.0])) == 4
    assert not policy.warmed_up


def test_predictive_overdials_ready_agents_by_the_answer_rate() -> None:
    policy = trained(p_live=0.25)
    assert policy.warmed_up
    n = policy.dial_count(snap(now=1.0, agent_views=agents(ready=10), window=(5000, 125)))
    # 40 dials would give 10 live answers on average; a cautious start stays below, but well beyond
    # progressive's 10.
    assert 14 < n < 40


def test_predictive_dials_more_on_a_colder_list() -> None:
    warm = trained(p_live=0.25).dial_count(snap(now=1.0, agent_views=agents(ready=10), window=(5000, 125)))
    cold = trained(p_live=0.10).dial_count(snap(now=1.0, agent_views=agents(ready=10), window=(5000, 125)))
    assert cold > 1.8 * warm


def test_predictive_anticipates_agents_near_the_end_of_their_calls() -> None:
    late = agents(talking=[295.0] * 10)  # talk <= 300 s: every call ends within 5 s, then 2 s wrap
    early = agents(talking=[5.0] * 10)
    window = (5000, 125)
    assert trained(wrap_s=2.0).dial_count(snap(now=1.0, agent_views=late, window=window)) > 10
    assert trained(wrap_s=2.0).dial_count(snap(now=1.0, agent_views=early, window=window)) == 0
    # With 15 s of wrap-up after the talk, the same agents are free only after live answers come
    # (6..14 s): dialing for them now would abandon.
    assert trained(wrap_s=15.0).dial_count(snap(now=1.0, agent_views=late, window=window)) < 5


def test_predictive_counts_agents_finishing_wrap_up() -> None:
    nearly = agents(wrap=[14.0] * 10)
    just = agents(wrap=[0.0] * 10)
    window = (5000, 125)
    # Wrap-up is always 15 s: the first group is free at once, the second after the live answers.
    assert trained().dial_count(snap(now=1.0, agent_views=nearly, window=window)) > 10
    assert trained().dial_count(snap(now=1.0, agent_views=just, window=window)) < 5


def test_predictive_discounts_calls_that_rang_past_the_answers() -> None:
    views = agents(ready=5)
    window = (5000, 100)
    fresh = trained(alpha_initial=0.02).dial_count(snap(now=1.0, agent_views=views, ringing=[1.0] * 12,
                                                        window=window))
    stale = trained(alpha_initial=0.02).dial_count(snap(now=1.0, agent_views=views, ringing=[20.0] * 12,
                                                        window=window))
    # Calls still ringing after 20 s will not be answered live (all lives ring <= 14 s).
    assert stale > fresh + 5


def steer(policy: PredictivePolicy, window: tuple[int, int], ticks: int = 200) -> list[int]:
    """Tick `policy` on a campaign with 10 ready agents and a fixed window; return its counts."""
    views = agents(ready=10)
    return [policy.dial_count(snap(now=float(t), agent_views=views, window=window)) for t in range(1, ticks)]


def test_predictive_goal_follows_the_window_budget() -> None:
    over, under = trained(), trained()
    steer(over, (4000, 200), ticks=2)  # 5 % in the window: pay the excess back
    steer(under, (4000, 0), ticks=2)  # nothing spent: allowed to go faster
    assert over.goal < 0.025 < under.goal
    # Bounded either way: at least a tenth, at most one and a half of the noise-adjusted target.
    assert 0.0 < over.goal and under.goal <= 1.5 * 0.025


def test_predictive_alpha_tightens_above_goal_and_relaxes_below() -> None:
    high, low = trained(), trained()
    before = high.alpha
    high_counts = steer(high, (4000, 400))
    low_counts = steer(low, (4000, 0))
    assert high.alpha < before < low.alpha
    assert high_counts[-1] < low_counts[-1]


def test_predictive_alpha_stays_within_its_bounds() -> None:
    policy = trained(alpha_min=0.005, alpha_initial=0.01, alpha_max=0.02)
    steer(policy, (4000, 0), ticks=400)
    assert policy.alpha == pytest.approx(0.02)
    steer(policy, (4000, 2000), ticks=400)
    assert policy.alpha == pytest.approx(0.005)


def test_predictive_bias_grows_when_real_abandons_exceed_the_model() -> None:
    policy = trained(bias_prior=1.0)
    steer(policy, (4000, 100), ticks=50)
    calm = policy.bias
    for t in range(50, 100):  # 2 abandons a second that the model did not see coming
        policy.dial_count(snap(now=float(t), agent_views=agents(ready=10), window=(4000 + t, 100 + 2 * t)))
    assert policy.bias > 2 * calm


def test_predictive_margin_keeps_a_young_window_conservative() -> None:
    cautious, bold = trained(margin_z=5.0, burst_risk=0.0), trained(margin_z=0.0, burst_risk=0.0)
    young = (200, 0)  # room for 6 abandons: the burst reserve does not bind
    cautious_counts, bold_counts = steer(cautious, young, 60), steer(bold, young, 60)
    assert cautious.goal < bold.goal
    assert sum(cautious_counts) < sum(bold_counts)


def trained_at(window: tuple[int, int]) -> PredictivePolicy:
    """A trained policy whose first window is `window` (not a jump from an empty one)."""
    policy = make_policy("predictive")
    assert isinstance(policy, PredictivePolicy)
    handles, attempts = training()
    policy.observe(snap(now=0.0, handles=handles, attempts=attempts, window=window))
    return policy


def test_predictive_keeps_headroom_for_the_largest_recent_burst() -> None:
    window = (4000, 90)  # 2.25 %: room for 30 more abandons before 3 %
    calm, burnt = trained_at(window), trained_at((4000, 70))
    for policy in (calm, burnt):  # the burnt campaign loses 20 calls at once
        policy.dial_count(snap(now=1.0, agent_views=agents(ready=10), window=window))
    # The calm window keeps the minimum reserve and its whole goal; the one that just lost 20 in
    # a burst keeps room for another such burst: (30 - 20) / 20 of the goal.
    assert burnt.goal == pytest.approx(0.5 * calm.goal)
    # Hours without a burst: the memory of it fades and the goal comes back.
    for policy in (calm, burnt):
        policy.dial_count(snap(now=8 * 3600.0, agent_views=agents(ready=10), window=window))
    assert burnt.goal == pytest.approx(calm.goal)


def test_predictive_nearly_stops_when_the_headroom_is_below_the_reserve() -> None:
    roomy_window, tight_window = (4000, 60), (4000, 120)  # the second is at 3 %: no room left
    roomy, tight = trained_at(roomy_window), trained_at(tight_window)
    roomy.dial_count(snap(now=1.0, agent_views=agents(ready=10), window=roomy_window))
    tight.dial_count(snap(now=1.0, agent_views=agents(ready=10), window=tight_window))
    assert tight.goal < 0.06 * roomy.goal


def test_predictive_alpha_initial_knob_sets_aggressiveness() -> None:
    views = agents(ready=5, talking=[200.0] * 10)
    window = (5000, 125)  # exactly on target: no correction
    timid = trained(alpha_initial=0.002).dial_count(snap(now=1.0, agent_views=views, window=window))
    brave = trained(alpha_initial=0.3).dial_count(snap(now=1.0, agent_views=views, window=window))
    assert timid < brave


def test_predictive_follows_a_drifting_answer_rate() -> None:
    policy = trained(p_live=0.25, attempts_half_life_s=300.0, min_effective_attempts=100.0)
    views = agents(ready=10)
    before = policy.dial_count(snap(now=1.0, agent_views=views, window=(5000, 125)))
    _, cold = training(p_live=0.10)
    for t in range(2, 1800, 60):
        policy.observe(snap(now=float(t), attempts=cold[::10], window=(5000, 125)))
    after = policy.dial_count(snap(now=1800.0, agent_views=views, window=(5000, 125)))
    assert after > 1.5 * before


def test_predictive_handles_a_large_campaign() -> None:
    policy = trained(p_live=0.10, alpha_initial=0.02)
    talking = [float(i % 300) for i in range(170)]
    views = agents(ready=5, talking=talking, wrap=[float(i % 15) for i in range(25)])
    ringing = [float(i % 25) for i in range(150)]
    s = snap(now=1.0, agent_views=views, ringing=ringing, max_lines=400, window=(5000, 125))
    n = policy.dial_count(s)
    # Dozens of agents free up within the horizon; 150 calls already ring for them.
    assert 0 < n <= 400 - 150


def test_predictive_guards_against_a_sudden_rise_in_answers() -> None:
    calm, surged = trained(p_live=0.10), trained(p_live=0.10)
    lives = [AttemptResult(Outcome.LIVE, 8.0), AttemptResult(Outcome.NO_ANSWER, 25.0)] * 60
    surged.observe(snap(now=0.5, attempts=lives, window=(5000, 125)))  # half the last dials answered
    views = agents(ready=10)
    assert surged._surge() > 1.5
    assert calm._surge() == 1.0
    s = snap(now=1.0, agent_views=views, window=(5000, 125))
    assert surged.dial_count(s) < calm.dial_count(s)


def test_issabel_counts_machines_as_answers_only_when_asked() -> None:
    attempts = [AttemptResult(Outcome.LIVE, 8.0)] * 2 + [AttemptResult(Outcome.MACHINE, 15.0)] * 2 + [
        AttemptResult(Outcome.NO_ANSWER, 25.0)] * 6
    humans = make_policy("issabel")
    machines = make_policy("issabel", {"count_machines_as_answered": True})
    for policy in (humans, machines):
        policy.observe(snap(now=0.0, attempts=attempts))
    views = agents(ready=2)
    assert humans.dial_count(snap(now=1.0, agent_views=views)) == 10  # 2 / max(0.2, 0.2)
    assert machines.dial_count(snap(now=1.0, agent_views=views)) == 5  # 2 / 0.4


def test_predictive_longer_connect_deadline_allows_more_dials() -> None:
    views = agents(ready=3, wrap=[2.0] * 8)  # free at 13 s, when many live answers come
    window = (5000, 125)
    tight = trained(connect_deadline_s=0.5).dial_count(snap(now=1.0, agent_views=views, window=window))
    loose = trained(connect_deadline_s=5.0).dial_count(snap(now=1.0, agent_views=views, window=window))
    # Given 5 s, answers from 9 s on find the wrapping agents; given 0.5 s, only those from 13 s.
    assert loose > 2 * tight


def test_predictive_warm_up_thresholds_are_knobs() -> None:
    handles, attempts = training(n_handles=40, n_attempts=200)
    eager = make_policy("predictive", {"min_handles": 10, "min_attempts": 50, "min_live_answers": 5})
    patient = make_policy("predictive", {"min_handles": 100})
    for policy in (eager, patient):
        assert isinstance(policy, PredictivePolicy)
        policy.observe(snap(now=0.0, handles=handles, attempts=attempts))
    assert isinstance(eager, PredictivePolicy) and eager.warmed_up
    assert isinstance(patient, PredictivePolicy) and not patient.warmed_up


def test_predictive_payback_scales_the_goal_correction() -> None:
    strict, lenient = trained(payback=2.0), trained(payback=0.0)
    window = (4000, 150)  # over budget
    steer(strict, window, ticks=2)
    steer(lenient, window, ticks=2)
    assert strict.goal < lenient.goal


def test_predictive_keeps_late_calls_only_for_ready_agents() -> None:
    views = agents(ready=3, talking=[40.0] * 7)
    assert make_policy("predictive").late_calls_to_keep(snap(agent_views=views)) is None  # progressive yet
    policy = trained()
    assert policy.late_calls_to_keep(snap(agent_views=views, waiting=1)) == 2
    assert policy.late_calls_to_keep(snap(agent_views=views, waiting=5)) == 0
    assert trained(shed_late_calls=False).late_calls_to_keep(snap(agent_views=views)) is None
    # Once this tick's decision has run, an agent about to finish wrap-up counts as one there for it.
    finishing = snap(now=1.0, agent_views=agents(ready=1, wrap=[14.5, 2.0]), window=(5000, 100))
    policy.dial_count(finishing)
    assert policy.late_calls_to_keep(finishing) == 2
    for name in ("progressive", "ratio", "vicidial_adaptive", "issabel"):  # the baselines never shed
        assert make_policy(name).late_calls_to_keep(snap(agent_views=views)) is None


def test_predictive_surge_guard_is_not_fooled_by_shed_calls() -> None:
    policy = trained(p_live=0.25)
    # Recent dials answer as before within 15 s; the rest are shed at 16 s instead of ringing out.
    shed = AttemptResult(Outcome.NO_ANSWER, 16.0, censored=True)
    recent = [AttemptResult(Outcome.LIVE, 7.0)] * 16 + [shed] * 64
    policy.observe(snap(now=0.5, attempts=recent, window=(5000, 100)))
    assert policy._surge() == 1.0


def test_snapshot_counts_agents_by_state_when_not_given_them() -> None:
    s = snap(agent_views=agents(ready=3, talking=[10.0, 20.0], wrap=[1.0], paused=2))
    assert (s.ready, s.working) == (3, 6)
    assert (s.count(S.TALKING), s.count(S.WRAP_UP), s.count(S.RESERVED)) == (2, 1, 0)
    assert snap().ready == 0 and snap().working == 0


def test_predictive_counts_a_small_pool_exactly() -> None:
    # Three busy agents, each free in time by a 20 % chance, nobody ready, nothing ringing: the first
    # dial, answered live, finds no agent with probability 0.8³ = 0.512. A normal with the same mean
    # and variance puts it near 0.45.
    u = 5
    chances = np.full((3, u), 0.2)
    q = np.linspace(0.05, 0.25, u)

    def pool(cdf: np.ndarray | None) -> _Pool:
        return _Pool(np.full(u, 0.6), np.full(u, 0.48), 0.0, np.zeros(u), q, 1e-9, np.diff(q, prepend=0.0),
                     0.25, cdf, 0)

    exact = pool(poisson_binomial_cdf(chances)).marginal_abandon(np.array([1.0]))[0]
    normal = pool(None).marginal_abandon(np.array([1.0]))[0]
    assert exact == pytest.approx(0.512, abs=1e-6)
    assert normal == pytest.approx(0.445, abs=0.01)


def test_predictive_never_risks_a_burst_that_alone_breaks_the_window() -> None:
    # 10 ready agents and a bold α: 60 dials would bring 15 answers. A window of 5000 answers can
    # take 150 abandons, one of 200 only 6 (the 7th breaks it): there the tick stops short of a
    # burst of 7, and with 2 abandons already in it, short of a burst of 5.
    def count(window: tuple[int, int], **params: Any) -> int:
        policy = trained(alpha_initial=0.3, **params)
        return policy.dial_count(snap(now=1.0, agent_views=agents(ready=10), window=window))

    roomy, small, spent = count((5000, 0)), count((200, 0)), count((200, 2))
    assert spent < small < roomy
    assert count((200, 0), burst_risk=0.0) == roomy


def test_predictive_never_dials_fewer_than_progressive() -> None:
    # Three abandons in 150 answers leave room for one more: the burst guard lets the model dial one
    # line for 3 idle agents (its Poisson count of answers sees a chance of 3 calls bringing 4 live
    # answers). A line per ready agent cannot abandon, so the idle agents get their 3.
    window = (150, 3)
    views = agents(ready=3, talking=[100.0] * 7)
    assert trained_at(window).dial_count(snap(now=1.0, agent_views=views, window=window)) == 3
    assert trained_at(window).dial_count(snap(now=1.0, agent_views=views, ringing=[2.0], window=window)) == 2


def filled_window(working: int, abandons_at: float | None = 3300.0, window_s: float = 3600.0
                  ) -> tuple[PredictivePolicy, PacingSnapshot]:
    """A trained policy that saw a one-hour window fill with 2 live answers a minute and 3 abandons
    at `abandons_at`; and the snapshot at the end of that hour, with `working` agents logged in."""
    policy = trained()
    answers = abandons = 0
    final = snap()
    for t in range(60, 3601, 60):
        answers += 2
        if abandons_at is not None and t == abandons_at:
            abandons = 3
        final = snap(now=float(t), agent_views=agents(ready=working), window=(answers, abandons),
                     attempts=[AttemptResult(Outcome.LIVE, 8.0)] * 2, window_s=window_s)
        policy.dial_count(final)
    return policy, final


def test_predictive_keeps_room_for_a_window_that_thins_out_at_the_limit() -> None:
    # 3 abandons in 120 answers: room for 0.6 more. Should the campaign fall back to progressive,
    # 5 agents bring ~85 answers an hour (an answer per agent every ~212 s: the training's talk,
    # wrap-up and ring times): by the time the window's older answers have left it, the 3 abandons
    # (5 min old) are among some 80 answers, 3.8 %: no room. 20 agents keep the window full.
    few, snap_few = filled_window(working=5)
    plain = 0.03 * 120 - 3
    assert few._fallback_room(snap_few) < -0.5 < plain
    many, snap_many = filled_window(working=20)
    assert many._fallback_room(snap_many) == pytest.approx(plain, abs=0.1)
    # Abandons that leave the window first keep it from thinning while they are in it.
    old, snap_old = filled_window(working=5, abandons_at=120.0)
    assert old._fallback_room(snap_old) == pytest.approx(plain, abs=0.1)
    # A window that does not roll (a calendar month), or one with no abandon in it: the room as it is.
    for policy, final in (filled_window(working=5, window_s=0.0), filled_window(working=5, abandons_at=None)):
        assert policy._fallback_room(final) == 0.03 * final.window_live_answers - final.window_abandons


@pytest.mark.parametrize("exact", [False, True])
def test_predictive_search_finds_what_checking_every_count_finds(exact: bool) -> None:
    # The search evaluates 1..4 at once, then brackets the rest coarsely: on pools from empty to
    # crowded, with and without the burst guard, it must land where checking each n alone lands.
    u = 9
    q = np.linspace(0.02, 0.25, u)
    rng = np.random.default_rng(7)
    for case in range(40):
        ready = int(rng.integers(0, 6))
        chances = np.sort(rng.uniform(0.0, 1.0, (int(rng.integers(1, 12)), u)), axis=1)
        mean = ready + chances.sum(axis=0)
        var = (chances * (1.0 - chances)).sum(axis=0) + 0.05
        cdf = poisson_binomial_cdf(chances) if exact else None
        pool = _Pool(mean, var, float(rng.integers(0, 3)), np.linspace(0.0, rng.uniform(0, 4), u), q, 0.01,
                     np.diff(q, prepend=0.0), 0.25, cdf, ready)
        alpha, upper = float(rng.uniform(0.05, 0.6)), int(rng.integers(1, 60))
        burst = (int(rng.integers(1, 6)), 1e-3) if case % 2 else None
        found, _ = pool.largest_affordable(alpha, upper, burst)
        ns = np.arange(1, upper + 1, dtype=np.float64)
        ok = pool.marginal_abandon(ns) <= alpha
        if burst is not None:
            ok &= pool.burst_probability(ns, burst[0]) <= burst[1]
        expected = int(np.argmin(ok)) if not ok.all() else upper  # both grow with n
        assert found == expected, (case, alpha, upper, burst)
