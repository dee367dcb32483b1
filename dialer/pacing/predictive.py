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
  of calls, and a single wave of answers is how it breaks. The room is judged forward: at its
  limit the campaign falls back to progressive dialing, which brings fewer answers, and the
  abandons in a small window can then cross the limit as its older answers leave it. The room is
  what the window keeps over its coming length should that happen (when its answers and
  abandons leave it, from its own history; the answers progressive dialing would bring).
- Never fewer dials than progressive: a line per ready agent cannot abandon (the Poisson counts
  above can think so when the burst guard is tight).

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

# The compiled kernels (`dialer.pacing.kernels`: numba, half a second to import) are imported inside
# the methods that use them, so that a process that only validates a config or paces with another
# policy never loads numba.

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MAX_HANDLE_S = 4 * 3600  # talk-time table length; longer calls fall in the exponential tail
MAX_WRAP_S = 1800
MAX_RING_S = 180  # ring-time table length; ring timeouts are far shorter
WRAP_QUANTILES = np.array([0.125, 0.375, 0.625, 0.875])
VARIANCE_FLOOR = 0.05  # keeps the supply's normal defined when every agent's state is certain
CENSOR_REFRESH_S = 10.0  # how often calls in progress are folded into the talk-time curve
TABLE_REFRESH_S = 5.0  # the talk-time curve is rebuilt at most this often (it moves slowly)
MAX_ALPHA_RISE = 0.05  # largest rise of log α per decision (a 5 % larger α)
SURGE_ATTEMPTS = 60.0  # dial outcomes in the recent answer rate that guards against sudden rises
MAX_SURGE = 3.0
GRID_STEP_S = 2  # time resolution of the horizon
BURST_S = 30.0  # abandons this close together count as one burst
BURST_HALF_LIFE_S = 1800.0  # how long the largest burst is remembered (half-life)
WINDOW_BUCKETS = 60  # resolution of the window's own history (when its answers and abandons leave it)
FALLBACK_ANSWERS_SD = 1.0  # answers progressive dialing would bring are counted this many sd short
_NO_CDF = np.zeros((1, 1))  # stands for "no exact supply distribution" in the compiled kernels
# ringing_mean, q, dq, p_live, supply_mean, supply_var, waiting, ready, rate_rel_var, supply_cdf, exact
_ModelArgs = tuple[FloatArray, FloatArray, FloatArray, float, FloatArray, FloatArray, int, int, float,
                   FloatArray, bool]


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


def _steps(x: FloatArray) -> FloatArray:
    """x[0], x[1] − x[0], x[2] − x[1], …: np.diff(x, prepend=0) without its overhead."""
    result = np.empty_like(x)
    result[0] = x[0]
    np.subtract(x[1:], x[:-1], out=result[1:])
    return result


