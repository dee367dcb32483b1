"""Engine behaviour against a scripted telephony, in virtual time (no real clock, no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry

from dialer.agents import AgentPool
from dialer.compliance.abandon import AbandonStatus, MemoryAbandonLedger
from dialer.compliance.gate import Blocked, BlockReason, Clearance, DialCandidate, PermissiveGate, Verdict
from dialer.config import CampaignConfig
from dialer.engine import Engine
from dialer.errors import ClearanceError, ConfigError
from dialer.leads import Lead, MemoryLeadStore
from dialer.metrics import DialerMetrics
from dialer.outcomes import AgentState, AnswerKind, Outcome
from dialer.pacing import PacingSnapshot
from dialer.sim.clock import VirtualTimeLoop
from dialer.telephony import (
    AgentConnected,
    AgentTarget,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallFailed,
    CallRinging,
    DialRequest,
    DtmfReceived,
    EventHandler,
    PlaybackFinished,
    TransferMode,
)

EPOCH = 1_767_780_000.0


@dataclass
class ScriptedTelephony:
    """Records commands; the test decides which events come back."""

    clock: Callable[[], float]
    handler: EventHandler | None = None
    log: list[tuple[str, Any]] = field(default_factory=list)
    dialled: list[DialRequest] = field(default_factory=list)

    def start(self, handler: EventHandler) -> None:
        self.handler = handler

    async def originate(self, clearance: Clearance, request: DialRequest) -> None:
        clearance.verify(request.number, request.campaign, self.clock())
        self.dialled.append(request)
        self.log.append(("originate", request.number))

    async def connect_agent(self, call_id: str, agent: AgentTarget, mode: TransferMode) -> None:
        self.log.append(("connect", (call_id, agent.agent_id)))

    async def play(self, call_id: str, audio: str) -> None:
        self.log.append(("play", (call_id, audio)))

    async def hangup(self, call_id: str) -> None:
        self.log.append(("hangup", call_id))

    def capacity(self) -> int:
        return 100

    def emit(self, event: CallEvent) -> None:
        assert self.handler is not None
        self.handler(event)


class ListGate:
    """Blocks the numbers in `blocked` (a stand-in for the real gate's verdicts)."""

    def __init__(self, blocked: dict[str, BlockReason]) -> None:
        self.blocked = blocked
        self.inner = PermissiveGate()

    async def check(self, candidate: DialCandidate, now: float) -> Verdict:
        if candidate.number in self.blocked:
            return Blocked(self.blocked[candidate.number])
        return await self.inner.check(candidate, now)


@dataclass
class Rig:
    engine: Engine
    tel: ScriptedTelephony
    leads: MemoryLeadStore
    pool: AgentPool
    ledger: MemoryAbandonLedger
    loop: asyncio.AbstractEventLoop
    opt_outs: list[tuple[str, str]]

    async def step(self, seconds: float = 0.0) -> None:
        await asyncio.sleep(seconds)
        for _ in range(5):  # let spawned tasks finish at this instant
            await asyncio.sleep(0)


def run_virtual(test: Callable[[Rig], Awaitable[None]], *, agents: int = 1, numbers: int = 1,
                gate: Any = None, metrics: DialerMetrics | None = None, **campaign: Any) -> None:
    """Build an engine with a scripted telephony and run `test` against it in virtual time."""

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def clock() -> float:
            return EPOCH + loop.time()

        cfg = CampaignConfig(name="c", pacing={"policy": "progressive"},
                             **campaign)
        pool = AgentPool(clock)
        for i in range(agents):
            pool.add(f"a{i}", f"sip:a{i}@pbx", cfg.agent_pool)
        leads = MemoryLeadStore()
        for i in range(numbers):
            leads.add(Lead(f"L{i}", "c", f"+1202555{i:04d}"))
        tel = ScriptedTelephony(clock)
        ledger = MemoryAbandonLedger(3600, 0.03)
        opt_outs: list[tuple[str, str]] = []

        class Recorder:
            async def opt_out(self, number: str, campaign: str, source: str) -> None:
                # The hang-up must not have been sent yet when the opt-out is written.
                assert not any(kind == "hangup" for kind, _ in tel.log)
                opt_outs.append((number, source))

        engine = Engine({"c": cfg}, agents=pool, leads=leads, gate=gate or PermissiveGate(), telephony=tel,
                        abandon=ledger, opt_out=Recorder(), clock=clock, metrics=metrics)
        task = loop.create_task(engine.run())
        rig = Rig(engine, tel, leads, pool, ledger, loop, opt_outs)
        try:
            await rig.step()
            await test(rig)
        finally:
            engine.stop()
            await asyncio.wait_for(task, 10)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())


