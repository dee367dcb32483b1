"""Settings models and the loader that validates TOML files into them.

Every model is frozen and rejects unknown keys. `load_model` reports every problem of a file at once,
each as "file: key.path: what was expected", so an operator fixes a file in one pass.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date, time
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from dialer.errors import ConfigError
from dialer.outcomes import Outcome
from dialer.telephony import MIN_RING_TIMEOUT_S, TransferMode
from sip.settings import SipSettings


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
    ring_timeout_s: float = Field(
        25.0, ge=MIN_RING_TIMEOUT_S, le=120,
        description="seconds from the INVITE before an unanswered call is cancelled; stretched so the "
                    "phone rings at least 15 s after the network first reports ringing",
    )
    connect_deadline_s: float = Field(
        1.7, gt=0, le=2.0,
        description="live answer to agent, else abandon; below 2 s so the safe-harbor message starts "
                    "within 2 s of the answer",
    )
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


# Daemon -----------------------------------------------------------------------------------------
# `config/dialer.toml`: how this node reaches Redis, the SIP trunk and its operators. Secrets
# (fields typed `SecretStr`) may instead be given as `<key>_file` (a file holding the secret, path
# relative to dialer.toml) or `<key>_env` (an environment variable's name); the loader resolves them
# before validation, so neither the file's content nor the variable's value ever sits in the TOML.

REDIS_URL_ENV = "DIALER_REDIS_URL"
"""Environment variable that overrides `redis.url` (containers, CI, a password-bearing URL)."""

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


class RedisSettings(Model):
    """Where the shared state lives: leads, hopper, leases, agents, DNC, abandon windows, CDRs."""

    url: str = Field(
        "redis://127.0.0.1:6379/0",
        description=f"redis://, rediss:// (TLS) or unix:// URL; ${REDIS_URL_ENV} overrides it",
    )
    password: SecretStr | None = Field(None, description="Redis AUTH password, when not in the URL")
    sentinels: tuple[str, ...] = Field(
        (), description="Sentinel 'host:port' addresses; non-empty: the master is found through them"
    )
    sentinel_master: str = Field("dialer", min_length=1, description="master (service) name in Sentinel")
    sentinel_password: SecretStr | None = Field(None, description="password of the Sentinels themselves")
    socket_timeout_s: float = Field(2.0, gt=0, le=60, description="a command without reply this long fails")
    socket_connect_timeout_s: float = Field(2.0, gt=0, le=60, description="connection set-up limit")
    health_check_interval_s: float = Field(
        5.0, gt=0, le=300, description="seconds between PINGs that feed /readyz and dialer_redis_up"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("expected a host in the URL (redis://host:port/db)")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("expected a socket path (unix:///run/redis/redis.sock)")
        return value

    @field_validator("sentinels")
    @classmethod
    def _sentinels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for address in value:
            match = _HOST_PORT.match(address)
            if match is None or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"sentinel {address!r} is not 'host:port'")
        return value

    @property
    def redacted_url(self) -> str:
        """The URL with any password replaced, for logs and status pages."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()


class ApiSettings(Model):
    """The HTTP API: agents, campaigns, DNC, leads, health and metrics."""

    host: str = Field("127.0.0.1", min_length=1, description="address to bind; loopback unless proxied")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one (tests)")
    token: SecretStr | None = Field(
        None, description="bearer token for every route but the open ones; unset: those routes answer 401"
    )
    metrics_require_token: bool = Field(False, description="true: /metrics needs the token too")
    healthz_require_token: bool = Field(False, description="true: /healthz and /readyz need the token too")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, le=1 << 30, description="largest JSON request body accepted (413 beyond)"
    )
    max_upload_bytes: int = Field(
        64 << 20, ge=1024, le=1 << 34, description="largest lead CSV accepted by POST /leads (413 beyond)"
    )

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> Self:
        if self.token is None and not _is_loopback(self.host):
            raise ValueError(f"binding {self.host!r} beyond loopback needs a token (api.token)")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class MetricsSettings(Model):
    """The Prometheus endpoint, served by the API server."""

    enabled: bool = Field(True, description="false: no /metrics route (metrics are still kept)")
    path: str = Field("/metrics", pattern=r"^/[A-Za-z0-9/_.-]*$", description="route of the exposition")
    created_series: bool = Field(
        False, description="true: also expose prometheus-client's *_created series (mostly noise)"
    )


class LoggingSettings(Model):
    """structlog output: JSON lines to stdout (journald) or a console renderer on a terminal."""

    level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="lowest level written"
    )
    json_lines: bool | None = Field(
        None,
        alias="json",
        description="true: JSON lines; false: console renderer; unset: console on a TTY, JSON otherwise",
    )


