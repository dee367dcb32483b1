"""Settings of the SIP layer: trunk, credentials, caller identity, worker pool sizing, ports and rates.

Pure pydantic (never imports pjsua2): the daemon's configuration embeds `SipSettings` as its `[sip]`
table and validates it at start-up and on reload like every other key.
"""

from __future__ import annotations

import math
import re
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

CALLS_PER_ENDPOINT = 4
"""PJSUA_MAX_CALLS of the only installable pjsua2 build: a worker holds at most this many legs."""

_SIP_URI = re.compile(r"^sips?:([^@\s<>\"]+@)?[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?(;[^\s<>\"]*)?$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def is_sip_uri(value: str) -> bool:
    """True when `value` looks like a plain `sip:`/`sips:` URI with a host (no display name, no <>)."""
    return bool(_SIP_URI.match(value))


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """Validate extra SIP headers: token names, single-line values (no header injection)."""
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ValueError(f"header name {name!r} is not a SIP token")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} has a line break in its value")
    return headers


class SipSettings(BaseModel):
    """How the SIP worker pool reaches the trunk and how big it is.

    Ports: worker `i` binds UDP `sip_port_base + i` for SIP (0 = any free port) and RTP/RTCP in
    `[rtp_port_base + i * rtp_ports_per_worker, ... + rtp_ports_per_worker)`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    trunk_uri: str = Field(
        "sip:127.0.0.1:5060",
        description="where calls go: the number becomes the user part (sip:+15551234567@host:port)",
    )
    outbound_proxy: str | None = Field(None, description="optional SIP proxy every request is routed via")
    username: str | None = Field(None, description="digest user name, when the trunk challenges")
    password: SecretStr | None = Field(None, description="digest password (never logged)")
    realm: str = Field("*", description="digest realm; '*' answers any realm")
    from_domain: str | None = Field(None, description="host part of From; default the trunk host")
    p_asserted_identity: bool = Field(True, description="send P-Asserted-Identity with the caller ID")
    extra_headers: dict[str, str] = Field(default_factory=dict, description="added to every INVITE")
    agent_headers: dict[str, str] = Field(
        default_factory=lambda: {
            "Call-Info": "<sip:127.0.0.1>;answer-after=0",
            "Alert-Info": "<http://127.0.0.1>;info=alert-autoanswer",
        },
        description="added to the INVITE to an agent phone in bridge mode (auto-answer)",
    )
    max_concurrent_calls: int = Field(100, ge=1, le=4000, description="customer calls in flight")
    workers: int | None = Field(None, ge=1, le=1000, description="override the derived worker count")
    reserve_agent_slot: bool = Field(
        True, description="keep one slot per customer call for its agent leg (bridge mode)"
    )
    bind_address: str | None = Field(None, description="local IP for SIP and RTP (default: all)")
    sip_port_base: int = Field(0, ge=0, le=65535, description="0 = each worker binds any free port")
    rtp_port_base: int = Field(20000, ge=1024, le=65000)
    rtp_ports_per_worker: int = Field(40, ge=16, le=1000, description="RTP+RTCP ports per worker")
    worker_attempts_per_s: float = Field(
        20.0, gt=0, le=60, description="INVITEs per second one worker may start (pjsua select() limit)"
    )
    trunk_cps: float = Field(50.0, gt=0, le=10000, description="calls per second the trunk accepts")
    trunk_response_timeout_s: float = Field(
        4.0, gt=0, le=32, description="no reply at all from the trunk this long = unreachable"
    )
    agent_answer_timeout_s: float = Field(20.0, gt=0, le=120, description="agent leg must answer by then")
    amd_max_s: float = Field(4.0, gt=0, le=30, description="AMD undecided this long = unknown")
    poll_ms: int = Field(10, ge=1, le=500, description="worker's libHandleEvents timeout")
    worker_start_timeout_s: float = Field(15.0, gt=0, le=120, description="a new worker must be up by then")
    heartbeat_interval_s: float = Field(1.0, gt=0, le=60)
    heartbeat_timeout_s: float = Field(5.0, gt=0, le=300, description="no pong = worker hung: kill it")
    command_timeout_s: float = Field(5.0, gt=0, le=60, description="a worker must acknowledge by then")
    restart_backoff_initial_s: float = Field(0.2, gt=0, le=60)
    restart_backoff_max_s: float = Field(10.0, gt=0, le=600)
    drain_timeout_s: float = Field(10.0, ge=0, le=600, description="live calls may finish this long")
    log_level: int = Field(1, ge=0, le=6, description="pjsip log level written to the worker's stderr")

    @field_validator("trunk_uri", "outbound_proxy")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and not is_sip_uri(value):
            raise ValueError(f"{value!r} is not a sip: URI with a host")
        return value

    @field_validator("extra_headers", "agent_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.restart_backoff_initial_s > self.restart_backoff_max_s:
            raise ValueError("restart_backoff_initial_s must not exceed restart_backoff_max_s")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError("heartbeat_timeout_s must exceed heartbeat_interval_s")
        last = self.rtp_port_base + self.worker_count * self.rtp_ports_per_worker
        if last > 65536:
            raise ValueError(f"RTP ports of {self.worker_count} workers end at {last}, beyond 65535")
        return self

    @property
    def legs_per_call(self) -> int:
        """Slots one customer call holds in its worker (2 when its agent leg is reserved)."""
        return 2 if self.reserve_agent_slot else 1

    @property
    def calls_per_worker(self) -> int:
        """Customer calls one worker carries."""
        return CALLS_PER_ENDPOINT // self.legs_per_call

    @property
    def worker_count(self) -> int:
        """Worker processes: the override, else enough for `max_concurrent_calls`."""
        if self.workers is not None:
            return self.workers
        return math.ceil(self.max_concurrent_calls / self.calls_per_worker)

    @property
    def trunk_host(self) -> str:
        """host[:port][;params] of the trunk URI, without scheme or user."""
        rest = self.trunk_uri.split(":", 1)[1]
        return rest.split("@", 1)[1] if "@" in rest else rest

    def request_uri(self, number: str) -> str:
        """The Request-URI for dialling `number` through the trunk."""
        scheme = self.trunk_uri.split(":", 1)[0]
        return f"{scheme}:{number}@{self.trunk_host}"

    def from_uri(self, caller_id: str) -> str:
        """The From URI for a caller ID."""
        domain = self.from_domain or self.trunk_host.split(";", 1)[0]
        return f"sip:{caller_id}@{domain}"