def test_no_dial_without_a_ready_agent_then_one_per_ready_agent() -> None:
    async def body(rig: Rig) -> None:
        await rig.step(3)
        assert rig.tel.dialled == []
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        assert [r.number for r in rig.tel.dialled] == ["+12025550000"]
        await rig.step(5)
        assert len(rig.tel.dialled) == 1  # progressive: the ready agent already has a call in flight

    run_virtual(body, numbers=3)


def test_snapshot_counts_agents_by_state_as_it_lists_them() -> None:
    async def body(rig: Rig) -> None:
        states = (("a0", AgentState.READY), ("a1", AgentState.READY), ("a2", AgentState.PAUSED))
        for agent_id, state in states:
            rig.pool.transition(agent_id, state)  # a3 stays logged out: not in the snapshot
        rt = rig.engine.campaigns["c"]
        snap = rig.engine.snapshot(rt, rig.engine.clock(), 0, 0, False)
        assert [a.state for a in snap.agents] == [AgentState.READY, AgentState.READY, AgentState.PAUSED]
        assert dict(snap.state_counts) == {AgentState.READY: 2, AgentState.PAUSED: 1}
        assert (snap.ready, snap.working) == (2, 2)

    run_virtual(body, agents=4, numbers=0)


def test_tick_gives_pacing_the_ledger_window_length() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        rt = rig.engine.campaigns["c"]
        seen: list[float] = []
        decide = rt.policy.dial_count

        def spy(snap: PacingSnapshot) -> int:
            seen.append(snap.abandon_window_s)
            return decide(snap)

        setattr(rt.policy, "dial_count", spy)  # noqa: B010 - a method replaced on one instance
        await rig.engine.tick(rt)
        assert seen == [3600.0]  # the rig's rolling one-hour window: pacing looks at when calls leave it

    run_virtual(body, numbers=1)


def test_live_answer_goes_to_the_agent_then_wrap_up_then_ready() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        call_id = rig.tel.dialled[0].call_id
        rig.tel.emit(CallAnswered(call_id, AnswerKind.HUMAN, rig.engine.clock()))
        await rig.step()
        assert ("connect", (call_id, "a0")) in rig.tel.log
        assert rig.pool.get("a0").state is AgentState.RESERVED
        rig.tel.emit(AgentConnected(call_id, "a0"))
        await rig.step(60)
        assert rig.pool.get("a0").state is AgentState.TALKING
        rig.tel.emit(CallEnded(call_id))
        await rig.step()
        assert rig.pool.get("a0").state is AgentState.WRAP_UP
        rig.engine.finish_wrap_up("a0", "sale")
        assert rig.pool.get("a0").state is AgentState.READY
        [record] = rig.leads.records
        assert record.outcome is Outcome.LIVE and record.agent_id == "a0" and record.connected_at
        status = await rig.ledger.status("c", rig.engine.clock())
        assert (status.live_answers, status.abandons) == (1, 0)

    run_virtual(body)