@dataclass
class _Decayed:
    """A histogram whose old observations lose weight with a half-life, down to a minimum mass.

    Forgetting happens every tick and the talk-time histogram has a bin per second of four hours:
    the bins are kept unscaled with the common factor apart (folded in when it gets tiny), so a
    tick costs one multiplication, not one per bin.
    """

    size: int
    changed: bool = True
    _raw: FloatArray = field(init=False)
    _factor: float = 1.0  # weights = _raw × _factor
    _mass: float = 0.0
    _weights: FloatArray | None = None  # _raw × _factor, made when asked for

    def __post_init__(self) -> None:
        self._raw = np.zeros(self.size)

    @property
    def weights(self) -> FloatArray:
        if self._weights is None:
            self._weights = self._raw * self._factor
        return self._weights

    @property
    def mass(self) -> float:
        return self._mass

    def mass_below(self, value_s: int) -> float:
        """The weight of the observations under `value_s`."""
        return float(self._raw[:value_s].sum()) * self._factor

    def add(self, value_s: float, amount: float = 1.0) -> None:
        self._raw[min(max(int(value_s), 0), self.size - 1)] += amount / self._factor
        self._mass += amount
        self._weights = None
        self.changed = True

    def scale(self, factor: float, *, changes: bool = True) -> None:
        """Forget: every weight times `factor`. `changes=False`: what is derived from this histogram
        does not change (it is scaled together with the others it is used with)."""
        if factor < 1.0:
            self._factor *= factor
            self._mass *= factor
            if self._factor < 1e-100:  # long before it would underflow
                self._raw *= self._factor
                self._factor = 1.0
            self._weights = None
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
        leaving the queue would only help it: this errs on the safe side). Served, it still costs
        an abandon if agents run short at any later v: the agent it took was the one a call
        answering at v needed (first come, first served).
        """
        return self._assess(ns - 1.0, np.zeros(len(ns), dtype=np.int64), len(ns))

    def burst_probability(self, ns: FloatArray, size: int) -> FloatArray:
        """P(n new dials leave at least `size` live answers without an agent), for each n in `ns`.

        At least that many abandon when, at some u, the answers by u outnumber the agents free by
        then by `size`: the chance at the worst u (a lower bound of the chance over the horizon).
        """
        return self._assess(ns, np.full(len(ns), size, dtype=np.int64), 0)

    def _assess(self, dials: FloatArray, excess: IntArray, marginal_rows: int) -> FloatArray:
        """The compiled model: marginal abandon chances for the first rows, burst chances after."""
        from dialer.pacing import kernels

        return kernels.assess(dials, excess, marginal_rows, *self._model())

    def largest_affordable(self, alpha: float, upper: int, burst: tuple[int, float] | None = None
                           ) -> tuple[int, float]:
        """Largest n <= upper whose n-th dial's abandon probability (if live) is within `alpha`.

        With `burst` = (size, risk), n is also kept where the chance of `size` abandons at once
        stays within `risk`. Returns n and the expected abandons among those n dials per live
        answer. See `kernels.largest_affordable`.
        """
        from dialer.pacing import kernels

        size, risk = burst if burst is not None else (0, 0.0)
        return kernels.largest_affordable(alpha, upper, size, risk, *self._model())

    def _model(self) -> _ModelArgs:
        """This pool as the compiled kernels take it (after their own arguments)."""
        cdf = self.supply_cdf
        return (self.ringing_mean, self.q, self.dq, self.p_live, self.supply_mean, self.supply_var,
                int(self.waiting), self.ready, self.rate_rel_var, _NO_CDF if cdf is None else cdf,
                cdf is not None)


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
    _rate_built_at: float = -math.inf
    _free_now: float = 0.0  # agents free within the connect deadline, as of `_free_now_at`
    _free_now_at: float = -math.inf
    # Derived tables, rebuilt when the histograms change.
    _talk_surv: FloatArray = field(default_factory=lambda: np.ones(MAX_HANDLE_S + 1))
    _wrap_surv: FloatArray = field(default_factory=lambda: np.ones(MAX_WRAP_S + 1))
    # The wrap-up time as a few levels (whole seconds, weight), for the agents still talking.
    _wrap_level_s: IntArray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    _wrap_level_weight: FloatArray = field(default_factory=lambda: np.ones(1))
    _grid_cache: tuple[int, IntArray, IntArray] | None = None  # horizon, u, ready-by whole seconds
    _live_cum: FloatArray = field(default_factory=lambda: np.zeros(MAX_RING_S + 1))
    _unresolved: FloatArray = field(default_factory=lambda: np.ones(MAX_RING_S + 1))
    # The rolling window as this policy saw it fill: [bucket start, live answers, abandons], oldest
    # first, so that it knows when they leave it; live answers seen since the last tick's bucket.
    _window_history: deque[list[float]] = field(default_factory=deque)
    _window_bucket_s: float = 0.0
    _lives_unbucketed: int = 0
    _progressive_rate: float = 0.0  # live answers per second and agent under progressive dialing

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
                self._lives_unbucketed += 1
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
        self._record_window(snap, new_abandons)
        while self._bursts and self._bursts[0][0] <= snap.now - BURST_S:
            self._bursts.popleft()
        burst = float(sum(k for _, k in self._bursts))
        dt = 0.0 if self._last_control is None else max(0.0, snap.now - self._last_control)
        self._last_control = snap.now
        self._peak_burst = max(burst, self._peak_burst * 0.5 ** (dt / BURST_HALF_LIFE_S))
        reserve = max(p.min_burst_reserve, self._peak_burst)
        headroom = limit * answers - abandons
        self.goal *= min(1.0, max(0.05, (headroom - reserve) / reserve))

    def _record_window(self, snap: PacingSnapshot, new_abandons: int) -> None:
        """Bucket this tick's live answers and abandons, and drop the buckets the window has left."""
        lives, self._lives_unbucketed = self._lives_unbucketed, 0
        window = snap.abandon_window_s
        if window <= 0:
            self._window_history.clear()
            return
        width = window / WINDOW_BUCKETS
        if width != self._window_bucket_s:  # a new window length: what was kept no longer fits
            self._window_history.clear()
            self._window_bucket_s = width
        history = self._window_history
        start = math.floor(snap.now / width) * width
        if history and history[-1][0] == start:
            history[-1][1] += lives
            history[-1][2] += new_abandons
        elif lives or new_abandons:
            history.append([start, float(lives), float(new_abandons)])
        while history and history[0][0] + width <= snap.now - window:
            history.popleft()

    def _fallback_room(self, snap: PacingSnapshot) -> float:
        """Abandons the window can take now and still hold its limit if pacing then had to fall back.

        At the limit the campaign dials progressively, which brings fewer live answers: while the
        abandons stay in the window, its older answers leave it faster than new ones come, and in a
        small window the rate can cross the limit with no abandon added (4 abandons in 158 answers
        are 2.5 %; an hour of progressive dialing at 117 answers an hour makes them 3.4 %). So the
        room is the least, over the window's coming length, of: limit × (answers still in it + the
        answers progressive dialing would bring by then) − abandons still in it; each bucket's
        answers leave before its abandons, and the answers to come are counted one (Poisson) standard
        deviation short. Answers the history does not hold leave first: the window filled before
        this policy started, or another node dialed them (then, once the history spans the window,
        its answers and rate are scaled up to the window's instead).

        A window with no abandon in it is left to the burst guard as it stands: it reaches the
        limit only by a burst of about as many abandons as the guard holds off, and nothing in it
        waits to leave.
        """
        limit, answers, abandons = snap.abandon_limit, snap.window_live_answers, snap.window_abandons
        room = limit * answers - abandons
        window, history = snap.abandon_window_s, self._window_history
        if window <= 0 or abandons <= 0 or not history or self._progressive_rate <= 0:
            return room
        buckets = np.array(history)
        width = self._window_bucket_s
        leaves_in = buckets[:, 0] + width + window - snap.now  # seconds until each bucket has left
        tracked = float(buckets[:, 1].sum())
        rate = self._progressive_rate * snap.working
        if tracked > 0 and buckets[0, 0] <= snap.now - window + width:
            scale, untracked = answers / tracked, 0.0  # the history spans the window
        else:
            scale, untracked = 1.0, max(0.0, answers - tracked)
        rate *= scale
        answers_left = answers - untracked - scale * np.cumsum(buckets[:, 1])
        abandons_left = abandons - (np.cumsum(buckets[:, 2]) - buckets[:, 2])
        coming = rate * np.maximum(leaves_in, 0.0)
        coming = np.maximum(coming - FALLBACK_ANSWERS_SD * np.sqrt(coming), 0.0)  # a slow hour
        rooms = limit * (answers_left + coming) - abandons_left
        return float(min(room, limit * (answers - untracked) - abandons, rooms.min()))

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
        from dialer.pacing import kernels

        refresh_rate = now - self._rate_built_at >= TABLE_REFRESH_S
        if refresh_rate:
            self._rate_built_at = now
        if self._talk.changed and now - self._talk_built_at >= TABLE_REFRESH_S:
            self._talk_surv = kernels.survival(self._talk.weights, self._in_progress)
            self._talk.changed = False
            self._talk_built_at = now
        if self._wrap.changed and now - self._wrap_built_at >= TABLE_REFRESH_S:
            self._wrap_built_at = now
            self._wrap_surv = kernels.survival(self._wrap.weights, np.zeros(MAX_WRAP_S + 1))
            cdf = np.cumsum(self._wrap.weights)
            total = cdf[-1] if cdf[-1] > 0 else 1.0
            # The wrap-up as four quantiles, merged where equal (a fixed wrap-up time is one level).
            levels, counts = np.unique(np.searchsorted(cdf / total, WRAP_QUANTILES), return_counts=True)
            self._wrap_level_s = levels.astype(np.int64)
            self._wrap_level_weight = counts / len(WRAP_QUANTILES)
            self._wrap.changed = False
        if self._ring_all.changed or self._ring_live.changed or self._ring_shed.changed:
            if self._ring_all.mass > 0:
                self._live_cum, self._unresolved = kernels.cumulative_incidence(
                    self._ring_all.weights, self._ring_live.weights, self._ring_shed.weights)
            self._ring_all.changed = self._ring_live.changed = self._ring_shed.changed = False
        if refresh_rate:
            self._progressive_rate = self._progressive_answer_rate()

    def _progressive_answer_rate(self) -> float:
        """Live answers per second one agent brings under progressive dialing: one per cycle of
        h + ((1 − p)/p)·D_fail + D_live (the closed form the simulator is checked against)."""
        talk, wrap, ring_all, ring_live = self._talk, self._wrap, self._ring_all, self._ring_live
        failed = ring_all.mass - ring_live.mass
        if talk.mass <= 0 or wrap.mass <= 0 or ring_live.mass <= 0 or failed <= 0:
            return 0.0
        handle = float(self._talk_surv.sum() + self._wrap_surv.sum())  # means, calls in progress counted
        ring_s = np.arange(MAX_RING_S + 1) + 0.5  # whole-second bins
        d_live = float(ring_live.weights @ ring_s) / ring_live.mass
        d_fail = float((ring_all.weights - ring_live.weights) @ ring_s) / failed
        p_live = ring_live.mass / ring_all.mass
        return 1.0 / (handle + (1.0 - p_live) / p_live * d_fail + d_live)

    # -- deciding ---------------------------------------------------------------------------------

    def decide(self, snap: PacingSnapshot) -> int:
        from dialer.pacing import kernels

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
            chances = np.concatenate(groups) if len(groups) > 1 else groups[0]
            supply_cdf = kernels.poisson_binomial_cdf(chances)
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
            # (Judged on the room the window keeps should the campaign fall back to progressive.)
            room = self._fallback_room(snap)
            size = max(1, math.floor(room) + 1)
            burst = (size, self._p.burst_risk)
        n, mean_marginal = pool.largest_affordable(self.alpha, upper, burst)
        if n > 0:
            self._steer(n, n * p_live * mean_marginal, n * p_live)
        # Never fewer than progressive: a line per ready agent cannot abandon (the model's Poisson
        # counts of answers have no upper bound, so under a tight burst guard it can think so).
        return max(n, progressive_count(snap))

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
        learnt = self._ring_live.mass_below(int(MIN_RING_TIMEOUT_S)) / total
        recent = self._recent_lives / n
        floor = recent - 2.0 * math.sqrt(recent * (1.0 - recent) / n)
        return 1.0 if learnt <= 0 else min(MAX_SURGE, max(1.0, floor / learnt))

    def _supply(self, snap: PacingSnapshot, offsets: IntArray
                ) -> tuple[FloatArray, FloatArray, int, list[FloatArray]]:
        """Mean and variance of the agents free by each time in `offsets` (whole seconds from now).

        Also the ready agents and, per group of busy agents, their chances of being free (rows).
        """
        from dialer.pacing import kernels

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
            # Free by t: the talk ends by t − wrap-up, given how long it has gone on.
            p_free = kernels.talk_free(np.array(talking).astype(np.int64), offsets, self._talk_surv,
                                       self._wrap_level_s, self._wrap_level_weight)
            groups.append(p_free)
            # Plus the common error of the learnt talk-time curve (relative variance ~ 1 / handles).
            kernels.supply_moments(p_free, 1.0 / max(self._talk.mass, 1.0), mean, var)
        if wrapping:
            p_free = kernels.conditional_done(self._wrap_surv, np.array(wrapping).astype(np.int64), offsets)
            groups.append(p_free)
            kernels.supply_moments(p_free, 0.0, mean, var)
        return mean, var, ready, groups

    def _demand(self, snap: PacingSnapshot, u: IntArray) -> FloatArray:
        """Expected live answers by each u from the calls now ringing (their conditional chances)."""
        from dialer.pacing import kernels

        if not snap.ringing:
            return np.zeros(len(u))
        elapsed = np.array([c.elapsed_s for c in snap.ringing]).astype(np.int64)
        return kernels.ringing_live(elapsed, u, self._live_cum, self._unresolved)
