"""Map how an unanswered call ended (SIP final status, Q.850 cause, our own timers) to an `Outcome`.

Pure: used by the worker, tested without pjsua2.
"""

from __future__ import annotations

import re

from dialer.outcomes import Outcome

_Q850 = re.compile(r"^Reason\s*:\s*Q\.850\s*;(?P<params>[^\r\n]*)", re.IGNORECASE | re.MULTILINE)
_CAUSE = re.compile(r"cause\s*=\s*(\d{1,3})", re.IGNORECASE)

# ITU-T Q.850 cause values that say more than the SIP status a gateway maps them to.
_Q850_OUTCOME: dict[int, Outcome] = {
    1: Outcome.INVALID_NUMBER,  # unallocated number
    3: Outcome.INVALID_NUMBER,  # no route to destination
    17: Outcome.BUSY,  # user busy
    18: Outcome.NO_ANSWER,  # no user responding
    19: Outcome.NO_ANSWER,  # no answer from user (user alerted)
    20: Outcome.NO_ANSWER,  # subscriber absent
    21: Outcome.REJECTED,  # call rejected
    22: Outcome.INVALID_NUMBER,  # number changed
    27: Outcome.UNREACHABLE,  # destination out of order
    28: Outcome.INVALID_NUMBER,  # invalid number format
    34: Outcome.CONGESTION,  # no circuit/channel available
    38: Outcome.CONGESTION,  # network out of order
    41: Outcome.CONGESTION,  # temporary failure
    42: Outcome.CONGESTION,  # switching equipment congestion
    44: Outcome.CONGESTION,  # requested circuit not available
}

_SIP_OUTCOME: dict[int, Outcome] = {
    486: Outcome.BUSY,
    600: Outcome.BUSY,
    480: Outcome.NO_ANSWER,
    408: Outcome.NO_ANSWER,
    403: Outcome.REJECTED,
    603: Outcome.REJECTED,
    607: Outcome.REJECTED,
    608: Outcome.REJECTED,
    404: Outcome.INVALID_NUMBER,
    410: Outcome.INVALID_NUMBER,
    484: Outcome.INVALID_NUMBER,
    485: Outcome.INVALID_NUMBER,
    604: Outcome.INVALID_NUMBER,
    502: Outcome.CONGESTION,
    503: Outcome.CONGESTION,
    504: Outcome.CONGESTION,
}


def q850_cause(message: str) -> int | None:
    """The cause value of a `Reason: Q.850;cause=N` header in a SIP message, if any."""
    match = _Q850.search(message)
    if match is None:
        return None
    cause = _CAUSE.search(match.group("params"))
    return int(cause.group(1)) if cause else None


def failure_outcome(
    status: int,
    *,
    q850: int | None = None,
    ring_timed_out: bool = False,
    peer_responded: bool = True,
) -> tuple[Outcome, str]:
    """The outcome of a call that ended without an answer, and a short reason code.

    `peer_responded` is False when nothing at all came back from the network (a locally generated
    408/503 from a transaction timeout or transport error): the trunk is unreachable.
    `ring_timed_out` is True when our own ring timer cancelled the call.
    """
    if ring_timed_out:
        return Outcome.NO_ANSWER, "ring_timeout"
    if not peer_responded:
        return Outcome.UNREACHABLE, "no_response"
    if q850 is not None and q850 in _Q850_OUTCOME:
        return _Q850_OUTCOME[q850], f"q850_{q850}"
    if status in _SIP_OUTCOME:
        return _SIP_OUTCOME[status], f"sip_{status}"
    if status == 487:
        # Cancelled by us before our ring timer: the engine hung up a ringing call.
        return Outcome.FAILED, "cancelled"
    if status in (401, 407):
        return Outcome.FAILED, "auth_failed"
    return Outcome.FAILED, f"sip_{status}" if status else "unknown"