def test_no_agent_within_two_seconds_is_an_abandon_with_safe_harbor_message() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        first = rig.tel.dialled[0].call_id
        rig.tel.emit(CallAnswered(first, AnswerKind.HUMAN, rig.engine.clock()))
        rig.tel.emit(AgentConnected(first, "a0"))
        await rig.step()
        # The only agent is busy; a second call placed by hand (as a predictive policy would) answers.
        rig.leads.add(Lead("extra", "c", "+12025559999"))
        rt = rig.engine.campaigns["c"]
        [lead] = await rig.leads.claim("c", 1, rig.engine.clock())
        await rig.engine._dial(rt, lead)
        second = rig.tel.dialled[-1].call_id
        answered_at = rig.engine.clock()
        rig.tel.emit(CallAnswered(second, AnswerKind.HUMAN, answered_at))
        await rig.step(1.9)
        assert not any(kind == "play" for kind, _ in rig.tel.log)
        await rig.step(0.2)
        assert ("play", (second, "config/audio/safe_harbor.wav")) in rig.tel.log
        status = await rig.ledger.status("c", rig.engine.clock())
        assert (status.live_answers, status.abandons) == (2, 1)  # the first call was connected in time
        rig.tel.emit(PlaybackFinished(second))
        await rig.step()
        assert ("hangup", second) in rig.tel.log
        rig.tel.emit(CallEnded(second, "local"))
        await rig.step()
        abandoned = [r for r in rig.leads.records if r.call_id == second]
        assert abandoned[0].outcome is Outcome.ABANDONED

    run_virtual(body, numbers=1, connect_deadline_s=2.0)


def test_gate_block_means_no_invite_and_a_recorded_reason() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        assert [r.number for r in rig.tel.dialled] == ["+12025550001"]
        [blocked] = [r for r in rig.leads.records if r.outcome is Outcome.BLOCKED]
        assert blocked.number == "+12025550000" and blocked.reason == "dnc_internal"
        assert blocked.dialled_at is None
        assert rig.leads.pending("c") == 0  # a DNC block ends the lead: no retry

    run_virtual(body, numbers=2, gate=ListGate({"+12025550000": BlockReason.DNC_INTERNAL}))


def test_passing_block_is_rechecked_later() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        assert rig.tel.dialled == []
        assert rig.leads.pending("c") == 1  # outside hours: back in the hopper for later

    run_virtual(body, gate=ListGate({"+12025550000": BlockReason.OUTSIDE_HOURS}))


def test_a_failed_call_is_retried_by_the_campaign_rules() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        rig.tel.emit(CallFailed(rig.tel.dialled[0].call_id, Outcome.BUSY, 486))
        await rig.step()
        [record] = rig.leads.records
        assert record.outcome is Outcome.BUSY and record.attempt == 1 and record.sip_status == 486
        assert len(rig.tel.dialled) == 1  # not due again before the retry delay
        await rig.step(901)
        assert len(rig.tel.dialled) == 2 and rig.tel.dialled[1].number == "+12025550000"

    run_virtual(body, retry={"busy": {"max_attempts": 2, "delay_s": 900}})


def test_robocall_opt_out_is_written_before_the_hang_up_and_connect_key_reaches_an_agent() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        first = rig.tel.dialled[0].call_id
        rig.tel.emit(CallAnswered(first, AnswerKind.HUMAN, rig.engine.clock()))
        await rig.step()
        assert ("play", (first, "config/audio/robocall.wav")) in rig.tel.log
        rig.tel.emit(DtmfReceived(first, "9"))
        await rig.step()
        assert rig.opt_outs == [("+12025550000", "dtmf")]
        assert ("hangup", first) in rig.tel.log
        rig.tel.emit(CallEnded(first, "local"))
        await rig.step(0.3)
        second = rig.tel.dialled[1].call_id
        rig.tel.emit(CallAnswered(second, AnswerKind.HUMAN, rig.engine.clock()))
        rig.tel.emit(DtmfReceived(second, "1"))
        await rig.step()
        assert ("connect", (second, "a0")) in rig.tel.log
        outcomes = {r.call_id: r.outcome for r in rig.leads.records}
        assert outcomes[first] is Outcome.OPTED_OUT

    run_virtual(body, numbers=2, mode="robocall", robocall_message="config/audio/robocall.wav")


