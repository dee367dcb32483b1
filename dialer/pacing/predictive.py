"""`predictive`: model-based pacing with a closed-loop abandon controller.

Each tick the policy asks: if I dial n more numbers now, how likely is the n-th live answer to find
no agent within the connect deadline? It dials the largest n for which that marginal abandon
probability stays under a threshold α, and a controller moves α so that the campaign's measured
abandon rate over its rolling window sits at the configured target.

The model, on a one-second grid of the next seconds (u = 0 .. ring timeout):

- Supply S(u): agents free by u + connect deadline. Ready agents count fully; each busy agent
  counts with its own conditional probability of being free by then, given how long it has already
  been talking or wrapping up. That probability comes from the empirical talk-time and wrap-up
  distributions learnt online from `new_handles` (exponential tail beyond the data).
- Demand D(u): live answers by u. Calls already answered and waiting count fully; each ringing call
  counts with its conditional probability of turning into a live answer by then, given how long it
  has rung without an outcome; each new dial with the unconditional one. Both come from the
  empirical (outcome, ring time) distribution learnt online from `new_attempts`.
- Both are sums of independent Bernoullis; D(u) − S(u) is approximated by a normal, and the expected
  number of abandons of the pool is max over u of E[(D(u) − S(u))⁺] (an abandoned call leaves, so
  the worst instant of the horizon sets the count). It is convex in n, so a bisection finds the
  largest n whose marginal expected abandons per expected live answer is ≤ α.

The controller is a PI loop on log α, driven by the relative error between the effective target and
the window's abandon rate, integrated per live answer (so it learns as fast as evidence arrives,
whatever the team size), with anti-windup at α's bounds. The effective target is the configured
target, lowered while the window holds few answers so that a short run of bad luck cannot take the
window over the hard limit: target_eff = min(target, limit − z·sqrt(limit·(1 − limit) / answers)).

Distributions forget old data with a half-life in seconds (never below a minimum effective sample),
so a list whose answer rate or talk time drifts through the day is tracked.

Until it has seen enough handles, attempts and live answers, the policy dials progressively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from dialer.outcomes import AgentState
from dialer.pacing.base import PacingPolicy, PacingSnapshot, PolicyParams, progressive_count

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MAX_HANDLE_S = 4 * 3600  # talk-time table length; longer calls fall in the exponential tail
MAX_WRAP_S = 1800
MAX_RING_S = 180  # ring-time table length; ring timeouts are far shorter
WRAP_QUANTILES = np.array([0.125, 0.375, 0.625, 0.875])
TAIL_MIN_WEIGHT = 8.0  # the survival curve is empirical while this much weight lies beyond
VARIANCE_FLOOR = 0.05  # keeps the normal approximation defined when everything is certain
COARSE_STEPS = 24  # candidates per vectorised pass of the search for n
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class PredictiveParams(PolicyParams):
    """Knobs of the `predictive` policy. The defaults are the one configuration benchmarked."""

    alpha_initial: float = Field(
        0.05, gt=0, lt=1, description="starting marginal abandon probability allowed for the last dial"
    )
    alpha_min: float = Field(0.001, gt=0, lt=1, description="lower bound of the controller's α")
    alpha_max: float = Field(0.6, gt=0, lt=1, description="upper bound of the controller's α")
    gain_p: float = Field(0.5, ge=0, le=10, description="proportional gain on the relative rate error")
    integral_answers: float = Field(
        150.0, gt=0, description="live answers over which a persistent error moves log α by its size"
    )
    margin_z: float = Field(
        1.5, ge=0, le=5,
        description="std-devs of sampling noise kept under the limit while the window is young"
    )
    connect_deadline_s: float = Field(2.0, gt=0, le=10, description="live answer to agent, else abandon")
    min_handles: int = Field(20, ge=1, description="completed calls seen before leaving progressive")
    min_attempts: int = Field(60, ge=1, description="resolved dial attempts seen before leaving progressive")
    min_live_answers: int = Field(10, ge=1, description="live answers seen before leaving progressive")
    half_life_s: float = Field(
        1800.0, gt=0, description="seconds after which an observation weighs half (tracks a drifting list)"
    )
    min_effective_handles: float = Field(150.0, gt=0, description="never forget below this many handles")
    min_effective_attempts: float = Field(400.0, gt=0, description="never forget below this many attempts")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> PredictiveParams:
        if not self.alpha_min <= self.alpha_initial <= self.alpha_max:
            raise ValueError("alpha_min <= alpha_initial <= alpha_max is required")
        return self


def _normal_cdf(x: FloatArray) -> FloatArray:
    """Φ(x) to ~1e-7 (Numerical Recipes' erfc); numpy has no erf and scipy is not a dependency."""
    z = np.abs(x) / _SQRT2
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - 0.5 * erfc, 0.5 * erfc)


