"""The protocol between the engine and whatever places calls: the SIP pool or the simulator.

Commands are coroutines; events flow back through the handler given to `start`. Every call is named
by the `call_id` the engine chose in its `DialRequest`. Implementations deliver events on the
engine's event loop thread, in order per call, and deliver exactly one terminal event
(`CallFailed` or `CallEnded`) per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from dialer.compliance.gate import Clearance
from dialer.outcomes import AnswerKind, Outcome

MIN_RING_TIMEOUT_S = 15.0
"""Regulators (FCC/FTC safe harbour) require a call to ring at least 15 s before we give up."""


class TransferMode(StrEnum):
    """How an answered call is put through to an agent."""

    BRIDGE = "bridge"  # the worker calls the agent and bridges both legs in its conference bridge
    REFER = "refer"  # blind transfer of the customer leg to the agent/queue URI


@dataclass(frozen=True, slots=True)
class DialRequest:
    """One outbound call the engine wants placed."""

    call_id: str
    number: str  # E.164
    campaign: str
    caller_id: str
    ring_timeout_s: float
    headers: Mapping[str, str] = field(default_factory=dict)
    detect_machine: bool = True


@dataclass(frozen=True, slots=True)
class AgentTarget:
    """Where to reach an agent: its id and SIP URI."""

    agent_id: str
    uri: str


# Events -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRinging:
    """The far end is alerting (180/183)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The far end answered and answer classification finished as `kind`.

    `answered_at` is the epoch time of the 200 OK: the 2-second clock runs from it, not from
    the end of classification.
    """

    call_id: str
    kind: AnswerKind
    answered_at: float


@dataclass(frozen=True, slots=True)
class AgentConnected:
    """The customer leg is now talking to the agent (bridged, or transfer accepted)."""

    call_id: str
    agent_id: str


@dataclass(frozen=True, slots=True)
class AgentConnectFailed:
    """Putting the call through to the agent failed (agent leg not answered, REFER refused)."""

    call_id: str
    agent_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """The callee pressed a key (RFC 2833 or SIP INFO)."""

    call_id: str
    digit: str


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    """A `play` command reached the end of its audio."""

    call_id: str


@dataclass(frozen=True, slots=True)
class CallFailed:
    """Terminal: the call never reached an answer."""

    call_id: str
    outcome: Outcome
    sip_status: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CallEnded:
    """Terminal: an answered call is over (either side hung up, or we did)."""

    call_id: str
    hangup_by: str = "remote"  # "remote" | "local"


CallEvent = (
    CallRinging
    | CallAnswered
    | AgentConnected
    | AgentConnectFailed
    | DtmfReceived
    | PlaybackFinished
    | CallFailed
    | CallEnded
)
EventHandler = Callable[[CallEvent], None]


class Telephony(Protocol):
    """What the engine needs from a telephony back end."""

    def start(self, handler: EventHandler) -> None:
        """Register the event handler. Called once, before any command."""
        ...

    async def originate(self, clearance: Clearance, request: DialRequest) -> None:
        """Place a call. Raises `ClearanceError` when `clearance` does not cover this request now."""
        ...

    async def connect_agent(self, call_id: str, agent: AgentTarget, mode: TransferMode) -> None:
        """Put an answered call through to an agent; `AgentConnected` or `AgentConnectFailed` follows."""
        ...

    async def play(self, call_id: str, audio: str) -> None:
        """Play an audio file to the callee; `PlaybackFinished` follows."""
        ...

    async def hangup(self, call_id: str) -> None:
        """Hang up a call in any state (CANCEL while ringing, BYE once answered)."""
        ...

    def capacity(self) -> int:
        """How many more calls could be originated right now."""
        ...
