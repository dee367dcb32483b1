"""Unit tests of the predictive policy's compiled kernels against direct computations."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from dialer.pacing import kernels
from dialer.pacing.kernels import (
    conditional_done,
    cumulative_incidence,
    poisson_binomial_cdf,
    ringing_live,
    shortfall,
    supply_moments,
    survival,
    talk_free,
)
from dialer.sim import load_scenario, run_simulation


def test_ring_curves_count_shed_calls_as_censored_not_as_failures() -> None:
    # 100 dials: 20 answer live at 7 s, 10 at 17 s, 70 ring out at 25 s. Half of the 80 still ringing
    # at 15 s are shed then: in expectation 5 of the late answers and 35 of the ring-outs.
    resolved, live, shed = np.zeros(30), np.zeros(30), np.zeros(30)
    resolved[7] = live[7] = 20
    resolved[17] = live[17] = 5
    resolved[25] = 35
    shed[15] = 40
    live_cum, unresolved = cumulative_incidence(resolved, live, shed)
    assert live_cum[14] == pytest.approx(0.20) and unresolved[14] == pytest.approx(0.80)
    assert live_cum[-1] == pytest.approx(0.30)  # the chance of a live answer is not lowered by shedding
    assert unresolved[-1] == pytest.approx(0.0)
    # Nothing shed: the plain cumulative shares.
    resolved[17] = live[17] = 10
    resolved[25] = 70
    live_cum, unresolved = cumulative_incidence(resolved, live, np.zeros(30))
    assert np.allclose(live_cum, np.cumsum(live) / 100)
    assert np.allclose(unresolved, 1 - np.cumsum(resolved) / 100)


def test_poisson_binomial_cdf_matches_enumeration() -> None:
    rng = np.random.default_rng(7)
    chances = rng.random((5, 3))
    cdf = poisson_binomial_cdf(chances)
    for u in range(3):
        dist = np.zeros(6)
        for bits in itertools.product((0, 1), repeat=5):
            terms = [c if b else 1.0 - c for c, b in zip(chances[:, u], bits, strict=True)]
            dist[sum(bits)] += np.prod(terms)
        np.testing.assert_allclose(cdf[u], np.cumsum(dist))


def answer_count_pmf(lam: float, rel_var: float, top: int) -> np.ndarray:
    """The distribution of new answers that `shortfall` sums over with exact agents, read back from it.

    With no agent ready and every busy agent certain to be free (the supply's distribution a step at
    `k` agents), the shortfall at excess 0 is P(answers >= k): its differences are the answers' pmf.
    """
    tails = []
    for k in range(top + 2):
        cdf = np.zeros((1, top + 2))
        cdf[0, k:] = 1.0  # P(agents free <= j) = 1 from j = k on: exactly k agents
        tails.append(shortfall(lam, 0.0, 0.0, 0, 0, 0, rel_var, cdf, 0, True))
    return -np.diff(np.array(tails))


def test_shortfall_counts_answers_with_the_poisson_mean_and_the_extra_variance() -> None:
    d = np.arange(0, 80)
    log_fact = np.array([math.lgamma(k + 1.0) for k in d])
    for lam in (0.5, 3.0, 7.0, 12.0):
        pmf = answer_count_pmf(lam, 0.05, 79)
        mean = (pmf * d).sum()
        np.testing.assert_allclose(pmf.sum(), 1.0, atol=1e-6)
        np.testing.assert_allclose(mean, lam, rtol=1e-4)
        np.testing.assert_allclose((pmf * d * d).sum() - mean**2, lam + 0.05 * lam**2, rtol=1e-3)
        poisson = np.exp(d * math.log(lam) - lam - log_fact)
        np.testing.assert_allclose(answer_count_pmf(lam, 1e-9, 79), poisson, atol=1e-6)


def test_shortfall_sums_a_poisson_against_a_normal_supply() -> None:
    # Normal agents: P(N(lam) + waiting + 0.5 - agents >= excess) with agents ~ N(mean, var).
    rng = np.random.default_rng(3)
    cases = ((2.0, 3.0, 1.5, 0, 0), (8.0, 6.0, 4.0, 2, 1), (20.0, 25.0, 9.0, 1, 3), (30.0, 28.0, 5.0, 0, 0))
    for lam, mean, var, waiting, excess in cases:
        answers = rng.poisson(lam, 400_000) + waiting
        agents = rng.normal(mean, math.sqrt(var), 400_000)
        expected = float(np.mean(answers + 0.5 - agents >= excess))
        gap = waiting + 0.5 - mean - excess
        got = shortfall(lam, var, gap, excess, waiting, 0, 0.0, np.zeros((1, 1)), 0, False)
        assert got == pytest.approx(expected, abs=0.01), (lam, mean, var)


def test_survival_is_kaplan_meier_with_calls_in_progress_censored() -> None:
    # 40 calls ended at 2, 4, 4 and 7 s (weights 10, 20, 10); 20 were still going at 5 s. At risk:
    # 60 up to 2 s, 50 at 4 s, 10 at 7 s: the events remove 1/6, then 2/5, then all that is left.
    events, censored = np.zeros(10), np.zeros(10)
    events[2], events[4], events[7] = 10, 20, 10
    censored[5] = 20
    np.testing.assert_allclose(survival(events, censored)[:8], [1, 1, 5 / 6, 5 / 6, 0.5, 0.5, 0.5, 0])
    events = np.zeros(40)
    events[10] = 100  # every call lasts 10 s: a step
    surv = survival(events, np.zeros(40))
    assert surv[9] == 1.0 and np.all(surv[10:] == 0.0)
    assert np.all(survival(np.zeros(5), np.ones(5)) == 1.0)  # nothing ended yet: nobody counted on


def test_survival_continues_a_thin_tail_with_the_hazard_measured_there() -> None:
    events = np.zeros(200)
    events[10:30] = 10.0  # 200 calls of 10-29 s ...
    events[100] = 2.0  # ... and 2 long ones
    surv = survival(events, np.zeros(200))
    # From 30 s on fewer than 8 remain at risk: the curve goes on from 29 s with the hazard measured
    # beyond it (2 events, 2 at risk for 71 s).
    rate = 2.0 / (71 * 2.0)
    assert surv[29] == pytest.approx(2 / 202)
    assert surv[150] == pytest.approx(surv[29] * math.exp(-rate * 121), rel=1e-9)


def test_talk_free_is_the_conditional_chance_of_talk_plus_wrap_ending() -> None:
    # Exponential talk (memoryless: elapsed time does not matter) and a 10 s wrap-up.
    t = np.arange(2000)
    surv = np.exp(-t / 100.0)
    offsets = np.array([0, 5, 10, 15, 40], dtype=np.int64)
    free = talk_free(np.array([0, 300], dtype=np.int64), offsets, surv, np.array([10], dtype=np.int64),
                     np.array([1.0]))
    expected = np.where(offsets > 10, 1.0 - np.exp(-(offsets - 10) / 100.0), 0.0)
    np.testing.assert_allclose(free[0], expected, atol=1e-12)
    np.testing.assert_allclose(free[1], expected, atol=1e-9)
    # Two wrap-up levels of equal weight average; an agent past every observed length is about to end.
    two = talk_free(np.array([0], dtype=np.int64), offsets, surv, np.array([0, 10], dtype=np.int64),
                    np.array([0.5, 0.5]))
    np.testing.assert_allclose(two[0], 0.5 * (np.where(offsets > 0, 1.0 - np.exp(-offsets / 100.0), 0.0)
                                              + expected), atol=1e-12)
    step = np.where(t < 60, 1.0, 0.0)  # every call ends at 60 s
    overdue = talk_free(np.array([50, 70], dtype=np.int64), offsets, step, np.array([0], dtype=np.int64),
                        np.array([1.0]))
    np.testing.assert_allclose(overdue, [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])


def test_conditional_done_and_supply_moments() -> None:
    surv = np.array([1.0, 0.8, 0.5, 0.25, 0.0, 0.0])
    done = conditional_done(surv, np.array([0, 2, 5], dtype=np.int64), np.array([0, 1, 2], dtype=np.int64))
    np.testing.assert_allclose(done, [[0.0, 0.2, 0.5], [0.0, 0.5, 1.0], [1.0, 1.0, 1.0]])
    mean, var = np.full(3, 2.0), np.zeros(3)  # 2 ready agents
    supply_moments(done, 0.1, mean, var)
    np.testing.assert_allclose(mean, 2.0 + done.sum(axis=0))
    np.testing.assert_allclose(var, (done * (1 - done)).sum(axis=0) + 0.1 * done.sum(axis=0) ** 2)


def test_ringing_live_counts_each_call_by_its_conditional_chance() -> None:
    # Live answers at 5 s (30 %) and 12 s (10 %); the rest fail at 20 s.
    resolved, live = np.zeros(30), np.zeros(30)
    resolved[5] = live[5] = 30
    resolved[12] = live[12] = 10
    resolved[20] = 60
    live_cum, unresolved = cumulative_incidence(resolved, live, np.zeros(30))
    u = np.array([0, 4, 10], dtype=np.int64)
    got = ringing_live(np.array([0, 8, 25], dtype=np.int64), u, live_cum, unresolved)
    # A new call is answered live by 10 s with 30 %, not before 5 s. One that has rung 8 s is past
    # the 5 s answers: 10 of the 70 still ringing answer at 12 s, 4 s from now. One at 25 s is done.
    np.testing.assert_allclose(got, [0.0, 10 / 70, 0.3 + 10 / 70])


def test_warm_up_compiles_every_signature_the_policy_uses() -> None:
    # A call with other argument types would compile again, on a pacing tick: the warm-up must
    # cover what a small team (exact supply) and a large one (normal supply) really pass.
    compiled = [f for f in vars(kernels).values() if hasattr(f, "signatures")]
    assert len(compiled) >= 10
    kernels.warm_up()
    before = {k.__name__: list(k.signatures) for k in compiled}
    scenario = load_scenario(Path(__file__).resolve().parent.parent / "config" / "scenarios" / "warm.toml")
    for agents in (8, 60):
        result = run_simulation(scenario, "predictive", agents=agents, hours=0.75, seed=3)
        assert result.live_answers > 30  # past the policy's warm-up: the model ran
    assert {k.__name__: list(k.signatures) for k in compiled} == before
