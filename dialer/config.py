"""Settings models and the loader that validates TOML files into them.

Every model is frozen and rejects unknown keys. `load_model` reports every problem of a file at once,
each as "file: key.path: what was expected", so an operator fixes a file in one pass.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dialer.errors import ConfigError
from dialer.outcomes import Outcome
from dialer.telephony import MIN_RING_TIMEOUT_S, TransferMode


class Model(BaseModel):
    """Base for every settings model: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def validation_problems(exc: ValidationError, source: str) -> list[str]:
    """Render a pydantic error as one line per problem: file, key path, what was expected."""
    problems = []
    for err in exc.errors():
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.append(f"{source}: {_loc(err['loc'])}: {msg}")
    return problems


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax and I/O errors into `ConfigError`."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None


M = TypeVar("M", bound=BaseModel)


def load_model(model: type[M], data: Mapping[str, Any], source: str) -> M:
    """Validate `data` into `model`, raising `ConfigError` with every problem listed."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, source)) from None


# Campaigns --------------------------------------------------------------------------------------


class PacingSettings(Model):
    """Which pacing policy a campaign uses, with its parameters (see dialer/pacing)."""

    policy: str = "predictive"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_policy(self) -> Self:
        from dialer.pacing import make_policy

        try:
            make_policy(self.policy, self.params)
        except ConfigError as exc:
            raise ValueError("; ".join(exc.problems)) from None
        return self


class RetryRule(Model):
    """How a lead is retried after one outcome."""

    max_attempts: int = Field(3, ge=1, le=100, description="attempts in all, including the first")
    delay_s: float = Field(3600.0, ge=0, description="seconds before the next attempt")


DEFAULT_RETRY: dict[Outcome, RetryRule] = {
    Outcome.BUSY: RetryRule(max_attempts=4, delay_s=900),
    Outcome.NO_ANSWER: RetryRule(max_attempts=4, delay_s=3600),
    Outcome.MACHINE: RetryRule(max_attempts=3, delay_s=4 * 3600),
    Outcome.CONGESTION: RetryRule(max_attempts=5, delay_s=300),
    Outcome.FAILED: RetryRule(max_attempts=3, delay_s=600),
    Outcome.ABANDONED: RetryRule(max_attempts=3, delay_s=72 * 3600),
}


class MachineAction(StrEnum):
    """What to do when an answering machine answers."""

    HANGUP = "hangup"
    MESSAGE = "message"  # leave `machine_message` after the beep


class CampaignMode(StrEnum):
    """Agent campaigns route live answers to agents; robocalls play a message first."""

    AGENT = "agent"
    ROBOCALL = "robocall"


class HoursWindow(Model):
    """A daily calling window in the callee's local time: [start, end), optionally other on weekends."""

    start: time = Field(time(8, 0), description="first local time a call may start (inclusive)")
    end: time = Field(time(21, 0), description="local time from which no call may start (exclusive)")
    weekend_start: time | None = Field(None, description="Saturday/Sunday start; None: same as start")
    weekend_end: time | None = Field(None, description="Saturday/Sunday end; None: same as end")
    sunday: bool = Field(True, description="False forbids calls on Sunday altogether")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start >= self.end:
            raise ValueError("start must be before end")
        ws = self.weekend_start or self.start
        we = self.weekend_end or self.end
        if ws >= we:
            raise ValueError("weekend_start must be before weekend_end")
        return self


class CallingHours(Model):
    """A campaign's own calling window; it narrows, never widens, the law of the callee's place.

    Unset, the legal window of the callee's place applies alone: 08:00-21:00 by default (TCPA),
    Florida 08:00-20:00, Canada 09:00-21:30 on weekdays and 10:00-18:00 on weekends (CRTC), ... (see
    `dialer.compliance.rules.LEGAL_HOURS`). The gate allows a call only inside both windows, in every
    time zone the number may be in.
    """

    start: time | None = Field(None, description="earliest local start time; None: the legal window's")
    end: time | None = Field(None, description="local time from which no call starts; None: the legal one")
    sunday: bool = Field(True, description="False: no calls on Sunday")
    holidays: tuple[date, ...] = Field(
        (), description="callee-local dates on which the campaign places no call (e.g. 2026-12-25)"
    )
    overrides: dict[str, HoursWindow] = Field(
        default_factory=dict,
        description="campaign windows per place of the callee: 'US-FL', 'CA', 'CA-QC', 'GB', ...",
    )

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("start must be before end")
        return self

    def window(self) -> HoursWindow | None:
        """The campaign-wide window, or None when the campaign adds no restriction of its own."""
        if self.start is None and self.end is None and self.sunday:
            return None
        return HoursWindow(start=self.start or time(0), end=self.end or time.max, sunday=self.sunday)


