"""Call outcomes and answer classes shared by the engine, telephony, leads and pacing."""

from __future__ import annotations

from enum import StrEnum


class AnswerKind(StrEnum):
    """What answered, as classified by answering-machine detection."""

    HUMAN = "human"
    MACHINE = "machine"
    UNKNOWN = "unknown"


class Outcome(StrEnum):
    """The final result of one dial attempt, as recorded on the lead and in the CDR."""

    LIVE = "live"  # a human answered and was connected to an agent (or served by a robocall)
    MACHINE = "machine"  # an answering machine answered
    BUSY = "busy"
    NO_ANSWER = "no_answer"  # our ring timeout fired (CANCEL) or the network gave up
    REJECTED = "rejected"  # 403/603 and friends
    INVALID_NUMBER = "invalid_number"  # 404/484/604
    CONGESTION = "congestion"  # 503/no circuit
    UNREACHABLE = "unreachable"  # transport failure, 408 from the trunk itself
    FAILED = "failed"  # anything else, including a lost SIP worker
    ABANDONED = "abandoned"  # live answer not connected to an agent within 2 s
    BLOCKED = "blocked"  # never dialled: the compliance gate refused
    OPTED_OUT = "opted_out"  # listener pressed the opt-out key

    @property
    def is_live(self) -> bool:
        """True for outcomes in which a human answered."""
        return self in (Outcome.LIVE, Outcome.ABANDONED, Outcome.OPTED_OUT)


class AgentState(StrEnum):
    """The agent state machine's states."""

    LOGGED_OUT = "logged_out"
    READY = "ready"  # idle, waiting for a call
    RESERVED = "reserved"  # chosen for an answered call that is being put through
    TALKING = "talking"
    WRAP_UP = "wrap_up"  # after-call work; a disposition ends it
    PAUSED = "paused"