def test_machine_answer_is_hung_up_and_agent_untouched() -> None:
    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        call_id = rig.tel.dialled[0].call_id
        rig.tel.emit(CallAnswered(call_id, AnswerKind.MACHINE, rig.engine.clock()))
        await rig.step()
        assert ("hangup", call_id) in rig.tel.log
        assert rig.pool.get("a0").state is AgentState.READY

    run_virtual(body)


def test_forged_clearance_is_impossible_and_stale_one_refused() -> None:
    from dialer.compliance.gate import mint_clearance

    with pytest.raises(ClearanceError, match="only be minted by the compliance gate"):
        Clearance("+12025550000", "c", 0.0)
    clearance = mint_clearance("+12025550000", "c", 100.0)
    clearance.verify("+12025550000", "c", 100.2)
    with pytest.raises(ClearanceError, match="stale"):
        clearance.verify("+12025550000", "c", 101.0)
    with pytest.raises(ClearanceError, match="does not match"):
        clearance.verify("+12025550001", "c", 100.0)


def test_drain_hangs_up_what_is_left_and_records_every_call() -> None:
    async def body(rig: Rig) -> None:
        for i in range(2):
            rig.pool.transition(f"a{i}", AgentState.READY)
        await rig.step(0.3)
        assert len(rig.tel.dialled) == 2

        async def telephony_acks_hangups() -> None:
            while True:
                await asyncio.sleep(0.5)
                for kind, arg in list(rig.tel.log):
                    if kind == "hangup" and arg in rig.engine._calls:
                        rig.tel.emit(CallFailed(arg, Outcome.NO_ANSWER, 487, "cancelled"))

        acker = rig.loop.create_task(telephony_acks_hangups())
        hung_up = await rig.engine.drain(3.0)
        acker.cancel()
        assert hung_up == 2
        assert {r.outcome for r in rig.leads.records} == {Outcome.NO_ANSWER}
        assert len(rig.leads.records) == 2 and rig.engine.active_calls == 0

    run_virtual(body, agents=2, numbers=5)


def test_two_campaigns_cannot_share_an_agent_pool() -> None:
    async def build() -> None:
        cfgs = {n: CampaignConfig(name=n, pacing={"policy": "progressive"})
                for n in ("a", "b")}
        with pytest.raises(ConfigError, match="agent_pool 'default' already serves a"):
            Engine(cfgs, agents=AgentPool(lambda: 0.0), leads=MemoryLeadStore(), gate=PermissiveGate(),
                   telephony=ScriptedTelephony(lambda: 0.0), abandon=MemoryAbandonLedger(1, 0.03))

    asyncio.run(build())


def test_metrics_follow_calls_gate_and_agents() -> None:
    registry = CollectorRegistry()
    metrics = DialerMetrics(registry)

    def value(name: str, **labels: str) -> float:
        v = registry.get_sample_value(name, labels)
        assert v is not None, (name, labels)
        return v

    async def body(rig: Rig) -> None:
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        call_id = rig.tel.dialled[0].call_id
        rig.tel.emit(CallAnswered(call_id, AnswerKind.HUMAN, rig.engine.clock()))
        await rig.step(0.3)
        rig.tel.emit(AgentConnected(call_id, "a0"))
        await rig.step(1.0)
        assert value("dialer_agents", campaign="c", state="talking") == 1
        rig.tel.emit(CallEnded(call_id))
        await rig.step()

    run_virtual(body, numbers=2, gate=ListGate({"+12025550000": BlockReason.DNC_NATIONAL}), metrics=metrics)
    assert value("dialer_gate_checks_total", campaign="c") == 2
    assert value("dialer_gate_blocks_total", campaign="c", reason="dnc_national") == 1
    assert value("dialer_originations_total", campaign="c") == 1
    assert value("dialer_live_answers_total", campaign="c") == 1
    assert value("dialer_abandons_total", campaign="c") == 0
    assert value("dialer_dials_total", campaign="c", result="live") == 1
    assert value("dialer_answer_to_agent_seconds_count", campaign="c") == 1
    assert value("dialer_answer_to_agent_seconds_sum", campaign="c") == pytest.approx(0.3)
    assert value("dialer_pacing_tick_duration_seconds_count", campaign="c") >= 1