class DncFreshness(Model):
    """Node-wide freshness of the loaded do-not-call registry copies."""

    warn_age_days: int = Field(
        25, ge=1, le=31, description="from this age a list is reported stale-soon (log, /readyz)"
    )


class ClusterSettings(Model):
    """Leases that let several nodes share one Redis (a crashed node's work returns after them)."""

    lead_lease_s: float = Field(
        60.0, ge=0.5, le=3600,
        description="a claimed lead returns to the hopper this long after its node stops renewing it; "
                    "$DIALER_LEAD_LEASE_S overrides",
    )
    agent_lease_s: float = Field(
        15.0, ge=0.5, le=3600,
        description="an agent session moves to another node this long after its owner stops heartbeating; "
                    "$DIALER_AGENT_LEASE_S overrides",
    )


class DaemonConfig(Model):
    """Everything one dialer node needs that is not a campaign: `config/dialer.toml`."""

    node_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]+$", description="this node's name in leases; unset: the host name"
    )
    campaigns_dir: Path = Field(
        Path("campaigns"), description="directory of campaign files (*.toml), relative to dialer.toml"
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="on SIGTERM, connected calls may finish this long, then hang up"
    )
    redis: RedisSettings = Field(default_factory=RedisSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    dnc: DncFreshness = Field(default_factory=DncFreshness)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)


def secret_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths of every `SecretStr` field under `model` (each also accepts `_file` and `_env`)."""
    paths: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        kinds = _annotation_types(info.annotation)
        if SecretStr in kinds:
            paths.append((*prefix, key))
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                paths.extend(secret_paths(kind, (*prefix, key)))
    return paths


def _annotation_types(annotation: Any) -> list[Any]:
    args = get_args(annotation)
    return [a for a in args if a is not type(None)] if args else [annotation]


_UNRESOLVED_SECRET = "<unresolved secret>"


def _resolve_secrets(
    data: dict[str, Any], source: str, base: Path, env: Mapping[str, str]
) -> list[str]:
    """Replace `<key>_file` / `<key>_env` by the secret they name, in place; return the problems."""
    problems: list[str] = []
    for path in secret_paths(DaemonConfig):
        table: Any = data
        for part in path[:-1]:
            table = table.get(part) if isinstance(table, dict) else None
        if not isinstance(table, dict):
            continue  # absent, or not a table: validation reports the latter
        key = path[-1]
        dotted = ".".join(path)
        given = [k for k in (key, f"{key}_file", f"{key}_env") if k in table]
        if len(given) > 1:
            problems.append(f"{source}: {dotted}: give only one of {key}, {key}_file, {key}_env")
        elif f"{key}_file" in table:
            ref = table[f"{key}_file"]
            file = base / ref if isinstance(ref, str) and ref else None
            if file is None:
                problems.append(f"{source}: {dotted}_file: expected the path of a file holding the secret")
            else:
                try:
                    secret = file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    problems.append(f"{source}: {dotted}_file: cannot read {file}: {exc.strerror}")
                else:
                    if secret:
                        table[key] = secret
                    else:
                        problems.append(f"{source}: {dotted}_file: {file} is empty")
        elif f"{key}_env" in table:
            ref = table[f"{key}_env"]
            if not isinstance(ref, str) or not ref:
                problems.append(f"{source}: {dotted}_env: expected the name of an environment variable")
            elif not env.get(ref):
                problems.append(f"{source}: {dotted}_env: environment variable {ref} is not set")
            else:
                table[key] = env[ref]
        if len(given) > 1 or (given and key not in table):
            # Already reported: a stand-in lets validation check the rest of the file without
            # complaining again (e.g. "username and password go together").
            table[key] = _UNRESOLVED_SECRET
        table.pop(f"{key}_file", None)
        table.pop(f"{key}_env", None)
    return problems


def _daemon_data(path: Path, env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Raw dialer.toml with secrets resolved, the env override applied and paths made absolute."""
    data = read_toml(path)
    source = str(path)
    base = path.parent
    problems = _resolve_secrets(data, source, base, env)
    override = env.get(REDIS_URL_ENV)
    if override:
        redis = data.setdefault("redis", {})
        if isinstance(redis, dict):
            redis["url"] = override
    campaigns_dir = data.get("campaigns_dir", "campaigns")
    if isinstance(campaigns_dir, str):
        data["campaigns_dir"] = str(base / campaigns_dir)
    return data, problems


