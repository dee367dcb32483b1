"""Mapping of unanswered calls' endings (SIP status, Q.850 cause, our timers) to outcomes."""

from __future__ import annotations

import pytest

from dialer.outcomes import Outcome
from sip.status import failure_outcome, q850_cause


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (486, Outcome.BUSY),
        (600, Outcome.BUSY),
        (480, Outcome.NO_ANSWER),
        (408, Outcome.NO_ANSWER),
        (403, Outcome.REJECTED),
        (603, Outcome.REJECTED),
        (404, Outcome.INVALID_NUMBER),
        (484, Outcome.INVALID_NUMBER),
        (604, Outcome.INVALID_NUMBER),
        (503, Outcome.CONGESTION),
        (502, Outcome.CONGESTION),
        (500, Outcome.FAILED),
        (407, Outcome.FAILED),
    ],
)
def test_sip_status_maps_to_outcome(status: int, outcome: Outcome) -> None:
    assert failure_outcome(status)[0] is outcome


def test_our_ring_timeout_is_no_answer_whatever_the_status() -> None:
    assert failure_outcome(487, ring_timed_out=True) == (Outcome.NO_ANSWER, "ring_timeout")


def test_a_487_we_caused_by_hanging_up_is_a_cancelled_failure() -> None:
    assert failure_outcome(487) == (Outcome.FAILED, "cancelled")


def test_nothing_from_the_network_is_unreachable() -> None:
    assert failure_outcome(408, peer_responded=False) == (Outcome.UNREACHABLE, "no_response")
    assert failure_outcome(503, peer_responded=False) == (Outcome.UNREACHABLE, "no_response")


def test_q850_cause_takes_precedence_over_the_status_it_was_mapped_to() -> None:
    assert failure_outcome(480, q850=17) == (Outcome.BUSY, "q850_17")
    assert failure_outcome(503, q850=1) == (Outcome.INVALID_NUMBER, "q850_1")
    assert failure_outcome(486, q850=16) == (Outcome.BUSY, "sip_486")  # 16 = normal clearing: no news


def test_q850_cause_is_read_from_the_reason_header() -> None:
    msg = "SIP/2.0 480 Temporarily Unavailable\r\nVia: x\r\nReason: Q.850;cause=18;text=\"no user\"\r\n\r\n"
    assert q850_cause(msg) == 18
    assert q850_cause("SIP/2.0 486 Busy\r\nReason: SIP;cause=486\r\n") is None
    assert q850_cause("SIP/2.0 486 Busy\r\n\r\n") is None
