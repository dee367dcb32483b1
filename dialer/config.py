"""Settings models and the loader that validates TOML files into them.

Every model is frozen and rejects unknown keys. `load_model` reports every problem of a file at once,
each as "file: key.path: what was expected", so an operator fixes a file in one pass.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
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
