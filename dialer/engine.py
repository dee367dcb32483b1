"""The dialing engine: pace, claim, clear, originate, and route what answers.

One `Engine` serves every campaign of this node. Per campaign, each tick it builds a `PacingSnapshot`,
asks the campaign's policy how many numbers to dial, claims that many leads, passes each through the
compliance gate immediately before originating it, and routes the outcomes:

- live answer → the longest-idle ready agent of the campaign's pool, within the connect deadline
  (2 s from the answer); otherwise an abandon: the safe-harbor message plays and the abandon is counted;
- machine → hang up or leave a message;
- failure → the campaign's retry rules.

The engine talks to telephony only through `dialer.telephony.Telephony` and to compliance only through
`dialer.compliance.gate.Gate`; it runs unchanged in production (SIP pool, real gate, Redis) and in the
simulator (virtual-time event loop, simulated world).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import structlog

from dialer.agents import Agent, AgentError, AgentPool
from dialer.compliance.abandon import AbandonLedger
from dialer.compliance.gate import Blocked, BlockReason, DialCandidate, Gate
from dialer.config import CampaignConfig, CampaignMode, MachineAction
from dialer.errors import ConfigError, DialerError
from dialer.leads import AttemptRecord, Lead, LeadStore, LeaseLostError, next_attempt_at
from dialer.metrics import DialerMetrics, window_label
from dialer.outcomes import AgentState, AnswerKind, Outcome
from dialer.pacing import PacingPolicy, make_policy
from dialer.pacing.base import AgentView, AttemptResult, HandleResult, PacingSnapshot, RingingCall
from dialer.telephony import (
    MIN_RING_TIMEOUT_S,
    AgentConnected,
    AgentConnectFailed,
    AgentTarget,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallFailed,
    CallRinging,
    DialRequest,
    DtmfReceived,
    PlaybackFinished,
    Telephony,
)

log = structlog.get_logger(__name__)

BLOCK_RETRY_DELAY_S = 900.0
"""A lead blocked for a passing reason (outside hours, store down, stale list) is re-checked later."""

PERMANENT_BLOCKS = frozenset(
    {BlockReason.DNC_NATIONAL, BlockReason.DNC_STATE, BlockReason.DNC_INTERNAL, BlockReason.DNC_CAMPAIGN,
     BlockReason.UNPARSEABLE_NUMBER}
)
"""Block reasons that end a lead: it is never dialled for this campaign."""

ROBOCALL_DTMF_GRACE_S = 5.0
"""After a robocall message ends, how long the listener has to press a key before we hang up."""

RECORD_RETRY_S = 300.0
"""How long abandon-ledger records are retried while the store is away before one is given up."""

MAX_CLAIM_ROUNDS = 4
"""Claim rounds per tick: leads the gate blocks are replaced by fresh claims up to this many times."""

MIN_TICK_GAP_S = 0.2
"""Event-triggered ticks (an agent became ready, a line freed) are spaced at least this far apart:
quick enough for ring times of seconds and a 2 s connect deadline, without a tick per event."""

LOOP_STOP_S = 5.0
"""How long `run()` waits, on stopping, for the cancelled pacing loops to end before it goes on."""


def check_pools(campaigns: Mapping[str, CampaignConfig]) -> None:
    """Raise `ConfigError` when two campaigns share an agent pool (each would count its agents)."""
    pools: dict[str, str] = {}
    problems = []
    for cfg in campaigns.values():
        other = pools.setdefault(cfg.agent_pool, cfg.name)
        if other != cfg.name:
            problems.append(f"campaign {cfg.name}: agent_pool {cfg.agent_pool!r} already serves {other}")
    if problems:
        raise ConfigError(problems)


class AbandonProtector(Protocol):
    """Protects a number whose call was abandoned (Ofcom: no re-call for 72 h without an agent)."""

    async def protect(self, number: str, at: float) -> None:
        """Record the abandon of `number` at epoch `at`; the gate reads it before the next dial."""
        ...


class OptOutRecorder(Protocol):
    """Writes an opt-out to the internal DNC list. Awaited before the call is hung up (invariant 5)."""

    async def opt_out(self, number: str, campaign: str, source: str) -> None:
        """Record that `number` must never be called again (source: api, dtmf, disposition)."""
        ...


class CallState(StrEnum):
    """Where one call is in its life, from the engine's point of view."""

    DIALLING = "dialling"
    RINGING = "ringing"
    WAITING = "waiting"  # live answer, no agent yet
    CONNECTING = "connecting"  # agent reserved, being put through
    CONNECTED = "connected"
    ABANDONED = "abandoned"  # safe-harbor message playing
    MACHINE = "machine"  # machine message playing or being hung up
    ROBOCALL = "robocall"  # robocall message playing / waiting for a key
    ENDING = "ending"  # we asked for hang-up