def _expected_excess(mean: FloatArray, var: FloatArray) -> FloatArray:
    """E[max(0, X)] for X ~ N(mean, var)."""
    sd = np.sqrt(var)
    z = mean / sd
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * z * z)
    return sd * pdf + mean * _normal_cdf(z)


def _survival(weights: FloatArray) -> FloatArray:
    """P(X > x) on the integer grid of `weights` (a histogram by whole seconds), exponential tail.

    Where fewer than TAIL_MIN_WEIGHT observations lie beyond x, the empirical curve is too noisy to
    condition on; it is continued as an exponential with the mean residual life measured there.
    """
    total = float(weights.sum())
    n = len(weights)
    if total <= 0:
        return np.ones(n)
    beyond = total - np.cumsum(weights)  # weight strictly above each bin
    surv = beyond / total
    thin = np.nonzero(beyond < TAIL_MIN_WEIGHT)[0]
    if len(thin) == 0:
        return surv
    x0 = int(thin[0])
    above = weights[x0 + 1 :]
    if beyond[x0] <= 0 or above.sum() <= 0:
        surv[x0:] = 0.0
        return surv
    residual = float((above * np.arange(1, len(above) + 1)).sum() / above.sum())
    surv[x0:] = surv[x0] * np.exp(-np.arange(n - x0) / max(residual, 0.5))
    return surv


@dataclass
class _Decayed:
    """A histogram whose old observations lose weight with a half-life, down to a minimum mass."""

    size: int
    weights: FloatArray = field(init=False)
    changed: bool = True

    def __post_init__(self) -> None:
        self.weights = np.zeros(self.size)

    @property
    def mass(self) -> float:
        return float(self.weights.sum())

    def add(self, value_s: float, amount: float = 1.0) -> None:
        self.weights[min(max(int(value_s), 0), self.size - 1)] += amount
        self.changed = True

    def scale(self, factor: float) -> None:
        if factor < 1.0:
            self.weights *= factor
            self.changed = True


def _forgetting(factor: float, mass: float, min_mass: float) -> float:
    """The decay factor to apply: `factor`, but never taking the mass below `min_mass`."""
    if mass <= min_mass:
        return 1.0
    return max(factor, min_mass / mass)


