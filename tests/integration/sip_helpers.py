"""Shared pieces of the SIP integration tests: pool settings for loopback and dial helpers."""

from __future__ import annotations

import random
import time
from typing import Any

from dialer.compliance.gate import mint_clearance
from dialer.telephony import DialRequest
from sip.pool import SipPool
from sip.settings import SipSettings


def loopback_settings(trunk_host: str, **overrides: Any) -> SipSettings:
    """Pool settings for tests: loopback only, 1 worker, a random RTP range, quick timers."""
    values: dict[str, Any] = {
        "trunk_uri": f"sip:{trunk_host}",
        "workers": 1,
        "bind_address": "127.0.0.1",
        "rtp_port_base": random.randrange(20000, 32000, 200),
        "heartbeat_interval_s": 0.5,
        "heartbeat_timeout_s": 2.0,
        "command_timeout_s": 2.0,
        "restart_backoff_initial_s": 0.1,
        "drain_timeout_s": 1.0,
        "log_level": 1,
    }
    values.update(overrides)
    return SipSettings(**values)


def request(call_id: str, number: str = "+15551230001", **overrides: Any) -> DialRequest:
    """A dial request with test defaults (15 s ring timeout, AMD on)."""
    values: dict[str, Any] = {
        "call_id": call_id,
        "number": number,
        "campaign": "test",
        "caller_id": "+15550009999",
        "ring_timeout_s": 15.0,
    }
    values.update(overrides)
    return DialRequest(**values)


async def dial(pool: SipPool, req: DialRequest) -> None:
    """Originate with a fresh clearance, as the compliance gate would mint it."""
    await pool.originate(mint_clearance(req.number, req.campaign, time.time()), req)