@dataclass(slots=True)
class ActiveCall:
    """A call the engine placed and has not seen end yet."""

    request: DialRequest
    lead: Lead
    record: AttemptRecord
    campaign: CampaignRuntime
    state: CallState = CallState.DIALLING
    dialled_at: float = 0.0
    ringing_at: float | None = None  # first ringing indication (180/183) from the network
    answered_at: float | None = None
    deadline: asyncio.TimerHandle | None = None
    grace: asyncio.TimerHandle | None = None
    counted_live: bool = False  # recorded in the abandon ledger already
    shed: bool = False  # cancelled unanswered by pacing after the minimum ring time


@dataclass(slots=True)
class CampaignStats:
    """Counters since start, per campaign (also exported as metrics)."""

    dials: int = 0
    blocked: int = 0
    live_answers: int = 0
    machines: int = 0
    abandons: int = 0
    connected: int = 0
    failures: int = 0
    opt_outs: int = 0
    shed: int = 0
    ticks: int = 0


@dataclass(slots=True)
class CampaignRuntime:
    """A campaign's live state inside the engine."""

    config: CampaignConfig
    policy: PacingPolicy
    dialing: bool = True
    calls: dict[str, ActiveCall] = field(default_factory=dict)
    new_attempts: list[AttemptResult] = field(default_factory=list)
    new_handles: list[HandleResult] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    last_tick: float = float("-inf")
    last_dial_count: int = 0
    stats: CampaignStats = field(default_factory=CampaignStats)

    @property
    def name(self) -> str:
        """The campaign's name."""
        return self.config.name


@dataclass(slots=True)
class _AgentCall:
    """What the engine remembers about an agent's current or last call, for wrap-up accounting."""

    campaign: CampaignRuntime
    call_id: str
    talk_s: float = 0.0
    ended_at: float = 0.0
    wrap_timer: asyncio.TimerHandle | None = None
    lead: Lead | None = None  # whom the call was with: a disposition may opt the number out or call back


@dataclass(frozen=True, slots=True)
class AgentCallInfo:
    """The call an agent is on or wrapping up, as the API needs it to apply a disposition."""

    campaign: str
    call_id: str
    lead_id: str
    number: str


