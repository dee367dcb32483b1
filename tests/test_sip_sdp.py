"""Rewriting our SDP offer so RFC 2833 digits arrive with payload type 101."""

from __future__ import annotations

from sip.sdp import offer_telephone_event_as_101

PJSUA_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=pjmedia",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0 8 120 121",
        "c=IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:120 telephone-event/16000",
        "a=fmtp:120 0-16",
        "a=rtpmap:121 telephone-event/8000",
        "a=fmtp:121 0-16",
        "",
    ]
)


def test_8khz_telephone_event_becomes_101_and_other_rates_go() -> None:
    out = offer_telephone_event_as_101(PJSUA_OFFER)
    lines = out.split("\r\n")
    assert "m=audio 4000 RTP/AVP 0 8 101" in lines
    assert "a=rtpmap:101 telephone-event/8000" in lines
    assert "a=fmtp:101 0-16" in lines
    assert not any("120" in line or "121" in line for line in lines)
    assert out.endswith("\r\n")


def test_already_101_or_no_telephone_event_is_left_alone() -> None:
    once = offer_telephone_event_as_101(PJSUA_OFFER)
    assert offer_telephone_event_as_101(once) == once
    plain = "v=0\nm=audio 4000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
    assert offer_telephone_event_as_101(plain) == plain


def test_101_taken_by_another_codec_is_not_renumbered_into_a_collision() -> None:
    sdp = PJSUA_OFFER.replace("RTP/AVP 0 8 120 121", "RTP/AVP 0 101 120 121") + "a=rtpmap:101 speex/8000\r\n"
    assert offer_telephone_event_as_101(sdp) == sdp