@dataclass
class PredictivePolicy(PacingPolicy):
    """Model-based pacing: elapsed-time-aware supply and demand, closed-loop on the abandon rate."""

    name: ClassVar[str] = "predictive"
    Params: ClassVar[type[PolicyParams]] = PredictiveParams

    log_alpha: float = 0.0
    _integral: float = 0.0
    _last_now: float | None = None
    _last_window_answers: int | None = None
    _handles_seen: int = 0
    _attempts_seen: int = 0
    _lives_seen: int = 0
    _talk: _Decayed = field(default_factory=lambda: _Decayed(MAX_HANDLE_S + 1))
    _wrap: _Decayed = field(default_factory=lambda: _Decayed(MAX_WRAP_S + 1))
    _ring_all: _Decayed = field(default_factory=lambda: _Decayed(MAX_RING_S + 1))
    _ring_live: _Decayed = field(default_factory=lambda: _Decayed(MAX_RING_S + 1))
    # Derived tables, rebuilt when the histograms change.
    _talk_surv: FloatArray = field(default_factory=lambda: np.ones(MAX_HANDLE_S + 1))
    _wrap_surv: FloatArray = field(default_factory=lambda: np.ones(MAX_WRAP_S + 1))
    _wrap_q: IntArray = field(default_factory=lambda: np.zeros(len(WRAP_QUANTILES), dtype=np.int64))
    _live_cum: FloatArray = field(default_factory=lambda: np.zeros(MAX_RING_S + 1))
    _unresolved: FloatArray = field(default_factory=lambda: np.ones(MAX_RING_S + 1))

    def __post_init__(self) -> None:
        self.log_alpha = math.log(self._p.alpha_initial)

    @property
    def _p(self) -> PredictiveParams:
        params = self.params
        assert isinstance(params, PredictiveParams)
        return params

    @property
    def alpha(self) -> float:
        """The marginal abandon probability currently allowed for the last dial of a tick."""
        return math.exp(self.log_alpha)

    @property
    def warmed_up(self) -> bool:
        """True once the policy has seen enough to trust its model."""
        p = self._p
        return (
            self._handles_seen >= p.min_handles
            and self._attempts_seen >= p.min_attempts
            and self._lives_seen >= p.min_live_answers
        )

    # -- learning ---------------------------------------------------------------------------------

    def observe(self, snap: PacingSnapshot) -> None:
        p = self._p
        dt = 0.0 if self._last_now is None else max(0.0, snap.now - self._last_now)
        self._last_now = snap.now
        if dt > 0:
            factor = 0.5 ** (dt / p.half_life_s)
            # Talk and wrap come from the same handles, ring tables from the same attempts: each pair
            # shares one factor so that their ratios stay unbiased.
            handles = _forgetting(factor, self._talk.mass, p.min_effective_handles)
            self._talk.scale(handles)
            self._wrap.scale(handles)
            attempts = _forgetting(factor, self._ring_all.mass, p.min_effective_attempts)
            self._ring_all.scale(attempts)
            self._ring_live.scale(attempts)
        for handle in snap.new_handles:
            self._talk.add(handle.talk_s)
            self._wrap.add(handle.wrap_s)
            self._handles_seen += 1
        for attempt in snap.new_attempts:
            self._ring_all.add(attempt.ring_s)
            self._attempts_seen += 1
            if attempt.outcome.is_live:
                self._ring_live.add(attempt.ring_s)
                self._lives_seen += 1
        self._control(snap)

    def _control(self, snap: PacingSnapshot) -> None:
        """PI step on log α from the window's abandon rate."""
        p = self._p
        answers = snap.window_live_answers
        new_answers = 0 if self._last_window_answers is None else max(0, answers - self._last_window_answers)
        self._last_window_answers = answers
        limit = snap.abandon_limit
        noise = math.sqrt(limit * (1.0 - limit) / max(answers, 1))
        target = min(snap.abandon_target, limit - p.margin_z * noise)
        error = (target - snap.window_abandon_rate) / snap.abandon_target
        error = max(-5.0, min(5.0, error))
        lo, hi = math.log(p.alpha_min), math.log(p.alpha_max)
        base = math.log(p.alpha_initial)
        self._integral += error * new_answers / p.integral_answers
        log_alpha = base + p.gain_p * error + self._integral
        # Anti-windup: at a bound, the integral stops where it puts α exactly on that bound.
        if log_alpha > hi:
            self._integral -= log_alpha - hi
            log_alpha = hi
        elif log_alpha < lo:
            self._integral += lo - log_alpha
            log_alpha = lo
        self.log_alpha = log_alpha

    def _refresh_tables(self) -> None:
        if self._talk.changed:
            self._talk_surv = _survival(self._talk.weights)
            self._talk.changed = False
        if self._wrap.changed:
            self._wrap_surv = _survival(self._wrap.weights)
            cdf = np.cumsum(self._wrap.weights)
            total = cdf[-1] if cdf[-1] > 0 else 1.0
            self._wrap_q = np.searchsorted(cdf / total, WRAP_QUANTILES).astype(np.int64)
            self._wrap.changed = False
        if self._ring_all.changed or self._ring_live.changed:
            total = self._ring_all.mass
            if total > 0:
                self._live_cum = np.cumsum(self._ring_live.weights) / total
                self._unresolved = 1.0 - np.cumsum(self._ring_all.weights) / total
            self._ring_all.changed = self._ring_live.changed = False

    # -- deciding ---------------------------------------------------------------------------------

    def decide(self, snap: PacingSnapshot) -> int:
        self.observe(snap)
        if not self.warmed_up:
            return progressive_count(snap)
        self._refresh_tables()
        free_lines = snap.max_lines - snap.in_flight
        if free_lines <= 0:
            return 0
        horizon = int(min(snap.ring_timeout_s, MAX_RING_S - 1))
        u = np.arange(horizon + 1)
        supply_mean, supply_var = self._supply(snap, u.astype(np.float64) + self._p.connect_deadline_s)
        demand_mean, demand_var = self._demand(snap, u)
        q = self._live_cum[u]  # a new dial: live answer by u
        base_mean = demand_mean - supply_mean
        base_var = demand_var + supply_var + VARIANCE_FLOOR
        q_var = q * (1.0 - q)
        p_live = float(q[-1])
        if p_live <= 0:
            return progressive_count(snap)
        budget = self.alpha * p_live
        # Beyond this many dials the expected live answers exceed every agent who could possibly be
        # free with a wide margin: the marginal abandon probability is ~1 there.
        reach = supply_mean[-1] + 4.0 * math.sqrt(float(supply_var[-1])) + 4.0 - demand_mean[-1]
        upper = min(free_lines, max(1, math.ceil(2.0 * reach / p_live)))
        return self._largest_affordable(base_mean, base_var, q, q_var, budget, upper)

    @staticmethod
    def _largest_affordable(
        base_mean: FloatArray, base_var: FloatArray, q: FloatArray, q_var: FloatArray, budget: float,
        upper: int,
    ) -> int:
        """Largest n <= upper whose marginal expected abandons (n-th dial) are within `budget`.

        The expected abandons are convex in n, so the marginals increase: a coarse vectorised pass
        over [0, upper] brackets the answer and a fine pass inside the bracket pins it.
        """

        def marginals(ns: IntArray) -> FloatArray:
            both = np.concatenate([ns - 1, ns]).astype(np.float64)[:, None]
            excess = _expected_excess(base_mean + both * q, base_var + both * q_var).max(axis=1)
            half = len(ns)
            result: FloatArray = excess[half:] - excess[:half]
            return result

        lo, hi = 0, upper  # invariant: n = lo is affordable (0 always is); answer in [lo, hi]
        while hi - lo > 1:
            step = max(1, (hi - lo) // COARSE_STEPS)
            ns = np.arange(lo + 1, hi + 1, step, dtype=np.int64)
            ok = marginals(ns) <= budget
            if ok.all():
                if ns[-1] == hi:
                    return hi
                lo = int(ns[-1])
            else:
                first_bad = int(np.argmin(ok))
                if first_bad > 0:
                    lo = int(ns[first_bad - 1])
                hi = int(ns[first_bad]) - 1
            if step == 1:
                break
        if hi > lo and marginals(np.array([hi], dtype=np.int64))[0] <= budget:
            return hi
        return lo

    def _supply(self, snap: PacingSnapshot, at_s: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Mean and variance of the agents free by each time in `at_s` (seconds from now)."""
        talking: list[float] = []
        wrapping: list[float] = []
        ready = 0
        for agent in snap.agents:
            state = agent.state
            if state is AgentState.READY:
                ready += 1
            elif state is AgentState.TALKING:
                talking.append(agent.handle_elapsed_s)
            elif state is AgentState.WRAP_UP:
                wrapping.append(agent.state_elapsed_s)
            elif state is AgentState.RESERVED:
                talking.append(0.0)
        mean = np.full(len(at_s), float(ready))
        var = np.zeros(len(at_s))
        offsets = np.floor(at_s).astype(np.int64)
        if talking:
            p_free = self._talk_free(np.array(talking), offsets)
            mean += p_free.sum(axis=0)
            var += (p_free * (1.0 - p_free)).sum(axis=0)
        if wrapping:
            p_free = self._conditional_done(self._wrap_surv, np.array(wrapping), offsets)
            mean += p_free.sum(axis=0)
            var += (p_free * (1.0 - p_free)).sum(axis=0)
        return mean, var

    def _talk_free(self, elapsed_s: FloatArray, offsets: IntArray) -> FloatArray:
        """P(talk ends and wrap-up ends by offset | talked `elapsed_s` so far), agents × offsets.

        The wrap-up distribution is represented by four quantiles (merged when equal, as with a
        fixed wrap-up time): free by t means the talk ends by t − wrap, averaged over them.
        """
        surv = self._talk_surv
        last = len(surv) - 1
        e = np.minimum(elapsed_s.astype(np.int64), last)
        s_e = surv[e][:, None]
        live = s_e > 1e-12
        inv = np.divide(1.0, s_e, out=np.zeros_like(s_e), where=live)
        wraps, counts = np.unique(self._wrap_q, return_counts=True)
        result = np.zeros((len(e), len(offsets)))
        for wrap, count in zip(wraps.tolist(), counts.tolist(), strict=True):
            talk_left = offsets - wrap  # the talk must end within this many seconds
            valid = talk_left > 0
            if not valid.any():
                continue
            ends = np.minimum(e[:, None] + np.maximum(talk_left, 0)[None, :], last)
            done = np.where(valid[None, :], 1.0 - surv[ends] * inv, 0.0)
            result += done * (count / len(self._wrap_q))
        # An agent past every observed talk time is overdue: count it as free once wrap-up allows.
        overdue = ~live[:, 0]
        if overdue.any():
            result[overdue] = np.mean(offsets[None, :] > self._wrap_q[:, None], axis=0)
        return result

    @staticmethod
    def _conditional_done(surv: FloatArray, elapsed_s: FloatArray, offsets: IntArray) -> FloatArray:
        """P(X <= elapsed + offset | X > elapsed) from a survival table, rows × offsets."""
        last = len(surv) - 1
        e = np.minimum(elapsed_s.astype(np.int64), last)
        s_e = surv[e][:, None]
        live = s_e > 1e-12
        s_end = surv[np.minimum(e[:, None] + offsets[None, :], last)]
        ratio = np.divide(s_end, s_e, out=np.zeros_like(s_end), where=live)
        # Past every observed duration the agent is overdue: it is about to be free (ratio 0).
        result: FloatArray = np.clip(1.0 - ratio, 0.0, 1.0)
        return result

    def _demand(self, snap: PacingSnapshot, u: IntArray) -> tuple[FloatArray, FloatArray]:
        """Mean and variance of the live answers (already waiting or from ringing calls) by each u."""
        mean = np.full(len(u), float(snap.waiting))
        var = np.zeros(len(u))
        if snap.ringing:
            last = len(self._live_cum) - 1
            r = np.minimum(np.array([c.elapsed_s for c in snap.ringing]).astype(np.int64), last)
            unresolved = self._unresolved[r][:, None]
            gained = self._live_cum[np.minimum(r[:, None] + u[None, :], last)] - self._live_cum[r][:, None]
            p_live = np.divide(gained, unresolved, out=np.zeros_like(gained), where=unresolved > 1e-9)
            np.clip(p_live, 0.0, 1.0, out=p_live)
            mean += p_live.sum(axis=0)
            var += (p_live * (1.0 - p_live)).sum(axis=0)
        return mean, var
