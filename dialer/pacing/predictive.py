"""`predictive`: model-based pacing with a closed-loop abandon controller.

Each tick the policy asks: if I dial n more numbers now, how likely is the n-th one, should a person
answer, to cost an abandon? It dials the largest n for which that marginal probability stays under
a threshold α, and a controller moves α so that the campaign's abandon rate meets its target.

The model, on a grid of the next seconds (u = 0 .. ring timeout):

- Supply S(u): agents free by u + connect deadline. Ready agents count fully; each busy agent
  counts with its own conditional probability of being free by then, given how long it has already
  been talking or wrapping up. Those come from talk-time and wrap-up distributions learnt online
  from `new_handles` (Kaplan-Meier, with the calls still in progress as censored observations so
  that long calls are not forgotten, and an exponential tail beyond the data).
- Demand D(u): live answers by u. Calls answered and waiting count fully; each ringing call counts
  with its conditional probability of turning into a live answer by then, given how long it has
  rung without an outcome; each new dial with the unconditional one. Both come from the (outcome,
  ring time) distribution learnt online from `new_attempts`.
- The n-th dial, answered at u, finds no agent when the other answers by u take every agent free
  by then; served, it still costs an abandon if agents run short at any later instant of the
  horizon (it took the agent a later answer needed). Answers are counted with a Poisson (the skew
  of many small chances: bursts are what abandon) and the error of the learnt rates adds a common
  variance that keeps big batches on little data in check. In a small pool (up to
  `exact_supply_agents` busy agents) the agents free in time are counted exactly (a Poisson-binomial
  of the agents' own chances) and the answers with a negative binomial carrying the rate error; a
  normal there misjudges the one or two agents that decide whether an answer finds someone, and
  cost 10-agent teams about a point of occupancy. Larger pools use a normal for the agents.
- Bursts: however small each dial's marginal risk, a tick's dials together must not risk, beyond
  `burst_risk`, as many abandons at once as would alone take the window over its limit (answers by
  some u outnumbering the agents free by then by that many). In a small window that is a handful
  of calls, and a single wave of answers is how it breaks.

The controller is a cascade. The outer loops set the goal: the target, lowered while the window
holds few answers to the rate g that keeps it z binomial standard deviations under the limit
(g + z·sqrt(g·(1 − limit)/answers) = limit), then corrected by the window's budget (abandons allowed
at that rate minus abandons in it), then cut as the window's headroom (abandons it can still take
before the limit) shrinks towards the largest burst of abandons seen lately: abandons come in
waves, and a window with room for one wave less than it needs is the one that breaks. They also
measure the model's bias: real abandons over the abandons the model expected from its own dials.
The inner loop moves log α each time the policy dials until the model's expected abandon rate of
its dials equals goal / bias, so it acts on the model's immediate response instead of waiting for
the window.

Shedding: a call still ringing after the regulatory minimum ring (15 s) is kept only while an
agent is there for it (free within the connect deadline); the engine cancels the rest
(`late_calls_to_keep`). A shed call is a no-answer to retry, not an abandon, so the risk of a new
dial lies in the answers it may bring before then (the model's horizon ends two seconds after the
minimum ring). Shed calls enter the ring-time curves as censored observations (Aalen-Johansen), so
shedding does not lower the learnt chance of a live answer.

Distributions forget old data with a half-life in seconds (never below a minimum effective sample),
so a list whose answer rate or talk time drifts through the day is tracked. Until it has seen
enough attempts and live answers, the policy dials progressively. It needs no completed call to
start: until the talk-time curve has events, busy agents are simply not counted on (calls still in
progress enter the curve as censored observations from the first tick).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from dialer.outcomes import AgentState
from dialer.pacing.base import PacingPolicy, PacingSnapshot, PolicyParams, progressive_count
from dialer.telephony import MIN_RING_TIMEOUT_S

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MAX_HANDLE_S = 4 * 3600  # talk-time table length; longer calls fall in the exponential tail
MAX_WRAP_S = 1800
MAX_RING_S = 180  # ring-time table length; ring timeouts are far shorter
WRAP_QUANTILES = np.array([0.125, 0.375, 0.625, 0.875])
TAIL_MIN_WEIGHT = 8.0  # the survival curve is empirical while this much weight lies beyond
VARIANCE_FLOOR = 0.05  # keeps the supply's normal defined when every agent's state is certain
CENSOR_REFRESH_S = 10.0  # how often calls in progress are folded into the talk-time curve
TABLE_REFRESH_S = 5.0  # the talk-time curve is rebuilt at most this often (it moves slowly)
COARSE_STEPS = 8  # candidates per vectorised pass of the search for n
FIRST_CANDIDATES = 4  # dial counts the search's first pass evaluates (1 to this)
MAX_ALPHA_RISE = 0.05  # largest rise of log α per decision (a 5 % larger α)
SURGE_ATTEMPTS = 60.0  # dial outcomes in the recent answer rate that guards against sudden rises
MAX_SURGE = 3.0
GRID_STEP_S = 2  # time resolution of the horizon
POISSON_MAX_MEAN = 25.0  # above this many expected answers a normal replaces the Poisson sum
BURST_S = 30.0  # abandons this close together count as one burst
BURST_HALF_LIFE_S = 1800.0  # how long the largest burst is remembered (half-life)
_LOG_FACT = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, 20001)))])  # log(k!) for k <= 20000
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class PredictiveParams(PolicyParams):
    """Knobs of the `predictive` policy. The defaults are the one configuration benchmarked."""

    alpha_initial: float = Field(
        0.005, gt=0, lt=1, description="starting marginal abandon probability allowed for the last dial"
    )
    alpha_min: float = Field(1e-4, gt=0, lt=1, description="lower bound of the controller's α")
    alpha_max: float = Field(0.5, gt=0, lt=1, description="upper bound of the controller's α")
    inner_gain: float = Field(
        1.0, gt=0, le=10, description="how hard α chases the rate goal (per `inner_lives` predicted lives)"
    )
    inner_lives: float = Field(
        30.0, gt=0, description="predicted live answers over which the model's own rate is averaged"
    )
    bias_prior: float = Field(
        1.0, gt=0, le=20, description="assumed ratio of real to predicted abandons before evidence"
    )
    bias_prior_abandons: float = Field(
        4.0, gt=0, description="weight of that prior, in predicted abandons"
    )
    bias_lives: float = Field(
        300.0, gt=0, description="live answers over which real and predicted abandons are compared"
    )
    payback: float = Field(
        1.0, ge=0, le=10, description="how fast a window over (under) its budget lowers (raises) the goal"
    )
    margin_z: float = Field(
        2.6, ge=0, le=5,
        description="std-devs of sampling noise kept under the limit while the window is young"
    )
    connect_deadline_s: float = Field(
        1.6, gt=0, le=10,
        description="seconds an answered call can wait for an agent: the 2 s rule less the bridge set-up",
    )
    min_burst_reserve: float = Field(
        0.5, gt=0, description="abandons the window keeps in hand for a burst, at least"
    )
    burst_risk: float = Field(
        1e-4, ge=0, lt=1,
        description="largest chance a tick's dials may take of a burst of abandons that alone would put "
                    "the window over its limit (0: not checked)",
    )
    exact_supply_agents: int = Field(
        40, ge=0,
        description="up to this many busy agents the agents free in time are counted exactly "
                    "(a normal beyond)",
    )
    shed_late_calls: bool = Field(
        True,
        description="cancel calls unanswered after the 15 s minimum ring beyond the agents free for them "
                    "(no-answers, retried later, instead of likely abandons)",
    )
    min_handles: int = Field(
        0, ge=0,
        description="completed calls seen before leaving progressive (until then busy agents count as busy)",
    )
    min_attempts: int = Field(100, ge=1, description="resolved dial attempts seen before leaving progressive")
    min_live_answers: int = Field(30, ge=1, description="live answers seen before leaving progressive")
    handles_half_life_s: float = Field(
        900.0, gt=0, description="seconds after which a talk/wrap-up time weighs half (talk times drift)"
    )
    attempts_half_life_s: float = Field(
        180.0, gt=0,
        description="seconds after which a dial outcome weighs half (a list's answer rate can jump)",
    )
    min_effective_handles: float = Field(150.0, gt=0, description="never forget below this many handles")
    min_effective_attempts: float = Field(150.0, gt=0, description="never forget below this many attempts")

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


_PHI_LO, _PHI_STEPS = -9.0, 128  # table of Φ from -9 to 9 in steps of 1/128
_PHI_TABLE = _normal_cdf(np.arange(-9.0, 9.0 + 1.0 / _PHI_STEPS, 1.0 / _PHI_STEPS))


def _phi(z: FloatArray) -> FloatArray:
    """Φ(z) by table lookup: ~1 % relative error at 3σ, several times faster than computing it."""
    index = ((z - _PHI_LO) * _PHI_STEPS + 0.5).astype(np.int64)
    result: FloatArray = np.take(_PHI_TABLE, index, mode="clip")
    return result


def _negative_binomial(d: IntArray, lam: FloatArray, rel_var: float) -> FloatArray:
    """P(D = d) for a count of mean `lam` and variance lam + rel_var·lam², lam (n, u) × d.

    A Poisson whose rate is itself uncertain (a gamma with relative variance `rel_var`: the error
    of the learnt live-answer chances, common to every call): more spread than a Poisson.
    """
    r = 1.0 / max(rel_var, 1e-9)
    # log Γ(d + r) − log Γ(r) = Σ_{i<d} log(r + i)
    top = int(d[-1]) if len(d) else 0
    log_rising = np.concatenate([[0.0], np.cumsum(np.log(r + np.arange(top)))])[d]
    lam3 = lam[:, :, None]
    log_pmf = (log_rising - _LOG_FACT[d] + r * np.log(r / (r + lam3))
               + d * np.log(np.maximum(lam3, 1e-300) / (r + lam3)))
    result: FloatArray = np.exp(log_pmf)
    return result


def _poisson_binomial_cdf(p: FloatArray) -> FloatArray:
    """P(Σ independent Bernoulli(p[i, u]) <= k), shape (u, k = 0..rows), by convolution."""
    rows, cols = p.shape
    dist = np.zeros((cols, rows + 1))
    dist[:, 0] = 1.0
    for i in range(rows):
        # After i agents only counts 0..i have mass: the others stay zero.
        pi = p[i][:, None]
        head = dist[:, : i + 1]
        moved = head * pi
        dist[:, : i + 1] = head * (1.0 - pi)
        dist[:, 1 : i + 2] += moved
    result: FloatArray = np.cumsum(dist, axis=1)
    return result


def _steps(x: FloatArray) -> FloatArray:
    """x[0], x[1] − x[0], x[2] − x[1], …: np.diff(x, prepend=0) without its overhead."""
    result = np.empty_like(x)
    result[0] = x[0]
    np.subtract(x[1:], x[:-1], out=result[1:])
    return result


def _survival(events: FloatArray, censored: FloatArray | None = None) -> FloatArray:
    """P(X > x) on the whole-second grid: Kaplan-Meier with an exponential tail.

    `events` is the (weighted) histogram of completed durations; `censored` that of durations still
    running (calls in progress, whose length is only known to exceed their elapsed time). Ignoring
    them would bias the curve towards short calls, most of all early in a shift, when the long calls
    have not ended yet. Where fewer than TAIL_MIN_WEIGHT observations remain at risk, the curve is
    continued with the constant hazard measured beyond that point (events / time at risk).
    """
    n = len(events)
    if events.sum() <= 0:
        return np.ones(n)
    exposure = events if censored is None else events + censored
    at_risk = np.cumsum(exposure[::-1])[::-1]  # observations lasting at least x
    hazard = np.divide(events, at_risk, out=np.zeros(n), where=at_risk > 0)
    surv: FloatArray = np.cumprod(1.0 - np.minimum(hazard, 1.0)).astype(np.float64)
    thin = np.nonzero(at_risk < TAIL_MIN_WEIGHT)[0]
    if len(thin) == 0:
        return surv
    x0 = max(int(thin[0]) - 1, 0)
    tail_events = float(events[x0 + 1 :].sum())
    tail_time = float(at_risk[x0 + 1 :].sum())
    if tail_events > 0 and tail_time > 0:
        rate = tail_events / tail_time
    else:  # nothing ended out there yet: fall back on the overall hazard
        rate = float(events.sum()) / max(float(at_risk.sum()), 1.0)
    surv[x0:] = surv[x0] * np.exp(-rate * np.arange(n - x0))
    return surv


def _cumulative_incidence(resolved: FloatArray, live: FloatArray,
                          censored: FloatArray) -> tuple[FloatArray, FloatArray]:
    """P(live answer by t) and P(still unresolved after t) from ring-time histograms (Aalen-Johansen).

    `resolved` holds every resolved attempt by ring time, `live` the live answers among them,
    `censored` the calls cancelled while still ringing (shed): they count as at risk up to their
    cancellation and no further. Without censoring this is the plain cumulative share.
    """
    at_risk = np.cumsum((resolved + censored)[::-1])[::-1]
    ok = at_risk > 0
    hazard = np.divide(resolved, at_risk, out=np.zeros_like(resolved), where=ok)
    unresolved: FloatArray = np.cumprod(1.0 - np.minimum(hazard, 1.0)).astype(np.float64)
    before = np.concatenate([[1.0], unresolved[:-1]])
    live_cum: FloatArray = np.cumsum(before * np.divide(live, at_risk, out=np.zeros_like(live), where=ok))
    return live_cum, unresolved


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

    def scale(self, factor: float, *, changes: bool = True) -> None:
        """Forget: every weight times `factor`. `changes=False`: what is derived from this histogram
        does not change (it is scaled together with the others it is used with)."""
        if factor < 1.0:
            self.weights *= factor
            self.changed = self.changed or changes


def _forgetting(factor: float, mass: float, min_mass: float) -> float:
    """The decay factor to apply: `factor`, but never taking the mass below `min_mass`."""
    if mass <= min_mass:
        return 1.0
    return max(factor, min_mass / mass)


@dataclass(frozen=True, slots=True)
class _Pool:
    """The next seconds of one campaign: agents that will be free, live answers that will need them.

    On the grid u (seconds from now): `supply_mean`/`supply_sd` describe the agents free by u plus
    the connect deadline (a normal: ready agents are certain, busy ones independent Bernoullis);
    live answers by u are `waiting` (certain) plus a Poisson count with mean `ringing_mean` + n·q
    for n new dials. The Poisson keeps the right skew of a sum of many small chances: a normal
    would understate how often a burst of answers arrives, which is exactly when calls abandon.
    """

    supply_mean: FloatArray
    supply_var: FloatArray
    waiting: float
    ringing_mean: FloatArray
    q: FloatArray
    rate_rel_var: float  # relative variance of the estimated live-answer chances (1 / live answers seen)
    dq: FloatArray  # chance that a new dial is answered live within each step of the grid
    p_live: float
    # Small pools: P(busy agents free by u <= k) exactly, (u, k), and the ready agents; None: normal.
    supply_cdf: FloatArray | None = None
    ready: int = 0

    def marginal_abandon(self, ns: FloatArray) -> FloatArray:
        """P(the n-th new dial, if answered live, adds an abandon) for each n in `ns`.

        Answered at u, it finds no agent if the other live answers by u (waiting ones, ringing
        ones, the n − 1 other new dials) have already taken every agent free by then (abandons
        leaving the queue would only help it: this errs on the safe side).
        """
        return self._marginal(self._shortfall(ns - 1.0, np.zeros(len(ns))))

    def burst_probability(self, ns: FloatArray, size: int) -> FloatArray:
        """P(n new dials leave at least `size` live answers without an agent), for each n in `ns`.

        At least that many abandon when, at some u, the answers by u outnumber the agents free by
        then by `size`: the chance at the worst u (a lower bound of the chance over the horizon).
        """
        result: FloatArray = self._shortfall(ns, np.full(len(ns), float(size))).max(axis=1)
        return result

    def marginal_and_burst(self, ns: FloatArray, size: int) -> tuple[FloatArray, FloatArray]:
        """`marginal_abandon(ns)` and `burst_probability(ns, size)` in one pass over the grid."""
        k = len(ns)
        short = self._shortfall(np.concatenate([ns - 1.0, ns]),
                                np.concatenate([np.zeros(k), np.full(k, float(size))]))
        return self._marginal(short[:k]), short[k:].max(axis=1)

    def _marginal(self, short: FloatArray) -> FloatArray:
        # Served at u, the dial still costs an abandon if agents run short at any later v: the
        # agent it took was the one a call answering at v needed (first come, first served).
        short = np.maximum.accumulate(short[:, ::-1], axis=1)[:, ::-1]
        result: FloatArray = (short * self.dq[None, :]).sum(axis=1) / self.p_live
        return result

    def _shortfall(self, dials: FloatArray, excess: FloatArray) -> FloatArray:
        """P(answers by u − agents free by u ≥ excess[n]) on the (n, u) grid, with dials[n] new dials.

        Excess 0 is the chance that an answer at u finds every agent taken.
        """
        lam = self.ringing_mean[None, :] + dials[:, None] * self.q[None, :]  # (n, u)
        # The live-answer chances are estimates: their error moves every call the same way, so it
        # adds (λ·error)² of variance, not λ·error. It matters most for a big batch on little data.
        var = self.supply_var[None, :] + self.rate_rel_var * lam * lam  # (n, u)
        # Answers ahead minus agents, before ringing ones (continuity-corrected).
        gap = (self.waiting + 0.5 - self.supply_mean)[None, :] - excess[:, None]  # (n, u)
        small = lam < POISSON_MAX_MEAN
        every = bool(small.all())
        # Many answers: the Poisson is close enough to a normal.
        short = np.empty_like(lam) if every else _phi((lam + gap) / np.sqrt(lam + var))
        cols = np.arange(lam.shape[1]) if every else np.nonzero(small.any(axis=0))[0]
        if len(cols):
            # Few answers: sum over the Poisson's values, where it has mass and agents could run out.
            if every:
                lam_c, sd_c, gap_c = lam, np.sqrt(var), gap
            else:
                lam_c, sd_c, gap_c = lam[:, cols], np.sqrt(var[:, cols]), gap[:, cols]
            top = min(float(lam_c.max()), POISSON_MAX_MEAN)
            hi = int(top + 6.0 * math.sqrt(top) + 6.0)
            lo = max(0, int(float(-gap_c.max() - 6.0 * sd_c.max())) - 1)
            hi = min(max(hi, lo + 1), len(_LOG_FACT) - 1)
            d = np.arange(lo, hi + 1, dtype=np.int64)
            if self.supply_cdf is None:
                log_lam = np.log(np.maximum(lam_c, 1e-300))
                pmf = np.exp(d * log_lam[:, :, None] - lam_c[:, :, None] - _LOG_FACT[d])
                # P(agents free by then <= answers ahead of it - excess), continuity-corrected.
                z = (d + gap_c[:, :, None]) / sd_c[:, :, None]
                poisson = (pmf * _phi(z)).sum(axis=2)
            else:
                pmf = _negative_binomial(d, lam_c, self.rate_rel_var)
                # P(agents free by then <= answers ahead of it - excess), counted exactly.
                cdf = self.supply_cdf[cols]  # (u, k)
                m = cdf.shape[1] - 1
                ahead = int(self.waiting) - self.ready
                k = (d[None, :] + ahead - excess[:, None]).astype(np.int64)  # (n, d)
                enough = cdf[np.arange(len(cols))[None, :, None], np.clip(k, 0, m)[:, None, :]]  # (n, u, d)
                enough = np.where((k < 0)[:, None, :], 0.0, enough)
                poisson = (pmf * enough).sum(axis=2)
            if every:
                result: FloatArray = poisson
                return result
            short[:, cols] = np.where(small[:, cols], poisson, short[:, cols])
        return short

    def largest_affordable(self, alpha: float, upper: int, burst: tuple[int, float] | None = None
                           ) -> tuple[int, float]:
        """Largest n <= upper whose n-th dial's abandon probability (if live) is within `alpha`.

        With `burst` = (size, risk), n is also kept where the chance of `size` abandons at once
        stays within `risk`. Returns n and the expected abandons among those n dials per live
        answer (the marginals interpolated between the ones the search evaluated). Both chances
        grow with n. The first pass, one vectorised evaluation, settles most ticks: n = 1 to
        FIRST_CANDIDATES (a busy campaign mostly affords none or a few), plus whether even `upper`
        dials could cause such a burst (if not, the burst is not searched). Beyond, coarse passes
        over the rest bracket the answer and finer ones pin it.
        """
        if upper <= 0:
            return 0, 0.0
        k = min(upper, FIRST_CANDIDATES)
        ns = np.arange(1, k + 1, dtype=np.float64)
        if burst is None:
            values = self.marginal_abandon(ns)
            ok = values <= alpha
        else:
            size, risk = burst
            short = self._shortfall(np.concatenate([ns - 1.0, ns, [float(upper)]]),
                                    np.concatenate([np.zeros(k), np.full(k + 1, float(size))]))
            values = self._marginal(short[:k])
            bursts = short[k:].max(axis=1)
            ok = (values <= alpha) & (bursts[:k] <= risk)
            if bursts[k] <= risk:  # not even `upper` dials risk such a burst
                burst = None
        seen: dict[int, float] = dict(zip(range(1, k + 1), values.tolist(), strict=True))
        if not ok[0]:
            return 0, 0.0
        if not ok.all():
            lo = hi = int(np.argmin(ok))  # the last affordable one
        else:
            lo, hi = k, upper  # invariant: lo is affordable; the answer is in [lo, hi]
        while hi > lo:
            step = max(1, (hi - lo) // COARSE_STEPS)
            cand = np.arange(lo + 1, hi + 1, step, dtype=np.int64)
            if burst is None:
                values = self.marginal_abandon(cand.astype(np.float64))
                ok = values <= alpha
            else:
                values, bursts = self.marginal_and_burst(cand.astype(np.float64), burst[0])
                ok = (values <= alpha) & (bursts <= burst[1])
            seen.update(zip(cand.tolist(), values.tolist(), strict=True))
            if ok.all():
                lo = int(cand[-1])
                if step == 1 or lo == hi:
                    break
            else:
                first_bad = int(np.argmin(ok))
                if first_bad > 0:
                    lo = int(cand[first_bad - 1])
                hi = int(cand[first_bad]) - 1
                if step == 1:
                    break
        known = sorted(n for n in seen if n <= lo)
        marginals = np.interp(np.arange(1, lo + 1), known, [seen[n] for n in known])
        return lo, float(marginals.mean())


@dataclass
class PredictivePolicy(PacingPolicy):
    """Model-based pacing: elapsed-time-aware supply and demand, closed-loop on the abandon rate."""

    name: ClassVar[str] = "predictive"
    Params: ClassVar[type[PolicyParams]] = PredictiveParams

    log_alpha: float = 0.0
    goal: float = 0.0  # abandon rate the dials aim at now (real, not predicted)
    bias: float = 1.0  # real / predicted abandons, measured
    _last_now: float | None = None
    _last_window: tuple[int, int] | None = None
    _last_control: float | None = None
    _bursts: deque[tuple[float, int]] = field(default_factory=deque)
    _peak_burst: float = 0.0
    _pred_abandons_fast: float = 0.0  # model's expected abandons of recent dials (decayed)
    _pred_lives_fast: float = 0.0
    _pred_abandons_slow: float = 0.0  # same, decayed per real live answer, for the bias
    _real_abandons_slow: float = 0.0
    _handles_seen: int = 0
    _attempts_seen: int = 0
    _lives_seen: int = 0
    _talk: _Decayed = field(default_factory=lambda: _Decayed(MAX_HANDLE_S + 1))
    _wrap: _Decayed = field(default_factory=lambda: _Decayed(MAX_WRAP_S + 1))
    _ring_all: _Decayed = field(default_factory=lambda: _Decayed(MAX_RING_S + 1))
    _ring_live: _Decayed = field(default_factory=lambda: _Decayed(MAX_RING_S + 1))
    _ring_shed: _Decayed = field(default_factory=lambda: _Decayed(MAX_RING_S + 1))  # censored
    _in_progress: FloatArray = field(default_factory=lambda: np.zeros(MAX_HANDLE_S + 1))
    _censored_at: float = -math.inf
    _recent_attempts: float = 0.0  # the last ~SURGE_ATTEMPTS dial outcomes (decayed)
    _recent_lives: float = 0.0
    _talk_built_at: float = -math.inf
    _wrap_built_at: float = -math.inf
    _free_now: float = 0.0  # agents free within the connect deadline, as of `_free_now_at`
    _free_now_at: float = -math.inf
    # Derived tables, rebuilt when the histograms change.
    _talk_surv: FloatArray = field(default_factory=lambda: np.ones(MAX_HANDLE_S + 1))
    _wrap_surv: FloatArray = field(default_factory=lambda: np.ones(MAX_WRAP_S + 1))
    _wrap_q: IntArray = field(default_factory=lambda: np.zeros(len(WRAP_QUANTILES), dtype=np.int64))
    _wrap_levels: list[tuple[int, int]] = field(default_factory=lambda: [(0, len(WRAP_QUANTILES))])
    _talk_table: FloatArray | None = None  # `_talk_free` by whole seconds talked, for the grid below
    _talk_table_offsets: IntArray | None = None  # the grid it was built for (the same object)
    _grid_cache: tuple[int, IntArray, IntArray] | None = None  # horizon, u, ready-by whole seconds
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

    def late_calls_to_keep(self, snap: PacingSnapshot) -> int | None:
        """Keep a call that has rung the minimum only while an agent is there for it.

        Agents there for it: the ones free within the connect deadline (ready ones, and busy ones by
        their chance of finishing that soon, as this tick's decision computed), less the answered
        calls already waiting for one.
        """
        if not self._p.shed_late_calls or not self.warmed_up:
            return None
        free = self._free_now if self._free_now_at == snap.now else float(snap.ready)
        return max(0, int(free - snap.waiting + 0.5))

    # -- learning ---------------------------------------------------------------------------------

    def observe(self, snap: PacingSnapshot) -> None:
        p = self._p
        dt = 0.0 if self._last_now is None else max(0.0, snap.now - self._last_now)
        self._last_now = snap.now
        if dt > 0:
            # Talk and wrap come from the same handles, ring tables from the same attempts: each pair
            # shares one factor so that their ratios stay unbiased.
            factor = 0.5 ** (dt / p.handles_half_life_s)
            handles = _forgetting(factor, self._talk.mass, p.min_effective_handles)
            self._talk.scale(handles)
            self._wrap.scale(handles)
            factor = 0.5 ** (dt / p.attempts_half_life_s)
            attempts = _forgetting(factor, self._ring_all.mass, p.min_effective_attempts)
            # The ring curves are ratios of these three histograms: scaling all three alike leaves
            # them as they are, so it does not call for rebuilding them.
            self._ring_all.scale(attempts, changes=False)
            self._ring_live.scale(attempts, changes=False)
            self._ring_shed.scale(attempts, changes=False)
        for handle in snap.new_handles:
            self._talk.add(handle.talk_s)
            self._wrap.add(handle.wrap_s)
            self._handles_seen += 1
        keep = math.exp(-1.0 / SURGE_ATTEMPTS)
        for attempt in snap.new_attempts:
            # The surge guard compares live answers within the minimum ring, which every attempt
            # reveals (calls are shed only after it), with the learnt chance of one.
            live = attempt.outcome.is_live  # a shed (censored) call is never live
            self._recent_attempts = self._recent_attempts * keep + 1.0
            self._recent_lives = self._recent_lives * keep + (live and attempt.ring_s < MIN_RING_TIMEOUT_S)
            if attempt.censored:
                self._ring_shed.add(attempt.ring_s)
                continue
            self._ring_all.add(attempt.ring_s)
            self._attempts_seen += 1
            if live:
                self._ring_live.add(attempt.ring_s)
                self._lives_seen += 1
        if snap.now - self._censored_at >= CENSOR_REFRESH_S:
            self._censored_at = snap.now
            talking = [int(a.handle_elapsed_s) for a in snap.agents if a.state is AgentState.TALKING]
            in_progress = np.bincount(np.clip(np.array(talking, dtype=np.int64), 0, MAX_HANDLE_S),
                                      minlength=MAX_HANDLE_S + 1)
            self._in_progress = in_progress.astype(np.float64)
            self._talk.changed = True
        self._control(snap)

    def _control(self, snap: PacingSnapshot) -> None:
        """Outer loops: the rate goal from the window's budget, the model's bias from the evidence."""
        p = self._p
        answers, abandons = snap.window_live_answers, snap.window_abandons
        if self._last_window is None:
            new_answers = new_abandons = 0
        else:
            new_answers = max(0, answers - self._last_window[0])
            new_abandons = max(0, abandons - self._last_window[1])
        self._last_window = (answers, abandons)
        # Bias: real abandons against the abandons the model expected from its own dials.
        if new_answers:
            keep = math.exp(-new_answers / p.bias_lives)
            self._pred_abandons_slow *= keep
            self._real_abandons_slow *= keep
        self._real_abandons_slow += new_abandons
        prior = p.bias_prior_abandons
        self.bias = (self._real_abandons_slow + p.bias_prior * prior) / (self._pred_abandons_slow + prior)
        # Goal: the target, less a noise margin while the window holds few answers, then corrected by
        # the window's budget (abandons allowed at that rate minus abandons already in it).
        limit, target = snap.abandon_limit, snap.abandon_target
        # The rate g whose window stays z binomial standard deviations under the limit:
        # g + z·sqrt(g(1 − limit)/answers) = limit, a quadratic in sqrt(g).
        b = p.margin_z * math.sqrt((1.0 - limit) / max(answers, 1))
        root = 0.5 * (-b + math.sqrt(b * b + 4.0 * limit))
        rate = max(0.2 * target, min(target, root * root))
        allowed = rate * answers
        balance = (allowed - abandons) / max(allowed, 3.0)
        self.goal = rate * min(1.25, max(0.1, 1.0 + p.payback * balance))
        # Headroom: abandons the window can still take before it breaks the limit. Abandons come in
        # bursts (a wave of answers meeting no agent), so the window keeps room for the largest
        # burst seen lately; as the room shrinks towards it, the goal shrinks with it.
        if new_abandons:
            self._bursts.append((snap.now, new_abandons))
        while self._bursts and self._bursts[0][0] <= snap.now - BURST_S:
            self._bursts.popleft()
        burst = float(sum(k for _, k in self._bursts))
        dt = 0.0 if self._last_control is None else max(0.0, snap.now - self._last_control)
        self._last_control = snap.now
        self._peak_burst = max(burst, self._peak_burst * 0.5 ** (dt / BURST_HALF_LIFE_S))
        reserve = max(p.min_burst_reserve, self._peak_burst)
        headroom = limit * answers - abandons
        self.goal *= min(1.0, max(0.05, (headroom - reserve) / reserve))

    def _steer(self, n: int, predicted_abandons: float, predicted_lives: float) -> None:
        """Inner loop: move α until the model's expected abandon rate of the dials meets the goal."""
        p = self._p
        self._pred_abandons_slow += predicted_abandons
        if predicted_lives <= 0:
            return
        keep = math.exp(-predicted_lives / p.inner_lives)
        self._pred_abandons_fast = self._pred_abandons_fast * keep + predicted_abandons
        self._pred_lives_fast = self._pred_lives_fast * keep + predicted_lives
        predicted_rate = self._pred_abandons_fast / self._pred_lives_fast
        wanted = self.goal / self.bias
        error = max(-2.0, min(2.0, (wanted - predicted_rate) / wanted))
        step = p.inner_gain * error * min(1.0, predicted_lives / p.inner_lives)
        # Ease off at once, speed up gradually: one big batch at a too-high α is an abandon burst.
        step = min(step, MAX_ALPHA_RISE)
        self.log_alpha = max(math.log(p.alpha_min), min(math.log(p.alpha_max), self.log_alpha + step))

    def _refresh_tables(self, now: float) -> None:
        if (self._talk.changed and now - self._talk_built_at >= TABLE_REFRESH_S) or (
                self._wrap.changed and now - self._wrap_built_at >= TABLE_REFRESH_S):
            self._talk_table = None  # built from both curves
        if self._talk.changed and now - self._talk_built_at >= TABLE_REFRESH_S:
            self._talk_surv = _survival(self._talk.weights, self._in_progress)
            self._talk.changed = False
            self._talk_built_at = now
        if self._wrap.changed and now - self._wrap_built_at >= TABLE_REFRESH_S:
            self._wrap_built_at = now
            self._wrap_surv = _survival(self._wrap.weights)
            cdf = np.cumsum(self._wrap.weights)
            total = cdf[-1] if cdf[-1] > 0 else 1.0
            self._wrap_q = np.searchsorted(cdf / total, WRAP_QUANTILES).astype(np.int64)
            wraps, counts = np.unique(self._wrap_q, return_counts=True)
            self._wrap_levels = list(zip(wraps.tolist(), counts.tolist(), strict=True))
            self._wrap.changed = False
        if self._ring_all.changed or self._ring_live.changed or self._ring_shed.changed:
            if self._ring_all.mass > 0:
                self._live_cum, self._unresolved = _cumulative_incidence(
                    self._ring_all.weights, self._ring_live.weights, self._ring_shed.weights)
            self._ring_all.changed = self._ring_live.changed = self._ring_shed.changed = False

    # -- deciding ---------------------------------------------------------------------------------

    def decide(self, snap: PacingSnapshot) -> int:
        self.observe(snap)
        if not self.warmed_up:
            return progressive_count(snap)
        self._refresh_tables(snap.now)
        free_lines = snap.max_lines - snap.in_flight
        if free_lines <= 0:
            return 0
        full = int(min(snap.ring_timeout_s, MAX_RING_S - 1))
        horizon = full
        if self._p.shed_late_calls:
            # A call still ringing after the minimum ring is kept only for an agent free for it: its
            # answer risks little. The risk of a dial lies in the answers before (plus a step of slack).
            horizon = min(full, int(MIN_RING_TIMEOUT_S) + GRID_STEP_S)
        u, offsets = self._grid(horizon)
        supply_mean, supply_var, ready, groups = self._supply(snap, offsets)
        self._free_now, self._free_now_at = float(supply_mean[0]), snap.now
        surge = self._surge()
        ringing_mean = self._demand(snap, u) * surge
        q = np.minimum(self._live_cum[u] * surge, 1.0)  # a new dial: live answer by u
        p_live = float(min(self._live_cum[full] * surge, 1.0))
        if p_live <= 0 or q[-1] <= 0:
            return progressive_count(snap)
        supply_cdf = None
        busy = sum(len(g) for g in groups)
        if 0 < busy <= self._p.exact_supply_agents:
            supply_cdf = _poisson_binomial_cdf(np.concatenate(groups) if len(groups) > 1 else groups[0])
        elif busy == 0 and self._p.exact_supply_agents > 0:
            supply_cdf = np.ones((len(u), 1))
        pool = _Pool(supply_mean, supply_var + VARIANCE_FLOOR, float(snap.waiting), ringing_mean, q,
                     1.0 / max(self._ring_live.mass, 1.0), _steps(q), p_live,
                     supply_cdf, ready)
        # Beyond this many dials the expected live answers exceed every agent who could possibly be
        # free with a wide margin: the marginal abandon probability is ~1 there.
        reach = supply_mean[-1] + 4.0 * math.sqrt(float(supply_var[-1])) + 4.0
        upper = min(free_lines, max(1, math.ceil(2.0 * reach / p_live)))
        burst = None
        if self._p.burst_risk > 0:
            # Abandons at once that would take the window over its limit.
            room = snap.abandon_limit * snap.window_live_answers - snap.window_abandons
            size = max(1, math.floor(room) + 1)
            burst = (size, self._p.burst_risk)
        n, mean_marginal = pool.largest_affordable(self.alpha, upper, burst)
        if n > 0:
            self._steer(n, n * p_live * mean_marginal, n * p_live)
        return n

    def _grid(self, horizon: int) -> tuple[IntArray, IntArray]:
        """Times u of the horizon (seconds from now) and, in whole seconds from now, when an agent
        must be free for each. The same arrays while the horizon is the same."""
        if self._grid_cache is None or self._grid_cache[0] != horizon:
            u = np.arange(0, horizon + 1, GRID_STEP_S, dtype=np.int64)
            # A dial answered within (u - step, u] is given the agents free by the middle of that step
            # plus the deadline (its answer time is only known to the step).
            ready_by = np.maximum(u - GRID_STEP_S / 2.0, 0.0) + self._p.connect_deadline_s
            self._grid_cache = (horizon, u, np.floor(ready_by).astype(np.int64))
        return self._grid_cache[1], self._grid_cache[2]

    def _surge(self) -> float:
        """Factor by which the answer rate of the last dials significantly exceeds the learnt one.

        The learnt rate forgets in minutes; when a list suddenly answers more (the shifting day
        goes from 0.10 to 0.30), those minutes would be paid in abandons. Only a rise beyond two
        standard errors of the recent share counts, so ordinary noise costs nothing.
        """
        n = self._recent_attempts
        total = self._ring_all.mass + self._ring_shed.mass
        if n < 10.0 or total <= 0:
            return 1.0
        learnt = float(self._ring_live.weights[: int(MIN_RING_TIMEOUT_S)].sum()) / total
        recent = self._recent_lives / n
        floor = recent - 2.0 * math.sqrt(recent * (1.0 - recent) / n)
        return 1.0 if learnt <= 0 else min(MAX_SURGE, max(1.0, floor / learnt))

    def _supply(self, snap: PacingSnapshot, offsets: IntArray
                ) -> tuple[FloatArray, FloatArray, int, list[FloatArray]]:
        """Mean and variance of the agents free by each time in `offsets` (whole seconds from now).

        Also the ready agents and, per group of busy agents, their chances of being free (rows).
        """
        is_talking, is_wrap, is_reserved = AgentState.TALKING, AgentState.WRAP_UP, AgentState.RESERVED
        counts = snap.state_counts
        ready = counts.get(AgentState.READY, 0)
        # Agents on a call (a reserved one is about to be, with nothing talked yet), in pool order.
        talking = ([] if not counts.get(is_talking) and not counts.get(is_reserved) else
                   [a[2] if a[0] is is_talking else 0.0 for a in snap.agents
                    if a[0] is is_talking or a[0] is is_reserved])
        wrapping = [a[1] for a in snap.agents if a[0] is is_wrap] if counts.get(is_wrap) else []
        mean = np.full(len(offsets), float(ready))
        var = np.zeros(len(offsets))
        groups: list[FloatArray] = []
        if talking:
            p_free = self._talk_free(np.array(talking), offsets)
            groups.append(p_free)
            freeing = p_free.sum(axis=0)
            mean += freeing
            # Plus the common error of the learnt talk-time curve (relative variance ~ 1 / handles).
            var += (p_free * (1.0 - p_free)).sum(axis=0) + freeing * freeing / max(self._talk.mass, 1.0)
        if wrapping:
            p_free = self._conditional_done(self._wrap_surv, np.array(wrapping), offsets)
            groups.append(p_free)
            mean += p_free.sum(axis=0)
            var += (p_free * (1.0 - p_free)).sum(axis=0)
        return mean, var, ready, groups

    def _talk_free(self, elapsed_s: FloatArray, offsets: IntArray) -> FloatArray:
        """P(talk ends and wrap-up ends by offset | talked `elapsed_s` so far), agents × offsets.

        Read from a table by whole seconds talked, built for the current curves and grid when
        first needed (the curves change every few seconds, the agents' elapsed times every tick).
        """
        last = len(self._talk_surv) - 1
        e = np.minimum(elapsed_s.astype(np.int64), last)
        need = int(e.max()) + 1
        table = self._talk_table
        if table is None or len(table) < need or self._talk_table_offsets is not offsets:
            rows = min(last + 1, max(need, 2 * len(table) if table is not None else 0, 256))
            table = self._talk_free_rows(np.arange(rows, dtype=np.int64), offsets)
            self._talk_table, self._talk_table_offsets = table, offsets
        result: FloatArray = table[e]
        return result

    def _talk_free_rows(self, e: IntArray, offsets: IntArray) -> FloatArray:
        """`_talk_free` computed for whole seconds talked `e`.

        The wrap-up distribution is represented by four quantiles (merged when equal, as with a
        fixed wrap-up time): free by t means the talk ends by t − wrap, averaged over them.
        """
        surv = self._talk_surv
        last = len(surv) - 1
        s_e = surv[e][:, None]
        live = s_e > 1e-12
        inv = np.divide(1.0, s_e, out=np.zeros_like(s_e), where=live)
        result = np.zeros((len(e), len(offsets)))
        for wrap, count in self._wrap_levels:
            talk_left = offsets - wrap  # the talk must end within this many seconds
            valid = talk_left > 0
            if not valid.any():
                continue
            ends = np.minimum(e[:, None] + np.maximum(talk_left, 0)[None, :], last)
            done = np.where(valid[None, :], 1.0 - surv[ends] * inv, 0.0)
            result += done * (count / len(self._wrap_q))
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

    def _demand(self, snap: PacingSnapshot, u: IntArray) -> FloatArray:
        """Expected live answers by each u from the calls now ringing (their conditional chances)."""
        mean = np.zeros(len(u))
        if snap.ringing:
            last = len(self._live_cum) - 1
            r = np.minimum(np.array([c.elapsed_s for c in snap.ringing]).astype(np.int64), last)
            unresolved = self._unresolved[r][:, None]
            gained = self._live_cum[np.minimum(r[:, None] + u[None, :], last)] - self._live_cum[r][:, None]
            p_live = np.divide(gained, unresolved, out=np.zeros_like(gained), where=unresolved > 1e-9)
            np.clip(p_live, 0.0, 1.0, out=p_live)
            mean += p_live.sum(axis=0)
        return mean
