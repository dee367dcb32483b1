"""The simulated world: callees, the network and agents' after-call work, behind `Telephony`.

Every random draw comes from one seeded `random.Random`, and every event is a timer on the (virtual)
event loop, so a run is reproducible from its seed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dialer.compliance.gate import Clearance
from dialer.errors import TelephonyError
from dialer.outcomes import AnswerKind, Outcome
from dialer.sim.scenario import Durations, Mixture, Scenario, load_durations_csv
from dialer.telephony import (
    AgentConnected,
    AgentTarget,
    CallAnswered,
    CallEnded,
    CallEvent,
    CallFailed,
    CallRinging,
    DialRequest,
    EventHandler,
    PlaybackFinished,
    TransferMode,
)

MESSAGE_S = {"machine": 20.0, "robocall": 20.0}


@dataclass(slots=True)
class _SimCall:
    request: DialRequest
    human: bool  # ground truth: a person answered (the AMD may say otherwise)
    answered: bool = False
    agent_id: str | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


@dataclass(slots=True)
class WorldStats:
    """Ground truth the engine cannot see, for the report."""

    amd_false_positives: int = 0  # humans hung up on as machines
    amd_false_negatives: int = 0  # machines passed to agents


class SimTelephony:
    """A `Telephony` implementation whose calls are drawn from a scenario."""

    def __init__(self, scenario: Scenario, rng: random.Random, clock: Callable[[], float],
                 scenario_dir: Path | None = None) -> None:
        self.scenario = scenario
        self.rng = rng
        self.clock = clock
        self.stats = WorldStats()
        self._start = clock()
        self._handler: EventHandler | None = None
        self._calls: dict[str, _SimCall] = {}
        self._csv: dict[tuple[str, str], list[float]] = {}
        self._scenario_dir = scenario_dir or Path()
        self.on_wrap_up_done: Callable[[str], None] | None = None  # the engine's finish_wrap_up

    # Telephony -----------------------------------------------------------------------------------

    def start(self, handler: EventHandler) -> None:
        self._handler = handler

    def capacity(self) -> int:
        return 1_000_000

    async def originate(self, clearance: Clearance, request: DialRequest) -> None:
        clearance.verify(request.number, request.campaign, self.clock())
        outcomes, _, _ = self.scenario.phase_at(self._hours())
        draw = self.rng.random()
        timeout = request.ring_timeout_s
        call = _SimCall(request, human=False)
        self._calls[request.call_id] = call
        self._after(call, min(0.5, timeout), CallRinging(request.call_id))
        ring = self.scenario.ring
        if draw < outcomes.live:
            call.human = True
            self._answer_after(call, self._sample_mixture(ring.live), timeout)
        elif draw < outcomes.live + outcomes.machine:
            self._answer_after(call, self._sample_mixture(ring.machine), timeout)
        elif draw < outcomes.live + outcomes.machine + outcomes.busy:
            self._fail_after(call, self._sample_mixture(ring.busy), timeout, Outcome.BUSY, 486)
        elif draw < outcomes.live + outcomes.machine + outcomes.busy + outcomes.no_answer:
            self._fail_after(call, timeout + 1.0, timeout, Outcome.NO_ANSWER, 480)
        else:
            self._fail_after(call, self._sample_mixture(ring.failed), timeout, Outcome.CONGESTION, 503)

    async def connect_agent(self, call_id: str, agent: AgentTarget, mode: TransferMode) -> None:
        call = self._require(call_id)
        call.agent_id = agent.agent_id
        delay = self.scenario.connect_s
        self._after(call, delay, AgentConnected(call_id, agent.agent_id))
        if call.human:
            _, talk, _ = self.scenario.phase_at(self._hours())
            talk_s = self._sample_durations(talk, "talk")
        else:
            talk_s = self.scenario.amd.machine_talk_s
        self._after(call, delay + talk_s, CallEnded(call_id, "remote"), end=True)

    async def play(self, call_id: str, audio: str) -> None:
        call = self._require(call_id)
        length = self.scenario.safe_harbor_s
        if "machine" in audio:
            length = MESSAGE_S["machine"]
        elif "robocall" in audio:
            length = MESSAGE_S["robocall"]
        self._after(call, length, PlaybackFinished(call_id))

    async def hangup(self, call_id: str) -> None:
        call = self._calls.get(call_id)
        if call is None:
            return
        self._cancel(call)
        if call.answered:
            self._emit_end(call, CallEnded(call_id, "local"))
        else:
            self._emit_end(call, CallFailed(call_id, Outcome.NO_ANSWER, 487, "cancelled"))

    # The world -----------------------------------------------------------------------------------

    def _hours(self) -> float:
        return (self.clock() - self._start) / 3600.0

    def _require(self, call_id: str) -> _SimCall:
        try:
            return self._calls[call_id]
        except KeyError:
            raise TelephonyError(f"no such call {call_id}") from None

    def _answer_after(self, call: _SimCall, ring_s: float, timeout: float) -> None:
        if ring_s >= timeout:
            self._fail_after(call, timeout, timeout, Outcome.NO_ANSWER, 487)
            return
        loop = asyncio.get_running_loop()
        call.timers.append(loop.call_later(ring_s, self._answered, call))

    def _answered(self, call: _SimCall) -> None:
        call.answered = True
        amd = self.scenario.amd
        answered_at = self.clock()
        if not amd.enabled or not call.request.detect_machine:
            kind = AnswerKind.HUMAN if call.human else AnswerKind.UNKNOWN
            self._emit(CallAnswered(call.request.call_id, kind, answered_at))
            return
        if call.human:
            wrong = self.rng.random() < amd.false_positive
            kind = AnswerKind.MACHINE if wrong else AnswerKind.HUMAN
            self.stats.amd_false_positives += wrong
            decision = self._sample_mixture(amd.human_decision_s if not wrong else amd.machine_decision_s)
        else:
            wrong = self.rng.random() < amd.false_negative
            kind = AnswerKind.HUMAN if wrong else AnswerKind.MACHINE
            self.stats.amd_false_negatives += wrong
            decision = self._sample_mixture(amd.human_decision_s if wrong else amd.machine_decision_s)
        self._after(call, decision, CallAnswered(call.request.call_id, kind, answered_at))

    def _fail_after(self, call: _SimCall, at_s: float, timeout: float, outcome: Outcome, status: int) -> None:
        if at_s >= timeout:
            # Our own ring timer fires first: the SIP layer sends CANCEL and reports no answer.
            at_s, outcome, status = timeout, Outcome.NO_ANSWER, 487
        self._after(call, at_s, CallFailed(call.request.call_id, outcome, status,
                                           "ring_timeout" if status == 487 else ""), end=True)

    def _after(self, call: _SimCall, delay: float, event: CallEvent, *, end: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if end:
            call.timers.append(loop.call_later(delay, self._emit_end, call, event))
        else:
            call.timers.append(loop.call_later(delay, self._emit, event))

    def _emit(self, event: CallEvent) -> None:
        if self._handler is not None:
            self._handler(event)

    def _emit_end(self, call: _SimCall, event: CallEvent) -> None:
        self._cancel(call)
        self._calls.pop(call.request.call_id, None)
        self._emit(event)
        if isinstance(event, CallEnded) and event.hangup_by == "remote" and call.agent_id is not None:
            _, _, wrap = self.scenario.phase_at(self._hours())
            wrap_s = self._sample_durations(wrap, "wrap")
            if self.on_wrap_up_done is not None:
                asyncio.get_running_loop().call_later(wrap_s, self.on_wrap_up_done, call.agent_id)

    @staticmethod
    def _cancel(call: _SimCall) -> None:
        for timer in call.timers:
            timer.cancel()
        call.timers.clear()

    # Sampling ------------------------------------------------------------------------------------

    def _sample_mixture(self, mixture: Mixture) -> float:
        comps = mixture.components
        if len(comps) == 1:
            comp = comps[0]
        else:
            total = sum(c.weight for c in comps)
            pick = self.rng.random() * total
            comp = comps[-1]
            for c in comps:
                pick -= c.weight
                if pick <= 0:
                    comp = c
                    break
        return max(mixture.min_s, self.rng.gauss(comp.mean_s, comp.sd_s))

    def _sample_durations(self, durations: Durations, kind: str) -> float:
        if durations.distribution == "fixed":
            return durations.mean_s
        if durations.distribution == "csv" and durations.csv:
            key = (durations.csv, durations.column)
            values = self._csv.get(key)
            if values is None:
                values = load_durations_csv(self._scenario_dir / durations.csv, durations.column)
                self._csv[key] = values
            return self.rng.choice(values)
        mu, sigma = durations.lognormal_params
        return self.rng.lognormvariate(mu, sigma)
