"""Compiled inner loops of the `predictive` policy (numba).

Each decision evaluates the same few formulas over small grids (agents × seconds ahead, dial counts
× seconds × possible answer counts). Written with numpy, that is a hundred array operations of a
few hundred elements each, and numpy's cost per call, not the arithmetic, made a simulated day of
a 100-agent team take over a minute. Here the loops are plain and numba compiles them: once per
checkout (about ten seconds, on first use), after which processes load the machine code from
`__pycache__` (`cache=True`; numba falls back to a per-user cache where that is read-only).

These are pure functions of arrays: the model they compute is described in `predictive.py`.
`NUMBA_DISABLE_JIT=1` runs them as ordinary Python (slowly), for debugging.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

POISSON_MAX_MEAN = 25.0  # above this many expected answers a normal replaces the Poisson sum
POISSON_TAIL_SD = 7.0  # answer counts this many standard deviations beyond the mean are not summed

_F = TypeVar("_F", bound=Callable[..., Any])


def _compiled(fn: _F) -> _F:
    """numba's `njit`, cached on disk, keeping the function's type for mypy."""
    return cast(_F, numba.njit(cache=True, nogil=True)(fn))


def _normal_cdf(x: FloatArray) -> FloatArray:
    """Φ(x) to ~1e-7 (Numerical Recipes' erfc), vectorised: used to build the table below."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


PHI_LO, PHI_STEPS = -9.0, 128  # table of Φ from -9 to 9 in steps of 1/128
PHI_TABLE = _normal_cdf(np.arange(-9.0, 9.0 + 1.0 / PHI_STEPS, 1.0 / PHI_STEPS))
_PHI_LAST = len(PHI_TABLE) - 1


@_compiled
def phi(z: float) -> float:
    """Φ(z) by table lookup: ~1 % relative error at 3σ, far cheaper than computing it."""
    index = math.floor((z - PHI_LO) * PHI_STEPS + 0.5)
    return float(PHI_TABLE[min(max(index, 0), _PHI_LAST)])


@_compiled
def poisson_binomial_cdf(p: FloatArray) -> FloatArray:
    """P(Σ independent Bernoulli(p[i, u]) <= k), shape (u, k = 0..rows), by convolution."""
    rows, cols = p.shape
    result = np.zeros((cols, rows + 1))
    dist = np.zeros(rows + 1)
    for u in range(cols):
        dist[:] = 0.0
        dist[0] = 1.0
        for i in range(rows):
            # After i agents only counts 0..i have mass.
            pi = p[i, u]
            for k in range(i + 1, 0, -1):
                dist[k] = dist[k] * (1.0 - pi) + dist[k - 1] * pi
            dist[0] *= 1.0 - pi
        total = 0.0
        for k in range(rows + 1):
            total += dist[k]
            result[u, k] = total
    return result


TAIL_MIN_WEIGHT = 8.0  # the survival curve is empirical while this much weight lies beyond


@_compiled
def survival(events: FloatArray, censored: FloatArray) -> FloatArray:
    """P(X > x) on the whole-second grid: Kaplan-Meier with an exponential tail.

    `events` is the (weighted) histogram of completed durations; `censored` that of durations still
    running (calls in progress, whose length is only known to exceed their elapsed time). Ignoring
    them would bias the curve towards short calls, most of all early in a shift, when the long calls
    have not ended yet. Where fewer than TAIL_MIN_WEIGHT observations remain at risk, the curve is
    continued with the constant hazard measured beyond that point (events / time at risk).
    """
    n = len(events)
    total_events = events.sum()
    if total_events <= 0:
        return np.ones(n)
    at_risk = np.zeros(n)  # observations lasting at least x
    running = 0.0
    for x in range(n - 1, -1, -1):
        running += events[x] + censored[x]
        at_risk[x] = running
    surv = np.zeros(n)
    s = 1.0
    thin = -1
    for x in range(n):
        if at_risk[x] > 0:
            s *= 1.0 - min(events[x] / at_risk[x], 1.0)
        surv[x] = s
        if thin < 0 and at_risk[x] < TAIL_MIN_WEIGHT:
            thin = x
    if thin < 0:
        return surv
    x0 = max(thin - 1, 0)
    tail_events = events[x0 + 1 :].sum()
    tail_time = at_risk[x0 + 1 :].sum()
    if tail_events > 0 and tail_time > 0:
        rate = tail_events / tail_time
    else:  # nothing ended out there yet: fall back on the overall hazard
        rate = total_events / max(at_risk.sum(), 1.0)
    base = surv[x0]
    for x in range(x0, n):
        surv[x] = base * math.exp(-rate * (x - x0))
    return surv


@_compiled
def talk_free(elapsed: IntArray, offsets: IntArray, surv: FloatArray, wrap_s: IntArray,
              wrap_weight: FloatArray) -> FloatArray:
    """P(talk and wrap-up both over by offset | talked `elapsed` whole seconds), agents × offsets.

    The wrap-up is given as a few levels (seconds, weight): free by t means the talk ends by
    t − wrap. Past every observed duration an agent is overdue: about to be free.
    """
    last = len(surv) - 1
    result = np.zeros((len(elapsed), len(offsets)))
    for i in range(len(elapsed)):
        e = min(elapsed[i], last)
        s_e = surv[e]
        inv = 1.0 / s_e if s_e > 1e-12 else 0.0
        for j in range(len(offsets)):
            acc = 0.0
            for level in range(len(wrap_s)):
                talk_left = offsets[j] - wrap_s[level]
                if talk_left > 0:
                    acc += (1.0 - surv[min(e + talk_left, last)] * inv) * wrap_weight[level]
            result[i, j] = acc
    return result


@_compiled
def conditional_done(surv: FloatArray, elapsed: IntArray, offsets: IntArray) -> FloatArray:
    """P(X <= elapsed + offset | X > elapsed) from a survival table, rows × offsets."""
    last = len(surv) - 1
    result = np.zeros((len(elapsed), len(offsets)))
    for i in range(len(elapsed)):
        e = min(elapsed[i], last)
        s_e = surv[e]
        if s_e <= 1e-12:
            result[i, :] = 1.0  # overdue: about to be done
            continue
        for j in range(len(offsets)):
            done = 1.0 - surv[min(e + offsets[j], last)] / s_e
            result[i, j] = min(max(done, 0.0), 1.0)
    return result


@_compiled
def supply_moments(p_free: FloatArray, common_rel_var: float, mean: FloatArray, var: FloatArray) -> None:
    """Add a group of agents' chances of being free to the supply's mean and variance (in place).

    Agents are independent Bernoullis; `common_rel_var` adds the error of the learnt curve they
    share (it moves all of them together: variance (Σp)² × relative variance).
    """
    rows, cols = p_free.shape
    for j in range(cols):
        total = 0.0
        spread = 0.0
        for i in range(rows):
            pi = p_free[i, j]
            total += pi
            spread += pi * (1.0 - pi)
        mean[j] += total
        var[j] += spread + total * total * common_rel_var


@_compiled
def ringing_live(elapsed: IntArray, u: IntArray, live_cum: FloatArray, unresolved: FloatArray) -> FloatArray:
    """Expected live answers by each u from calls that have rung `elapsed` whole seconds unresolved."""
    last = len(live_cum) - 1
    result = np.zeros(len(u))
    for i in range(len(elapsed)):
        r = min(elapsed[i], last)
        left = unresolved[r]
        if left <= 1e-9:
            continue
        base = live_cum[r]
        for j in range(len(u)):
            p = (live_cum[min(r + u[j], last)] - base) / left
            result[j] += min(max(p, 0.0), 1.0)
    return result


@_compiled
def cumulative_incidence(resolved: FloatArray, live: FloatArray,
                         censored: FloatArray) -> tuple[FloatArray, FloatArray]:
    """P(live answer by t) and P(still unresolved after t) from ring-time histograms (Aalen-Johansen).

    `resolved` holds every resolved attempt by ring time, `live` the live answers among them,
    `censored` the calls cancelled while still ringing (shed): they count as at risk up to their
    cancellation and no further. Without censoring this is the plain cumulative share.
    """
    n = len(resolved)
    at_risk = np.zeros(n)
    total = 0.0
    for t in range(n - 1, -1, -1):
        total += resolved[t] + censored[t]
        at_risk[t] = total
    live_cum = np.zeros(n)
    unresolved = np.zeros(n)
    before, live_total = 1.0, 0.0
    for t in range(n):
        if at_risk[t] > 0:
            live_total += before * live[t] / at_risk[t]
            before *= 1.0 - min(resolved[t] / at_risk[t], 1.0)
        live_cum[t] = live_total
        unresolved[t] = before
    return live_cum, unresolved


@_compiled
def shortfall(lam: float, var: float, gap: float, excess: int, waiting: int, ready: int, rel_var: float,
               cdf: FloatArray, u: int, exact: bool) -> float:
    """P(live answers by u − agents free by u ≥ excess): one cell of the model's grid.

    Answers ahead: `waiting` (certain) plus a count of mean `lam` (Poisson; negative binomial with
    the rate error `rel_var` where the agents are counted exactly). Agents: a normal of variance
    `var` (`gap` = waiting + ½ − mean supply − excess, continuity-corrected) or, `exact`, the
    distribution `cdf[u]` of the busy agents free by then on top of `ready`.
    """
    if lam >= POISSON_MAX_MEAN:  # many answers: the Poisson is close enough to a normal
        return phi((lam + gap) / math.sqrt(lam + var))
    hi = int(lam + POISSON_TAIL_SD * math.sqrt(lam) + POISSON_TAIL_SD) + 1
    total = 0.0
    if not exact:
        sd = math.sqrt(var)
        # Below this many answers the agents are certainly not outnumbered: no need to sum them.
        lo = max(0, int(-gap - POISSON_TAIL_SD * sd) - 1)
        pmf = math.exp(-lam)
        for d in range(hi + 1):
            if d >= lo:
                total += pmf * phi((d + gap) / sd)
            pmf *= lam / (d + 1)
        return total
    m = cdf.shape[1] - 1
    r = 1.0 / max(rel_var, 1e-9)
    shrink = lam / (r + lam)
    pmf = math.exp(-r * math.log1p(lam / r))  # negative binomial P(0) = (r / (r + λ))^r
    ahead = waiting - ready - excess
    for d in range(hi + 1):
        k = d + ahead
        if k >= 0:
            total += pmf * cdf[u, min(k, m)]
        pmf *= (d + r) / (d + 1) * shrink
    return total


@_compiled
def assess(dials: FloatArray, excess: IntArray, marginal_rows: int, ringing_mean: FloatArray, q: FloatArray,
           dq: FloatArray, p_live: float, supply_mean: FloatArray, supply_var: FloatArray, waiting: int,
           ready: int, rate_rel_var: float, supply_cdf: FloatArray, exact: bool) -> FloatArray:
    """For each row i: with `dials[i]` new dials, P(answers by u − agents free by u ≥ `excess[i]`)
    over the grid u, reduced to one number.

    Rows before `marginal_rows` give the marginal abandon probability of one more dial answered
    live: its chance of finding every agent taken at u, or of taking the agent that a later answer
    needed (agents running short at any later v), averaged over when it answers (`dq`). The other
    rows give the chance at the worst u (of a burst of `excess` abandons at once).
    """
    cells = len(q)
    result = np.zeros(len(dials))
    short = np.zeros(cells)
    for i in range(len(dials)):
        for j in range(cells):
            lam = ringing_mean[j] + dials[i] * q[j]
            # The live-answer chances are estimates: their error moves every call the same way, so
            # it adds (λ·error)² of variance, not λ·error.
            var = supply_var[j] + rate_rel_var * lam * lam
            gap = waiting + 0.5 - supply_mean[j] - excess[i]
            short[j] = shortfall(lam, var, gap, excess[i], waiting, ready, rate_rel_var, supply_cdf, j, exact)
        if i < marginal_rows:
            # Served at u, the dial still costs an abandon if agents run short at any later v.
            worst, total = 0.0, 0.0
            for j in range(cells - 1, -1, -1):
                worst = max(worst, short[j])
                total += worst * dq[j]
            result[i] = total / p_live
        else:
            result[i] = short.max()
    return result


FIRST_CANDIDATES = 4  # dial counts the search's first pass evaluates (1 to this)
COARSE_STEPS = 8  # candidates per pass of the search beyond them


@_compiled
def largest_affordable(alpha: float, upper: int, burst_size: int, burst_risk: float,
                       ringing_mean: FloatArray, q: FloatArray, dq: FloatArray, p_live: float,
                       supply_mean: FloatArray, supply_var: FloatArray, waiting: int, ready: int,
                       rate_rel_var: float, supply_cdf: FloatArray, exact: bool) -> tuple[int, float]:
    """Largest n <= upper whose n-th dial's marginal abandon probability is within `alpha`.

    With `burst_size` > 0, n is also kept where the chance of that many abandons at once stays
    within `burst_risk`. Both chances grow with n. Returns n and the expected abandons among those
    n dials per live answer (the marginals interpolated between the ones the search evaluated).
    The first pass settles most ticks: n = 1 to FIRST_CANDIDATES (a busy campaign mostly affords
    none or a few), plus whether even `upper` dials could cause such a burst (if not, the burst is
    not searched). Beyond, coarse passes over the rest bracket the answer and finer ones pin it.
    """
    if upper <= 0:
        return 0, 0.0
    seen = np.full(upper + 1, np.nan)
    k = min(upper, FIRST_CANDIDATES)
    rows = 2 * k + 1 if burst_size > 0 else k
    dials = np.zeros(rows)
    excess = np.zeros(rows, dtype=np.int64)
    for i in range(k):
        dials[i] = i  # the marginal of the (i + 1)-th dial: i others
        if burst_size > 0:
            dials[k + i] = i + 1
            excess[k + i] = burst_size
    if burst_size > 0:
        dials[2 * k] = upper
        excess[2 * k] = burst_size
    values = assess(dials, excess, k, ringing_mean, q, dq, p_live, supply_mean, supply_var, waiting, ready,
                    rate_rel_var, supply_cdf, exact)
    first_bad = k
    for i in range(k):
        seen[i + 1] = values[i]
        if first_bad == k and (values[i] > alpha or (burst_size > 0 and values[k + i] > burst_risk)):
            first_bad = i
    if burst_size > 0 and values[2 * k] <= burst_risk:
        burst_size = 0  # not even `upper` dials risk such a burst
    if first_bad == 0:
        return 0, 0.0
    if first_bad < k:
        lo = hi = first_bad  # the last affordable one
    else:
        lo, hi = k, upper  # invariant: lo is affordable; the answer is in [lo, hi]
    while hi > lo:
        step = max(1, (hi - lo) // COARSE_STEPS)
        cand = np.arange(lo + 1, hi + 1, step)
        m = len(cand)
        rows = 2 * m if burst_size > 0 else m
        dials = np.zeros(rows)
        excess = np.zeros(rows, dtype=np.int64)
        for i in range(m):
            dials[i] = cand[i] - 1
            if burst_size > 0:
                dials[m + i] = cand[i]
                excess[m + i] = burst_size
        values = assess(dials, excess, m, ringing_mean, q, dq, p_live, supply_mean, supply_var, waiting,
                        ready, rate_rel_var, supply_cdf, exact)
        first_bad = m
        for i in range(m):
            seen[cand[i]] = values[i]
            if first_bad == m and (values[i] > alpha or (burst_size > 0 and values[m + i] > burst_risk)):
                first_bad = i
        if first_bad == m:
            lo = cand[m - 1]
            if step == 1 or lo == hi:
                break
        else:
            if first_bad > 0:
                lo = cand[first_bad - 1]
            hi = cand[first_bad] - 1
            if step == 1:
                break
    known = np.zeros(lo)
    known_values = np.zeros(lo)
    count = 0
    for n in range(1, lo + 1):
        if not np.isnan(seen[n]):
            known[count] = n
            known_values[count] = seen[n]
            count += 1
    marginals = np.interp(np.arange(1.0, lo + 1.0), known[:count], known_values[:count])
    return lo, float(marginals.mean())


def warm_up() -> None:
    """Compile (or load from the cache) every kernel, with the argument types the policy uses.

    The first call of a numba function compiles it, holding the interpreter for seconds on a fresh
    checkout: a daemon calls this at start-up, before its event loop has calls to look after, and
    `make` after installing, so that no pacing tick ever pays for it.
    """
    grid = np.array([0, 2, 4], dtype=np.int64)
    curve = np.linspace(1.0, 0.0, 8)
    chances = np.full((2, 3), 0.5)
    zeros3 = np.zeros(3)
    surv = survival(np.ones(8), np.zeros(8))
    talk_free(grid, grid, surv, np.zeros(1, dtype=np.int64), np.ones(1))
    supply_moments(conditional_done(curve, grid, grid), 0.0, np.zeros(3), np.zeros(3))
    live_cum, unresolved = cumulative_incidence(np.ones(8), np.ones(8), np.zeros(8))
    ringing_live(grid, grid, live_cum, unresolved)
    for cdf, exact in ((np.zeros((1, 1)), False), (poisson_binomial_cdf(chances), True)):
        args = (zeros3, np.full(3, 0.2), np.full(3, 0.1), 0.3, np.ones(3), np.ones(3), 0, 1, 0.01, cdf, exact)
        assess(np.zeros(1), np.zeros(1, dtype=np.int64), 1, *args)
        largest_affordable(0.1, 3, 2, 1e-4, *args)