def test_lost_lease_is_logged_and_the_engine_carries_on() -> None:
    from dialer.leads import AttemptRecord, LeaseLostError

    async def body(rig: Rig) -> None:
        async def complete(lead: Lead, record: AttemptRecord, retry_at: float | None) -> None:
            raise LeaseLostError("c", lead.lead_id, "lease expired")

        rig.leads.complete = complete  # type: ignore[method-assign]
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        rig.tel.emit(CallFailed(rig.tel.dialled[0].call_id, Outcome.BUSY, 486))
        await rig.step(0.3)
        assert rig.tel.dialled[0].call_id not in rig.engine._calls  # the failed call is gone
        assert len(rig.tel.dialled) == 2  # and the next lead is dialled: nothing got stuck

    run_virtual(body, numbers=2)


def test_an_abandoned_number_is_protected_for_the_gate() -> None:
    protected: list[str] = []

    class Protector:
        async def protect(self, number: str, at: float) -> None:
            protected.append(number)

    async def body(rig: Rig) -> None:
        rig.engine.protection = Protector()
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        first = rig.tel.dialled[0].call_id
        rig.tel.emit(CallAnswered(first, AnswerKind.HUMAN, rig.engine.clock()))
        rig.tel.emit(AgentConnected(first, "a0"))
        rt = rig.engine.campaigns["c"]
        [lead] = await rig.leads.claim("c", 1, rig.engine.clock())
        await rig.engine._dial(rt, lead)
        second = rig.tel.dialled[-1]
        rig.tel.emit(CallAnswered(second.call_id, AnswerKind.HUMAN, rig.engine.clock()))
        await rig.step(2.5)
        assert protected == [second.number]  # the connected call's number is not protected

    run_virtual(body, numbers=2)


def test_abandon_records_are_retried_while_the_ledger_is_away() -> None:
    async def body(rig: Rig) -> None:
        real = rig.ledger.record
        failures = [3]
        ids: list[str | None] = []

        async def flaky(campaign: str, at: float, *, abandoned: bool, event_id: str | None = None) -> None:
            ids.append(event_id)
            if failures[0] > 0:
                failures[0] -= 1
                raise ConnectionError("redis is restarting")
            await real(campaign, at, abandoned=abandoned, event_id=event_id)

        rig.ledger.record = flaky  # type: ignore[method-assign]
        rig.pool.transition("a0", AgentState.READY)
        await rig.step(0.3)
        call_id = rig.tel.dialled[0].call_id
        rig.tel.emit(CallAnswered(call_id, AnswerKind.HUMAN, rig.engine.clock()))
        rig.tel.emit(AgentConnected(call_id, "a0"))
        await rig.step(5)
        status = await rig.ledger.status("c", rig.engine.clock())
        assert failures == [0] and status.live_answers == 1
        # Every try names the call, so a ledger that applied a try whose reply was lost counts it once.
        assert ids == [call_id] * 4

    run_virtual(body)