def _model_at(model: type[BaseModel], parts: list[str]) -> type[BaseModel] | None:
    """The settings model reached by following key path `parts` from `model` (None: not a model)."""
    current: Any = model
    for part in parts:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        fields = {info.alias or name: info for name, info in current.model_fields.items()}
        if part not in fields:
            return None
        nested = [t for t in _annotation_types(fields[part].annotation) if isinstance(t, type)]
        current = next((t for t in nested if issubclass(t, BaseModel)), None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def tidy_problems(problems: list[str], source: str, model: type[BaseModel]) -> list[str]:
    """Make pydantic's wording operator-friendly.

    Drops the "Value error, " prefix (and a key path repeated inside the message, as the pacing
    validator does), says "unknown key" for every extra key and suggests the closest known key.
    """
    tidied = []
    prefix = f"{source}: "
    for problem in problems:
        if not problem.startswith(prefix) or ": " not in problem[len(prefix):]:
            tidied.append(problem)
            continue
        loc, msg = problem[len(prefix):].split(": ", 1)
        msg = msg.removeprefix("Value error, ")
        inner, sep, rest = msg.partition(": ")
        if sep and (inner == loc or inner.startswith(loc + ".")):
            loc, msg = inner, rest
        if msg in ("unknown key", "Extra inputs are not permitted"):
            msg = "unknown key"
            *parents, key = loc.split(".")
            owner = _model_at(model, parents)
            if owner is not None:
                known = [info.alias or name for name, info in owner.model_fields.items()]
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
                if close:
                    msg += f" (did you mean {close[0]!r}?)"
        tidied.append(f"{prefix}{loc}: {msg}")
    return tidied


def _validate_daemon(data: Mapping[str, Any], source: str, env: Mapping[str, str]) -> DaemonConfig:
    try:
        return DaemonConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = tidy_problems(validation_problems(exc, source), source, DaemonConfig)
        if env.get(REDIS_URL_ENV):
            problems = [
                p + f" (from ${REDIS_URL_ENV})" if p.startswith(f"{source}: redis.url:") else p
                for p in problems
            ]
        raise ConfigError(problems) from None


def load_daemon_config(path: Path, env: Mapping[str, str] | None = None) -> DaemonConfig:
    """Read and validate `dialer.toml`, reporting every problem at once.

    `env` (default `os.environ`) supplies `DIALER_REDIS_URL` and the `<key>_env` secrets.
    """
    environ = os.environ if env is None else env
    data, problems = _daemon_data(path, environ)
    try:
        config = _validate_daemon(data, str(path), environ)
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems) from None
    if problems:
        raise ConfigError(problems)
    return config


def load_campaign_file(path: Path) -> CampaignConfig:
    """`load_campaign` with operator-friendly problem wording (see `tidy_problems`)."""
    try:
        return load_campaign(path)
    except ConfigError as exc:
        raise ConfigError(tidy_problems(exc.problems, str(path), CampaignConfig)) from None


def load_all(
    path: Path, env: Mapping[str, str] | None = None
) -> tuple[DaemonConfig, dict[str, CampaignConfig]]:
    """Validate `dialer.toml` and every `campaigns_dir/*.toml`; one `ConfigError` lists every problem.

    Campaign files are checked even when dialer.toml is invalid (as long as its `campaigns_dir` can
    be read), so a reload reports all it has to in one pass. Campaign names must be unique.
    """
    environ = os.environ if env is None else env
    problems: list[str] = []
    daemon: DaemonConfig | None = None
    data: dict[str, Any] = {}
    try:
        data, problems = _daemon_data(path, environ)
        daemon = _validate_daemon(data, str(path), environ)
    except ConfigError as exc:
        problems.extend(exc.problems)

    raw_dir = data.get("campaigns_dir", str(path.parent / "campaigns"))
    campaigns_dir = daemon.campaigns_dir if daemon is not None else Path(str(raw_dir))
    campaigns: dict[str, CampaignConfig] = {}
    origin: dict[str, Path] = {}
    if not campaigns_dir.is_dir():
        problems.append(f"{path}: campaigns_dir: {campaigns_dir} is not a directory")
    else:
        for file in sorted(campaigns_dir.glob("*.toml")):
            try:
                campaign = load_campaign_file(file)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            if campaign.name in campaigns:
                problems.append(
                    f"{file}: name: campaign {campaign.name!r} is already defined in {origin[campaign.name]}"
                )
                continue
            campaigns[campaign.name] = campaign
            origin[campaign.name] = file
    if problems or daemon is None:
        raise ConfigError(problems)
    return daemon, campaigns
