"""SipSettings: validation messages and what the pool derives from them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sip.settings import SipSettings


def test_worker_count_follows_max_concurrent_calls_and_the_agent_slot() -> None:
    assert SipSettings(max_concurrent_calls=100).worker_count == 50  # 2 customer calls per worker
    assert SipSettings(max_concurrent_calls=100, reserve_agent_slot=False).worker_count == 25
    assert SipSettings(max_concurrent_calls=5, workers=7).worker_count == 7


def test_uris_built_from_the_trunk() -> None:
    s = SipSettings(trunk_uri="sip:gw.example.net:5080;transport=udp", from_domain="calls.example.com")
    assert s.request_uri("+15551230001") == "sip:+15551230001@gw.example.net:5080;transport=udp"
    assert s.from_uri("+15550000000") == "sip:+15550000000@calls.example.com"
    assert SipSettings(trunk_uri="sip:10.0.0.1").from_uri("+1555") == "sip:+1555@10.0.0.1"


def test_bad_values_are_reported_precisely() -> None:
    with pytest.raises(ValidationError, match=r"'http://gw' is not a sip: URI with a host"):
        SipSettings(trunk_uri="http://gw")
    with pytest.raises(ValidationError, match="username and password go together"):
        SipSettings(username="dialer")
    with pytest.raises(ValidationError, match=r"header 'X-A' has a line break"):
        SipSettings(extra_headers={"X-A": "1\r\nVia: evil"})
    with pytest.raises(ValidationError, match=r"RTP ports of 1000 workers end at 70000, beyond 65535"):
        SipSettings(workers=1000, rtp_port_base=20000, rtp_ports_per_worker=50)


def test_password_never_shows_in_repr() -> None:
    s = SipSettings(username="dialer", password="hunter2")
    assert "hunter2" not in repr(s)
    assert s.password is not None and s.password.get_secret_value() == "hunter2"