class DncSettings(Model):
    """Which do-not-call registries a campaign consults and how fresh their copies must be."""

    registries: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description=(
            "registries per callee country (ISO code), merged over the defaults (US: us-national, "
            "CA: ca-dncl, GB: uk-tps); add state lists to US, e.g. US = ['us-national', 'state-PA']"
        ),
    )
    area_codes: tuple[str, ...] = Field(
        ("*",),
        description="NANP area codes the registry subscription covers; '*' = every loaded area code",
    )
    max_age_days: int = Field(
        31, ge=1, le=31, description="a registry copy older than this blocks its area codes (FTC: 31)"
    )
    warn_age_days: int = Field(25, ge=1, le=31, description="log a warning from this age on")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        # Same names as dialer.compliance.dnc.registry_kind (not imported: it pulls in numpy/redis).
        for region, names in self.registries.items():
            for name in names:
                if not re.fullmatch(r"us-national|ca-dncl|state-[A-Z]{2}|uk-tps|uk-ctps", name):
                    raise ValueError(f"registries.{region}: unknown registry {name!r} (expected us-national, "
                                     "ca-dncl, state-XX, uk-tps, uk-ctps)")
        for code in self.area_codes:
            if code != "*" and not (len(code) == 3 and code.isdigit() and code[0] in "23456789"):
                raise ValueError(f"area code {code!r} is not a NANP area code (3 digits, first 2-9)")
        if self.warn_age_days > self.max_age_days:
            raise ValueError("warn_age_days must not exceed max_age_days")
        return self


class CampaignConfig(Model):
    """One campaign: pacing, compliance rule pack, telephony and retry settings."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    mode: CampaignMode = CampaignMode.AGENT
    agent_pool: str = Field("default", min_length=1)
    pacing: PacingSettings = Field(default_factory=PacingSettings)
    max_lines: int = Field(200, ge=1, description="cap on calls in flight (ringing + waiting)")
    tick_interval_s: float = Field(1.0, gt=0, le=15, description="seconds between pacing ticks")
    ring_timeout_s: float = Field(25.0, ge=MIN_RING_TIMEOUT_S, le=120)
    connect_deadline_s: float = Field(2.0, gt=0, le=2.0, description="live answer to agent, else abandon")
    wrap_up_s: float = Field(60.0, ge=0, description="wrap-up ends by itself after this long")
    abandon_target: float = Field(0.025, gt=0, lt=1)
    abandon_limit: float = Field(0.03, gt=0, lt=1)
    abandon_window_s: float = Field(30 * 86400.0, gt=0, description="rolling window (30 days: FTC/FCC)")
    rule_pack: str = Field("us", pattern=r"^(us|uk|ca)$")
    caller_id: str = Field("+15005550006", min_length=1)
    transfer_mode: TransferMode = TransferMode.BRIDGE
    machine_action: MachineAction = MachineAction.HANGUP
    machine_message: str | None = None
    safe_harbor_message: str = "config/audio/safe_harbor.wav"
    robocall_message: str | None = None
    connect_key: str = Field("1", pattern=r"^[0-9*#]$")
    opt_out_key: str = Field("9", pattern=r"^[0-9*#]$")
    retry: dict[Outcome, RetryRule] = Field(default_factory=lambda: dict(DEFAULT_RETRY))
    hours: CallingHours = Field(
        default_factory=CallingHours, description="calling window in the callee's local time, holidays"
    )
    dnc: DncSettings = Field(default_factory=DncSettings, description="do-not-call registries consulted")
    amd_false_positive_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "share of machine detections that were live people, for Ofcom's abandon rate; "
            "None: the rule pack's conservative default"
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.abandon_target > self.abandon_limit:
            raise ValueError("abandon_target must not exceed abandon_limit")
        if self.connect_key == self.opt_out_key:
            raise ValueError("connect_key and opt_out_key must differ")
        if self.mode is CampaignMode.ROBOCALL and not self.robocall_message:
            raise ValueError("a robocall campaign needs robocall_message")
        if self.machine_action is MachineAction.MESSAGE and not self.machine_message:
            raise ValueError("machine_action = 'message' needs machine_message")
        return self


def load_campaign(path: Path) -> CampaignConfig:
    """Read and validate one campaign file."""
    data = read_toml(path)
    data.setdefault("name", path.stem)
    return load_model(CampaignConfig, data, str(path))
