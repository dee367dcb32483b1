"""The pool/worker message protocol: round trips and precise rejections, both directions."""

from __future__ import annotations

import pytest

from dialer.outcomes import AnswerKind, Outcome
from sip import protocol as p


def test_commands_round_trip_as_single_json_lines() -> None:
    dial = p.Dial(
        seq=7, call_id="c1", uri="sip:+15551230001@127.0.0.1:5060", from_uri="sip:+1555@127.0.0.1",
        headers={"X-Campaign": "spring"}, ring_timeout_s=25.0, detect_machine=False,
    )
    line = p.encode(dial)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode_command(line) == dial
    assert b'"v":1' in line


def test_events_round_trip() -> None:
    events: list[p._Msg] = [
        p.Answered(
            call_id="c1", kind=AnswerKind.MACHINE, answered_at=1.5, decided_after_ms=1620, reason="beep"
        ),
        p.Failed(call_id="c2", outcome=Outcome.BUSY, sip_status=486, reason="sip_486"),
        p.Ended(call_id="c3", hangup_by="remote"),
        p.Dtmf(call_id="c4", digit="#"),
        p.Result(seq=3, ok=False, error="no call c9"),
    ]
    for event in events:
        assert p.decode_event(p.encode(event)) == event


def test_other_protocol_version_is_rejected() -> None:
    with pytest.raises(p.ProtocolError, match=r"command has protocol version 2, expected 1"):
        p.decode_command(b'{"v":2,"type":"ping","seq":1}')


def test_unknown_type_and_unknown_field_are_rejected() -> None:
    with pytest.raises(p.ProtocolError, match=r"invalid event: .*does not match any of the expected tags"):
        p.decode_event(b'{"v":1,"type":"teleport","call_id":"x"}')
    with pytest.raises(p.ProtocolError, match=r"invalid event: ringing\.colour: Extra inputs are not"):
        p.decode_event(b'{"v":1,"type":"ringing","call_id":"x","colour":"red"}')


def test_a_command_is_not_an_event_and_vice_versa() -> None:
    with pytest.raises(p.ProtocolError, match="invalid event"):
        p.decode_event(p.encode(p.Ping(seq=1)))
    with pytest.raises(p.ProtocolError, match="invalid command"):
        p.decode_command(p.encode(p.Ringing(call_id="x")))


def test_garbage_and_oversized_lines_are_rejected() -> None:
    with pytest.raises(p.ProtocolError, match=r"invalid command: .*Invalid JSON"):
        p.decode_command(b"hello\n")
    with pytest.raises(p.ProtocolError, match=r"line of \d+ bytes exceeds 65536"):
        p.decode_event(b"{" + b" " * p.MAX_LINE_BYTES + b"}")


def test_field_constraints_are_checked() -> None:
    with pytest.raises(p.ProtocolError, match=r"dtmf\.digit: String should match pattern"):
        p.decode_event(b'{"v":1,"type":"dtmf","call_id":"x","digit":"11"}')
    with pytest.raises(p.ProtocolError, match=r"dial\.ring_timeout_s: Input should be greater than 0"):
        p.decode_command(
            b'{"v":1,"type":"dial","seq":1,"call_id":"x","uri":"sip:a@b","from_uri":"sip:c@d","ring_timeout_s":0}'
        )


def test_a_rejected_configure_never_quotes_the_password() -> None:
    line = b'{"v":1,"type":"configure","seq":0,"password":"hunter2","worker_index":-1}'
    with pytest.raises(p.ProtocolError) as info:
        p.decode_command(line)
    assert "hunter2" not in str(info.value)
    assert "(redacted)" in str(info.value)