def test_calls_ringing_past_the_minimum_are_shed_youngest_kept_and_recorded_as_censored() -> None:
    from dialer.pacing.base import AttemptResult, PacingPolicy

    registry = CollectorRegistry()
    metrics = DialerMetrics(registry)

    @dataclass
    class KeepOne(PacingPolicy):
        """Dials nothing itself; keeps one late call; remembers what it was shown."""

        name = "keep_one"
        seen: list[PacingSnapshot] = field(default_factory=list)

        def observe(self, snap: PacingSnapshot) -> None:
            self.seen.append(snap)

        def decide(self, snap: PacingSnapshot) -> int:
            self.observe(snap)
            return 0

        def late_calls_to_keep(self, snap: PacingSnapshot) -> int | None:
            return 1

    async def body(rig: Rig) -> None:
        rt = rig.engine.campaigns["c"]
        policy = KeepOne()
        rt.policy = policy
        rig.pool.transition("a0", AgentState.READY)
        for _ in range(4):  # four calls placed 2 s apart; the network reports three of them ringing
            [lead] = await rig.leads.claim("c", 1, rig.engine.clock())
            await rig.engine._dial(rt, lead)
            await rig.step(2)
        first, second, third, silent = (r.call_id for r in rig.tel.dialled)
        for call_id in (first, second, third):
            rig.tel.emit(CallRinging(call_id))  # the minimum ring counts from here
        await rig.step(14.5)  # ringing 14.5 s: under the minimum, nothing is shed
        assert not any(kind == "hangup" for kind, _ in rig.tel.log)
        await rig.step(5.0)  # past 15 s: two of the three go, the youngest stays
        hangups = [call_id for kind, call_id in rig.tel.log if kind == "hangup"]
        assert hangups == [first, second]  # and the one never reported ringing is not shed at all
        assert not rig.engine._calls[silent].shed
        await rig.step(1.0)
        assert len(policy.seen[-1].ringing) == 2  # shed calls no longer count as ringing
        for call_id in (first, second):  # as the SIP layer reports a call it cancelled
            rig.tel.emit(CallFailed(call_id, Outcome.FAILED, 487, "cancelled"))
        await rig.step(1.0)
        assert [(r.call_id, r.outcome, r.reason) for r in rig.leads.records] == [
            (first, Outcome.NO_ANSWER, "shed"), (second, Outcome.NO_ANSWER, "shed")]
        attempts = [a for s in policy.seen for a in s.new_attempts]
        assert [(a.outcome, a.censored) for a in attempts] == [(Outcome.NO_ANSWER, True)] * 2
        assert all(a.ring_s >= 15.0 for a in attempts)
        assert rt.stats.shed == 2
        rig.tel.emit(CallFailed(third, Outcome.NO_ANSWER, 487, "ring_timeout"))  # the kept one times out
        await rig.step(1.0)
        assert rig.leads.records[-1].reason == "ring_timeout"
        assert AttemptResult(Outcome.NO_ANSWER, 0.0).censored is False

    run_virtual(body, numbers=4, metrics=metrics)
    assert registry.get_sample_value("dialer_calls_shed_total", {"campaign": "c"}) == 2


def test_stopping_does_not_hang_on_a_pacing_loop_that_swallows_its_cancellation() -> None:
    # A library that swallowed a CancelledError would leave the loop running and, before, the engine
    # (and the daemon's shutdown) waiting on it forever. Now it is waited for a bounded time, named
    # in the log, and the engine stops; the second cancellation at exit ends it.
    async def body(rig: Rig) -> None:
        async def stubborn() -> None:
            swallowed = False
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if swallowed:
                        raise
                    swallowed = True

        rig.engine._loops["c"].cancel()
        rig.engine._loops["c"] = rig.loop.create_task(stubborn(), name="pace-c")
        await rig.step()

    with structlog.testing.capture_logs() as logs:
        run_virtual(body)  # stops the engine and allows it 10 s
    assert [e["task"] for e in logs if e["event"] == "pacing_loop_not_stopping"] == ["pace-c"]


def test_a_pacing_loop_whose_redis_call_swallows_the_cancel_still_ends_on_stop() -> None:
    # redis-py on Python 3.11 can swallow a cancel that lands in a command (asyncio.wait_for in its
    # socket write): the loop then carries on with its tick. It ends at its next turn, on the
    # engine's stop, instead of running on past the bounded wait.
    async def body(rig: Rig) -> None:
        inner = rig.ledger.status
        in_call = asyncio.Event()
        swallowed = False

        async def status(campaign: str, at: float) -> AbandonStatus:
            nonlocal swallowed
            in_call.set()
            try:
                await asyncio.sleep(2.0)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True  # once, as the library does
            return await inner(campaign, at)

        rig.ledger.status = status  # type: ignore[method-assign]
        await in_call.wait()
        rig.engine.stop()  # run() cancels the loop while it waits on the "ledger"

    with structlog.testing.capture_logs() as logs:
        run_virtual(body)
    assert not [e for e in logs if e["event"] == "pacing_loop_not_stopping"]