class Engine:
    """The dialing engine for every campaign of this node. Run it with `await engine.run()`."""

    def __init__(
        self,
        campaigns: Mapping[str, CampaignConfig],
        *,
        agents: AgentPool,
        leads: LeadStore,
        gate: Gate,
        telephony: Telephony,
        abandon: AbandonLedger,
        opt_out: OptOutRecorder | None = None,
        protection: AbandonProtector | None = None,
        clock: Callable[[], float] = time.time,
        call_ids: Callable[[], str] | None = None,
        metrics: DialerMetrics | None = None,
    ) -> None:
        check_pools(campaigns)
        self.agents = agents
        self.leads = leads
        self.gate = gate
        self.telephony = telephony
        self.abandon = abandon
        self.opt_out_recorder = opt_out
        self.protection = protection
        self.clock = clock
        self.metrics = metrics
        counter = itertools.count(1)
        self._call_ids = call_ids or (lambda: f"c{next(counter)}-{int(clock() * 1000)}")
        self.campaigns: dict[str, CampaignRuntime] = {
            name: CampaignRuntime(cfg, make_policy(cfg.pacing.policy, cfg.pacing.params))
            for name, cfg in campaigns.items()
        }
        self._by_pool = {rt.config.agent_pool: rt for rt in self.campaigns.values()}
        for rt in self.campaigns.values():
            self._init_metrics(rt)
        self._calls: dict[str, ActiveCall] = {}
        self._waiting: dict[str, deque[ActiveCall]] = {}
        self._agent_calls: dict[str, _AgentCall] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()  # set when the last active call ends
        self._loops: dict[str, asyncio.Task[None]] = {}
        self.agents.subscribe(self._on_agent_change)

    # Lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Pace every campaign until `stop()`; then cancel what is left of the background work."""
        self.telephony.start(self.handle_event)
        try:
            for rt in self.campaigns.values():
                self._start_loop(rt)
            await self._stop.wait()
        finally:
            loops = list(self._loops.values())
            for task in loops:
                task.cancel()
            if loops:
                # Bounded: a loop that swallowed its cancellation (a library's bug) must not hang the
                # shutdown; it is named in the log, and asyncio.run() cancels it again at exit.
                done, stuck = await asyncio.wait(loops, timeout=LOOP_STOP_S)
                for task in done:
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        log.error("pacing_loop_failed", task=task.get_name(), error=repr(exc))
                for task in stuck:
                    log.error("pacing_loop_not_stopping", task=task.get_name(), waited_s=LOOP_STOP_S)
            self._loops.clear()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5.0)
            for timer_owner in self._calls.values():
                self._cancel_timers(timer_owner)
            for ac in self._agent_calls.values():
                if ac.wrap_timer is not None:
                    ac.wrap_timer.cancel()

    def _start_loop(self, rt: CampaignRuntime) -> None:
        if rt.name not in self._loops or self._loops[rt.name].done():
            self._loops[rt.name] = asyncio.get_running_loop().create_task(
                self._campaign_loop(rt), name=f"pace-{rt.name}"
            )

    def stop_dialing(self) -> None:
        """Stop placing new calls on every campaign; calls in progress carry on."""
        for rt in self.campaigns.values():
            rt.dialing = False
            if self.metrics is not None:
                self.metrics.set_campaign_state(rt.name, "stopped")

    def stop(self) -> None:
        """Make `run()` return (after `stop_dialing` and `drain`, for a clean shutdown)."""
        self._stop.set()

    @property
    def active_calls(self) -> int:
        """Calls placed and not ended yet."""
        return len(self._calls)

    async def drain(self, timeout_s: float) -> int:
        """Stop dialing, let calls finish for up to `timeout_s`, then hang up the rest.

        Returns the number of calls that had to be hung up. Every call still gets its record.
        """
        self.stop_dialing()
        await self._wait_idle(timeout_s)
        remaining = list(self._calls)
        for call_id in remaining:
            await self._hangup(call_id)
        await self._wait_idle(5.0)
        for call_id in list(self._calls):  # telephony never reported the end: record it ourselves
            call = self._calls[call_id]
            await self._finish(call, call.record.outcome or Outcome.FAILED, reason="drain_timeout")
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        return len(remaining)

    async def _wait_idle(self, timeout_s: float) -> None:
        if not self._calls:
            return
        self._idle.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            pass

    def set_dialing(self, campaign: str, dialing: bool) -> None:
        """Start or pause dialing for one campaign (calls in progress carry on)."""
        rt = self._campaign(campaign)
        rt.dialing = dialing
        if self.metrics is not None:
            self.metrics.set_campaign_state(rt.name, "running" if dialing else "paused")
        rt.wake.set()

    def reconfigure(self, campaigns: Mapping[str, CampaignConfig]) -> None:
        """Apply new campaign settings from the next tick on, without dropping calls.

        A campaign whose pacing settings are unchanged keeps its policy object and what it learnt.
        Raises `ConfigError` (and changes nothing) when the new set is inconsistent.
        """
        check_pools(campaigns)
        for name, cfg in campaigns.items():
            rt = self.campaigns.get(name)
            if rt is None:
                rt = CampaignRuntime(cfg, make_policy(cfg.pacing.policy, cfg.pacing.params))
                self.campaigns[name] = rt
                self._by_pool[cfg.agent_pool] = rt
                self._init_metrics(rt)
                try:
                    self._start_loop(rt)
                except RuntimeError:  # no running loop yet: run() starts it
                    pass
                continue
            if cfg.pacing != rt.config.pacing:
                rt.policy = make_policy(cfg.pacing.policy, cfg.pacing.params)
            if cfg.agent_pool != rt.config.agent_pool:
                self._by_pool.pop(rt.config.agent_pool, None)
                self._by_pool[cfg.agent_pool] = rt
            rt.config = cfg
            self._init_metrics(rt)
            rt.wake.set()
        for name in set(self.campaigns) - set(campaigns):
            self.campaigns[name].dialing = False

    def _init_metrics(self, rt: CampaignRuntime) -> None:
        if self.metrics is None:
            return
        cfg = rt.config
        self.metrics.init_campaign(cfg.name, windows={window_label(cfg.abandon_window_s): cfg.abandon_limit})
        self.metrics.set_campaign_info(cfg.name, policy=cfg.pacing.policy, rule_pack=cfg.rule_pack,
                                       mode=cfg.mode.value)
        self.metrics.set_campaign_state(cfg.name, "running" if rt.dialing else "paused")

    def _campaign(self, name: str) -> CampaignRuntime:
        try:
            return self.campaigns[name]
        except KeyError:
            raise DialerError(f"unknown campaign {name!r}") from None

    # Pacing --------------------------------------------------------------------------------------

    async def _campaign_loop(self, rt: CampaignRuntime) -> None:
        loop = asyncio.get_running_loop()
        # Ends on cancellation, or at its next turn after stop(): a cancel swallowed inside a tick
        # (redis-py on Python 3.11 can, in a command's socket write) must not leave it pacing on.
        while not self._stop.is_set():
            since = loop.time() - rt.last_tick
            if since < MIN_TICK_GAP_S:
                await asyncio.sleep(MIN_TICK_GAP_S - since)
            rt.last_tick = loop.time()
            rt.wake.clear()
            started = time.perf_counter()
            try:
                await self.tick(rt)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pacing_tick_failed", campaign=rt.name)
            if self.metrics is not None:
                self.metrics.tick_duration.labels(campaign=rt.name).observe(time.perf_counter() - started)
            try:
                async with asyncio.timeout(rt.config.tick_interval_s):
                    await rt.wake.wait()
            except TimeoutError:
                pass

    def snapshot(self, rt: CampaignRuntime, now: float, window_live: int, window_abandons: int,
                 limit_reached: bool, window_s: float = 0.0) -> PacingSnapshot:
        """The pacing snapshot of one campaign at `now`; drains the attempts/handles learnt since the last."""
        cfg = rt.config
        views: list[AgentView] = []
        counts: dict[AgentState, int] = {}
        # Once per agent per tick, the hot path of a large pool: names bound to locals, and the
        # named tuples made with tuple.__new__ (their own __new__ is a Python function).
        logged_out, talking, wrap_up = AgentState.LOGGED_OUT, AgentState.TALKING, AgentState.WRAP_UP
        make, view, append = tuple.__new__, AgentView, views.append
        for agent in self.agents.in_pool(cfg.agent_pool):
            state = agent.state
            if state is logged_out:
                continue
            counts[state] = counts.get(state, 0) + 1
            handle = now - agent.call_started_at if state is talking or state is wrap_up else 0.0
            append(make(view, (state, now - agent.state_since, handle)))
        ringing = []
        waiting = 0
        dialling, ringing_state, waiting_state = CallState.DIALLING, CallState.RINGING, CallState.WAITING
        for call in rt.calls.values():
            call_state = call.state
            if (call_state is ringing_state or call_state is dialling) and not call.shed:
                ringing.append(make(RingingCall, (now - call.dialled_at,)))
            elif call_state is waiting_state:
                waiting += 1
        attempts, rt.new_attempts = tuple(rt.new_attempts), []
        handles, rt.new_handles = tuple(rt.new_handles), []
        return PacingSnapshot(
            now=now,
            agents=tuple(views),
            ringing=tuple(ringing),
            waiting=waiting,
            max_lines=cfg.max_lines,
            ring_timeout_s=cfg.ring_timeout_s,
            abandon_target=cfg.abandon_target,
            abandon_limit=cfg.abandon_limit,
            window_live_answers=window_live,
            window_abandons=window_abandons,
            abandon_limit_reached=limit_reached,
            new_attempts=attempts,
            new_handles=handles,
            tick_interval_s=cfg.tick_interval_s,
            abandon_window_s=window_s,
            state_counts=counts,
        )

    async def tick(self, rt: CampaignRuntime) -> int:
        """One pacing decision for `rt`: returns how many numbers were handed to the gate."""
        rt.stats.ticks += 1
        if not rt.dialing:
            return 0
        now = self.clock()
        status = await self.abandon.status(rt.name, now)
        snap = self.snapshot(rt, now, status.live_answers, status.abandons, status.limit_reached,
                             status.window_s)
        count = rt.policy.dial_count(snap)
        rt.last_dial_count = count
        keep = rt.policy.late_calls_to_keep(snap)
        if keep is not None:
            await self._shed(rt, now, keep)
        if self.metrics is not None:
            self._publish(rt, snap, status.rate)
        count = min(count, self.telephony.capacity())
        if count <= 0:
            return 0
        placed = 0
        for _ in range(MAX_CLAIM_ROUNDS):  # blocked leads are replaced within the same tick
            leads = await self.leads.claim(rt.name, count - placed, self.clock())
            for lead in leads:
                placed += await self._dial(rt, lead)
            if not leads or placed >= count:
                break
        return placed

    async def _shed(self, rt: CampaignRuntime, now: float, keep: int) -> None:
        """Cancel unanswered calls that have rung the regulatory minimum, all but the `keep` youngest.

        Pacing keeps a late call only while an agent is there for it: a call cancelled before it is
        answered is a no-answer to be retried, one answered with no agent is an abandon. The minimum
        (15 s, FTC/FCC and Ofcom) counts from the first ringing indication, not from the INVITE: a
        call the network has not reported ringing is never shed.
        """
        late = [c for c in rt.calls.values()
                if c.state is CallState.RINGING and not c.shed and c.ringing_at is not None
                and now - c.ringing_at >= MIN_RING_TIMEOUT_S]
        if len(late) <= keep:
            return
        # Oldest first: the youngest, kept, still have the most chance of an answer.
        late.sort(key=lambda c: (c.ringing_at, c.dialled_at))
        for call in late[: len(late) - max(keep, 0)]:
            call.shed = True
            rt.stats.shed += 1
            if self.metrics is not None:
                self.metrics.calls_shed.labels(campaign=rt.name).inc()
            await self._hangup(call.request.call_id)

    def _publish(self, rt: CampaignRuntime, snap: PacingSnapshot, window_rate: float) -> None:
        """Pacing and agent gauges of one campaign, as of this tick."""
        assert self.metrics is not None
        m, name = self.metrics, rt.name
        counts: dict[AgentState, int] = {}
        busy = working = 0.0
        for agent in self.agents.in_pool(rt.config.agent_pool):
            counts[agent.state] = counts.get(agent.state, 0) + 1
            for state in (AgentState.TALKING, AgentState.WRAP_UP):
                busy += self.agents.seconds_in(agent, state)
            for state in (AgentState.READY, AgentState.RESERVED, AgentState.TALKING, AgentState.WRAP_UP):
                working += self.agents.seconds_in(agent, state)
        m.set_agents(name, counts)
        m.agent_occupancy.labels(campaign=name).set(busy / working if working else 0.0)
        m.lines_in_flight.labels(campaign=name).set(snap.in_flight)
        m.dial_level.labels(campaign=name).set(
            (snap.in_flight + max(rt.last_dial_count, 0)) / snap.working if snap.working else 0.0
        )
        m.abandon_rate.labels(campaign=name, window=window_label(rt.config.abandon_window_s)).set(window_rate)

    async def _dial(self, rt: CampaignRuntime, lead: Lead) -> bool:
        """Gate and originate one lead; True when a call was placed."""
        cfg = rt.config
        call_id = self._call_ids()
        record = AttemptRecord(call_id=call_id, lead_id=lead.lead_id, campaign=rt.name, number=lead.number,
                               attempt=lead.attempts + 1, claimed_at=self.clock())
        try:
            verdict = await self.gate.check(DialCandidate(lead.number, rt.name, lead.lead_id), self.clock())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the gate must not raise; if it does, fail closed
            log.error("gate_error", campaign=rt.name, lead=lead.lead_id, error=repr(exc))
            verdict = Blocked(BlockReason.GATE_ERROR, repr(exc))
        if self.metrics is not None:
            self.metrics.record_gate(rt.name, verdict.reason if isinstance(verdict, Blocked) else None)
        if isinstance(verdict, Blocked):
            rt.stats.blocked += 1
            record.outcome, record.reason = Outcome.BLOCKED, verdict.reason.value
            record.ended_at = self.clock()
            log.debug("dial_blocked", campaign=rt.name, lead=lead.lead_id, reason=verdict.reason.value)
            retry_at = None if verdict.reason in PERMANENT_BLOCKS else self.clock() + BLOCK_RETRY_DELAY_S
            # A blocked lead was not attempted: its attempt count stays where it was.
            record.attempt = lead.attempts
            await self._complete(lead, record, retry_at)
            return False
        request = DialRequest(call_id=call_id, number=lead.number, campaign=rt.name, caller_id=cfg.caller_id,
                              ring_timeout_s=cfg.ring_timeout_s,
                              detect_machine=cfg.mode is CampaignMode.AGENT)
        call = ActiveCall(request, lead, record, rt, dialled_at=self.clock())
        record.dialled_at = call.dialled_at
        self._calls[call_id] = call
        rt.calls[call_id] = call
        rt.stats.dials += 1
        if self.metrics is not None:
            self.metrics.originations.labels(campaign=rt.name).inc()
        try:
            await self.telephony.originate(verdict, request)
        except asyncio.CancelledError:
            raise
        except DialerError as exc:
            if self.metrics is not None:
                self.metrics.origination_failures.labels(campaign=rt.name).inc()
            if call_id in self._calls:  # no terminal event will come for a call that never left
                log.warning("originate_failed", campaign=rt.name, call_id=call_id, error=str(exc))
                rt.new_attempts.append(AttemptResult(Outcome.FAILED, 0.0))
                await self._finish(call, Outcome.FAILED, reason=f"originate: {exc}")
        return True

    # Events --------------------------------------------------------------------------------------

    def handle_event(self, event: CallEvent) -> None:
        """Telephony's event handler (runs on the loop thread, must not block)."""
        call = self._calls.get(event.call_id)
        if call is None:
            log.debug("event_for_unknown_call", call_id=event.call_id, event=type(event).__name__)
            return
        match event:
            case CallRinging():
                if call.state is CallState.DIALLING:
                    call.state = CallState.RINGING
                    call.ringing_at = self.clock()
            case CallAnswered():
                self._on_answered(call, event)
            case AgentConnected():
                self._on_agent_connected(call, event)
            case AgentConnectFailed():
                self._on_agent_connect_failed(call, event)
            case DtmfReceived():
                self._on_dtmf(call, event)
            case PlaybackFinished():
                self._on_playback_finished(call)
            case CallFailed():
                self._on_failed(call, event)
            case CallEnded():
                self._on_ended(call, event)

    def _on_answered(self, call: ActiveCall, ev: CallAnswered) -> None:
        if call.state not in (CallState.DIALLING, CallState.RINGING):
            return
        rt, cfg = call.campaign, call.campaign.config
        call.answered_at = ev.answered_at
        call.record.answered_at, call.record.answer_kind = ev.answered_at, ev.kind.value
        ring_s = max(0.0, ev.answered_at - call.dialled_at)
        if ev.kind is AnswerKind.MACHINE:
            rt.stats.machines += 1
            self._spawn(self._with_retries("abandon_machine", lambda: self.abandon.record_machine(
                rt.name, ev.answered_at, event_id=call.request.call_id)))
            rt.new_attempts.append(AttemptResult(Outcome.MACHINE, ring_s))
            call.state, call.record.outcome = CallState.MACHINE, Outcome.MACHINE
            if cfg.machine_action is MachineAction.MESSAGE and cfg.machine_message:
                self._spawn(self.telephony.play(call.request.call_id, cfg.machine_message))
            else:
                self._spawn(self._hangup(call.request.call_id))
            return
        rt.stats.live_answers += 1
        rt.new_attempts.append(AttemptResult(Outcome.LIVE, ring_s))
        if cfg.mode is CampaignMode.ROBOCALL:
            call.state, call.record.outcome = CallState.ROBOCALL, Outcome.LIVE
            self._spawn(self.telephony.play(call.request.call_id, cfg.robocall_message or ""))
            return
        self._arm_deadline(call, ev.answered_at + cfg.connect_deadline_s)
        self._offer(call)

    def _arm_deadline(self, call: ActiveCall, at: float) -> None:
        delay = max(0.0, at - self.clock())
        call.deadline = asyncio.get_running_loop().call_later(delay, self._on_deadline, call.request.call_id)

    def _offer(self, call: ActiveCall) -> None:
        """Give a live call to the best ready agent, or queue it until one is ready or the deadline."""
        pool = call.campaign.config.agent_pool
        agent = self.agents.select(pool)
        if agent is None:
            call.state = CallState.WAITING
            self._waiting.setdefault(pool, deque()).append(call)
            return
        self._connect(call, agent)

    def _connect(self, call: ActiveCall, agent: Agent) -> None:
        call.state = CallState.CONNECTING
        call.record.agent_id = agent.agent_id
        self.agents.transition(agent.agent_id, AgentState.RESERVED, call_id=call.request.call_id)
        self._spawn(self.telephony.connect_agent(call.request.call_id, AgentTarget(agent.agent_id, agent.uri),
                                                 call.campaign.config.transfer_mode))

    def _on_agent_connected(self, call: ActiveCall, ev: AgentConnected) -> None:
        if call.state is not CallState.CONNECTING:
            return
        rt = call.campaign
        now = self.clock()
        if call.deadline is not None:
            call.deadline.cancel()
            call.deadline = None
        late = call.answered_at is not None and now - call.answered_at > rt.config.connect_deadline_s
        if self.metrics is not None and call.answered_at is not None:
            self.metrics.answer_to_agent.labels(campaign=rt.name).observe(now - call.answered_at)
        if rt.config.mode is CampaignMode.AGENT:
            self._count_live(call, abandoned=late)
        call.state, call.record.connected_at, call.record.outcome = CallState.CONNECTED, now, Outcome.LIVE
        rt.stats.connected += 1
        try:
            self.agents.transition(ev.agent_id, AgentState.TALKING, call_id=call.request.call_id)
        except AgentError as exc:
            log.error("agent_state_conflict", agent=ev.agent_id, call_id=call.request.call_id, error=str(exc))
            return
        self._agent_calls[ev.agent_id] = _AgentCall(rt, call.request.call_id)
        self._agent_calls[ev.agent_id].lead = call.lead

    def _on_agent_connect_failed(self, call: ActiveCall, ev: AgentConnectFailed) -> None:
        if call.state is not CallState.CONNECTING:
            return
        log.warning("agent_connect_failed", agent=ev.agent_id, call_id=call.request.call_id, reason=ev.reason)
        call.record.agent_id = None
        agent = self.agents.get(ev.agent_id)
        if agent.state is AgentState.RESERVED:
            # A phone that does not answer would eat every call: take the agent out until they act.
            self.agents.transition(ev.agent_id, AgentState.PAUSED, reason="connect_failed")
        if call.deadline is not None:
            self._offer(call)
        else:
            self._abandon(call)

    def _on_deadline(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        call.deadline = None
        if call.state is CallState.WAITING:
            pool = self._waiting.get(call.campaign.config.agent_pool)
            if pool is not None and call in pool:
                pool.remove(call)
            self._abandon(call)

    def _abandon(self, call: ActiveCall) -> None:
        """No agent in time: play the safe-harbor message, count the abandon, hang up after it."""
        rt = call.campaign
        call.state, call.record.outcome = CallState.ABANDONED, Outcome.ABANDONED
        if rt.config.mode is CampaignMode.AGENT:
            self._count_live(call, abandoned=True)
        log.info("call_abandoned", campaign=rt.name, call_id=call.request.call_id, lead=call.lead.lead_id)
        self._spawn(self.telephony.play(call.request.call_id, rt.config.safe_harbor_message))

    def _count_live(self, call: ActiveCall, *, abandoned: bool) -> None:
        if call.counted_live:
            return
        call.counted_live = True
        if abandoned:
            call.campaign.stats.abandons += 1
            if self.protection is not None:
                self._spawn(self.protection.protect(call.lead.number, self.clock()))
        if self.metrics is not None:
            self.metrics.record_live_answer(call.campaign.name, abandoned=abandoned)
        at = call.answered_at if call.answered_at is not None else self.clock()
        name, call_id = call.campaign.name, call.request.call_id
        # Identified by the call: a retry after a lost reply must not count the answer twice.
        self._spawn(self._with_retries("abandon_record", lambda: self.abandon.record(
            name, at, abandoned=abandoned, event_id=call_id)))

    def _on_dtmf(self, call: ActiveCall, ev: DtmfReceived) -> None:
        cfg = call.campaign.config
        if ev.digit == cfg.opt_out_key and call.state in (
            CallState.ROBOCALL, CallState.ABANDONED, CallState.WAITING, CallState.MACHINE
        ):
            self._spawn(self._opt_out_and_hang_up(call))
        elif ev.digit == cfg.connect_key and call.state is CallState.ROBOCALL:
            if call.grace is not None:
                call.grace.cancel()
                call.grace = None
            self._arm_deadline(call, self.clock() + cfg.connect_deadline_s)
            self._offer(call)

    async def _opt_out_and_hang_up(self, call: ActiveCall) -> None:
        call.campaign.stats.opt_outs += 1
        call.record.outcome = Outcome.OPTED_OUT
        if self.opt_out_recorder is not None:
            await self.opt_out_recorder.opt_out(call.lead.number, call.campaign.name, "dtmf")
        await self._hangup(call.request.call_id)

    def _on_playback_finished(self, call: ActiveCall) -> None:
        if call.state in (CallState.ABANDONED, CallState.MACHINE):
            self._spawn(self._hangup(call.request.call_id))
        elif call.state is CallState.ROBOCALL:
            call.grace = asyncio.get_running_loop().call_later(
                ROBOCALL_DTMF_GRACE_S, lambda: self._spawn(self._hangup(call.request.call_id))
            )

    def _on_failed(self, call: ActiveCall, ev: CallFailed) -> None:
        failed, reason = ev.outcome, ev.reason
        if call.shed and call.answered_at is None:
            # Cancelled by pacing after the minimum ring: unanswered so far, retried as a no-answer.
            failed, reason = Outcome.NO_ANSWER, "shed"
        if call.answered_at is None:
            ring_s = max(0.0, self.clock() - call.dialled_at)
            # A shed call did not resolve: it is only known to ring longer than it did.
            call.campaign.new_attempts.append(AttemptResult(failed, ring_s, censored=call.shed))
            call.campaign.stats.failures += 1
        call.record.sip_status, call.record.reason = ev.sip_status, reason
        outcome = call.record.outcome if call.record.outcome is not None else failed
        self._release_call(call)
        self._spawn(self._finish(call, outcome, reason=reason))

    def _on_ended(self, call: ActiveCall, ev: CallEnded) -> None:
        outcome = call.record.outcome
        before_agent = call.state in (CallState.WAITING, CallState.CONNECTING)
        if before_agent and call.campaign.config.mode is CampaignMode.AGENT:
            # The callee hung up before an agent took the call: count it as abandoned (conservative).
            outcome = Outcome.ABANDONED
            self._count_live(call, abandoned=True)
        elif call.state is CallState.CONNECTED and call.record.agent_id is not None:
            self._start_wrap_up(call.record.agent_id, call)
        self._release_call(call)
        self._spawn(self._finish(call, outcome or Outcome.FAILED, reason=f"hangup_{ev.hangup_by}"))

    def _release_call(self, call: ActiveCall) -> None:
        """Free whatever the call held: its timers, its place in a queue, a reserved agent."""
        self._cancel_timers(call)
        if call.state is CallState.WAITING:
            queue = self._waiting.get(call.campaign.config.agent_pool)
            if queue is not None and call in queue:
                queue.remove(call)
        if call.state is CallState.CONNECTING and call.record.agent_id is not None:
            agent = self.agents.get(call.record.agent_id)
            if agent.state is AgentState.RESERVED and agent.call_id == call.request.call_id:
                self.agents.transition(agent.agent_id, AgentState.READY)
        call.state = CallState.ENDING

    @staticmethod
    def _cancel_timers(call: ActiveCall) -> None:
        for timer in (call.deadline, call.grace):
            if timer is not None:
                timer.cancel()
        call.deadline = call.grace = None

    async def _finish(self, call: ActiveCall, outcome: Outcome, *, reason: str = "") -> None:
        """Write the attempt record, reschedule or finish the lead, forget the call."""
        call_id = call.request.call_id
        if self._calls.pop(call_id, None) is None:
            return
        call.campaign.calls.pop(call_id, None)
        if not self._calls:
            self._idle.set()
        rec = call.record
        rec.outcome = outcome
        rec.ended_at = self.clock()
        if self.metrics is not None:
            self.metrics.dials.labels(campaign=call.campaign.name, result=outcome.value).inc()
        if reason and not rec.reason:
            rec.reason = reason
        retry_at = next_attempt_at(outcome, rec.attempt, call.campaign.config.retry, rec.ended_at)
        await self._complete(call.lead, rec, retry_at)
        call.campaign.wake.set()

    async def _complete(self, lead: Lead, record: AttemptRecord, retry_at: float | None) -> None:
        """Record an attempt; shielded so that a shutdown cannot lose it halfway."""
        try:
            await asyncio.shield(self.leads.complete(lead, record, retry_at))
        except LeaseLostError as exc:  # the store already recorded this attempt when the lease expired
            log.warning("attempt_not_recorded", campaign=exc.campaign, lead=exc.lead_id, reason=exc.why)

    async def _hangup(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        try:
            await self.telephony.hangup(call_id)
        except DialerError as exc:
            log.warning("hangup_failed", call_id=call_id, error=str(exc))

    # Agents --------------------------------------------------------------------------------------

    def _start_wrap_up(self, agent_id: str, call: ActiveCall) -> None:
        agent = self.agents.get(agent_id)
        if agent.state is not AgentState.TALKING:
            return
        now = self.clock()
        ac = self._agent_calls.get(agent_id) or _AgentCall(call.campaign, call.request.call_id)
        if ac.lead is None:
            ac.lead = call.lead
        ac.talk_s = now - agent.call_started_at
        ac.ended_at = now
        self._agent_calls[agent_id] = ac
        self.agents.transition(agent_id, AgentState.WRAP_UP)
        wrap = call.campaign.config.wrap_up_s
        ac.wrap_timer = asyncio.get_running_loop().call_later(wrap, self._wrap_up_timeout, agent_id)

    def _wrap_up_timeout(self, agent_id: str) -> None:
        agent = self.agents.get(agent_id)
        if agent.state is AgentState.WRAP_UP:
            self.agents.transition(agent_id, AgentState.READY)

    def agent_last_call(self, agent_id: str) -> AgentCallInfo | None:
        """The call `agent_id` is talking on or wrapping up, or None once they are past wrap-up."""
        ac = self._agent_calls.get(agent_id)
        if ac is None or ac.lead is None:
            return None
        return AgentCallInfo(ac.campaign.name, ac.call_id, ac.lead.lead_id, ac.lead.number)

    def finish_wrap_up(self, agent_id: str, disposition: str = "") -> None:
        """The agent ended after-call work (API or simulated agent): they become ready."""
        agent = self.agents.get(agent_id)
        if agent.state is not AgentState.WRAP_UP:
            return
        ac = self._agent_calls.get(agent_id)
        if ac is not None and disposition:
            log.info("disposition", agent=agent_id, call_id=ac.call_id, disposition=disposition)
        self.agents.transition(agent_id, AgentState.READY)

    def _on_agent_change(self, agent: Agent, previous: AgentState) -> None:
        if previous is AgentState.READY and self.metrics is not None:
            rt_of_pool = self._by_pool.get(agent.pool)
            if rt_of_pool is not None:
                self.metrics.agent_wait.labels(campaign=rt_of_pool.name).observe(agent.last_spell_s)
        if previous is AgentState.WRAP_UP:
            ac = self._agent_calls.pop(agent.agent_id, None)
            if ac is not None:
                if ac.wrap_timer is not None:
                    ac.wrap_timer.cancel()
                ac.campaign.new_handles.append(HandleResult(ac.talk_s, self.clock() - ac.ended_at))
        if agent.state is not AgentState.READY:
            return
        queue = self._waiting.get(agent.pool)
        if queue:
            self._connect(queue.popleft(), agent)
            return
        rt = self._by_pool.get(agent.pool)
        if rt is not None:
            rt.wake.set()

    # Background work -----------------------------------------------------------------------------

    async def _with_retries(self, what: str, attempt: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `attempt` until it succeeds, backing off, for up to `RECORD_RETRY_S`.

        The abandon ledger is compliance bookkeeping: a Redis restart must delay a record, not lose it.
        """
        delay, waited = 0.1, 0.0
        while True:
            try:
                await attempt()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if waited >= RECORD_RETRY_S:
                    log.error("record_lost", what=what, error=repr(exc), waited_s=round(waited, 1))
                    return
                log.warning("record_retry", what=what, error=repr(exc))
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("engine_task_failed")
