"""The message protocol between the pool (asyncio) and a worker process (pjsua2).

One JSON object per line, UTF-8, over a socketpair inherited by the worker (never fd 1: pjlib prints
to C-level stdout before its log config applies). Every message carries the protocol version `v` and
its `type`; both sides validate what they receive against the models below and reject anything else
with `ProtocolError`, so a buggy or confused peer is detected rather than half-understood.

Commands (pool → worker) carry a `seq`; the worker answers each with `Result(seq, ok, error)`.
Events (worker → pool) are unsolicited and refer to calls by the engine's `call_id`.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from dialer.errors import TelephonyError
from dialer.outcomes import AnswerKind, Outcome

VERSION: Literal[1] = 1
MAX_LINE_BYTES = 64 * 1024
"""No legitimate message comes near this; a longer line means a broken peer."""


class ProtocolError(TelephonyError):
    """A message between pool and worker was malformed, of another version, or out of place."""


class _Msg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = VERSION


# Commands ---------------------------------------------------------------------------------------


class Configure(_Msg):
    """First message to a fresh worker: how to set up its Endpoint. Carries the digest password."""

    type: Literal["configure"] = "configure"
    seq: int
    worker_index: int = Field(ge=0)
    sip_port: int = Field(ge=0, le=65535)
    rtp_port: int = Field(ge=1024, le=65535)
    rtp_port_range: int = Field(ge=16)
    attempts_per_s: float = Field(gt=0)
    outbound_proxy: str | None = None
    username: str | None = None
    password: str | None = None
    realm: str = "*"
    account_uri: str
    bind_address: str | None = None
    response_timeout_s: float = Field(gt=0)
    agent_answer_timeout_s: float = Field(gt=0)
    amd_max_s: float = Field(gt=0)
    poll_ms: int = Field(ge=1)
    log_level: int = Field(ge=0, le=6)


class Dial(_Msg):
    """Place an outbound call."""

    type: Literal["dial"] = "dial"
    seq: int
    call_id: str = Field(min_length=1, max_length=200)
    uri: str
    from_uri: str
    headers: dict[str, str] = Field(default_factory=dict)
    ring_timeout_s: float = Field(gt=0)
    detect_machine: bool = True


class Hangup(_Msg):
    """Hang up a call in any state (CANCEL while ringing, BYE once answered)."""

    type: Literal["hangup"] = "hangup"
    seq: int
    call_id: str


class Play(_Msg):
    """Play a WAV file (already validated by the pool) to the callee."""

    type: Literal["play"] = "play"
    seq: int
    call_id: str
    path: str


class ConnectAgent(_Msg):
    """Put an answered call through to an agent: bridge (call the agent from this worker) or refer."""

    type: Literal["connect_agent"] = "connect_agent"
    seq: int
    call_id: str
    agent_id: str
    uri: str
    mode: Literal["bridge", "refer"]
    headers: dict[str, str] = Field(default_factory=dict)


class Ping(_Msg):
    """Liveness probe; the worker answers with a `Result` from its polling thread."""

    type: Literal["ping"] = "ping"
    seq: int


class Shutdown(_Msg):
    """Hang up everything, report the calls' terminal events, destroy the Endpoint and exit."""

    type: Literal["shutdown"] = "shutdown"
    seq: int


Command = Annotated[
    Configure | Dial | Hangup | Play | ConnectAgent | Ping | Shutdown, Field(discriminator="type")
]


# Events -----------------------------------------------------------------------------------------


class Result(_Msg):
    """The answer to one command: accepted, or refused with a reason."""

    type: Literal["result"] = "result"
    seq: int
    ok: bool
    error: str = ""


class Ready(_Msg):
    """The worker's Endpoint is up."""

    type: Literal["ready"] = "ready"
    pid: int
    sip_port: int
    max_calls: int


class Ringing(_Msg):
    """180/183 received."""

    type: Literal["ringing"] = "ringing"
    call_id: str


class Answered(_Msg):
    """200 OK at `answered_at` (epoch), classified as `kind` `decided_after_ms` after it."""

    type: Literal["answered"] = "answered"
    call_id: str
    kind: AnswerKind
    answered_at: float
    decided_after_ms: float = 0.0
    reason: str = ""  # the classifier's reason (greeting_then_silence, long_greeting, beep, ...)


class Dtmf(_Msg):
    """A key pressed by the callee (RFC 2833 or SIP INFO)."""

    type: Literal["dtmf"] = "dtmf"
    call_id: str
    digit: str = Field(pattern=r"^[0-9*#A-Da-d]$")


class PlaybackDone(_Msg):
    """A `play` reached the end of its file."""

    type: Literal["playback_done"] = "playback_done"
    call_id: str


class AgentUp(_Msg):
    """The customer now talks to the agent."""

    type: Literal["agent_up"] = "agent_up"
    call_id: str
    agent_id: str


class AgentFailed(_Msg):
    """Putting the call through failed; the customer leg is still up."""

    type: Literal["agent_failed"] = "agent_failed"
    call_id: str
    agent_id: str
    reason: str


class Failed(_Msg):
    """Terminal: the call never reached an answer."""

    type: Literal["failed"] = "failed"
    call_id: str
    outcome: Outcome
    sip_status: int = 0
    reason: str = ""


class Ended(_Msg):
    """Terminal: an answered call is over."""

    type: Literal["ended"] = "ended"
    call_id: str
    hangup_by: Literal["remote", "local"]


class Log(_Msg):
    """Something the pool should log on the worker's behalf (a guarded callback failed, ...)."""

    type: Literal["log"] = "log"
    level: Literal["debug", "info", "warning", "error"]
    event: str
    detail: str = ""


Event = Annotated[
    Result | Ready | Ringing | Answered | Dtmf | PlaybackDone | AgentUp | AgentFailed | Failed | Ended | Log,
    Field(discriminator="type"),
]

T = TypeVar("T")

_commands: TypeAdapter[Command] = TypeAdapter(Command)
_events: TypeAdapter[Event] = TypeAdapter(Event)


def encode(msg: _Msg) -> bytes:
    """One message as a newline-terminated JSON line."""
    return msg.model_dump_json().encode() + b"\n"


def _decode(adapter: TypeAdapter[T], line: bytes, what: str) -> T:
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"{what} line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        return adapter.validate_json(line)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["loc"] and first["loc"][-1] == "v":
            version = first["input"]
            raise ProtocolError(f"{what} has protocol version {version!r}, expected {VERSION}") from None
        where = ".".join(str(p) for p in first["loc"]) or "(message)"
        # Quote the start of the line for debugging, but never a credential (Configure carries one).
        text = "(redacted)" if b'"password"' in line else line[:120].decode(errors="replace").rstrip()
        raise ProtocolError(f"invalid {what}: {where}: {first['msg']} in {text!r}") from None


def decode_command(line: bytes) -> Command:
    """Parse and validate a command received by a worker."""
    return _decode(_commands, line, "command")


def decode_event(line: bytes) -> Event:
    """Parse and validate an event received by the pool."""
    return _decode(_events, line, "event")
