"""The HTTP API (aiohttp): agents, campaigns, DNC, leads, health, readiness, metrics and its OpenAPI document.

Every route is declared once in `routes()` with its request and response models; `build_app` registers
them and `openapi_document` describes the same table, so the document cannot drift from the server.
Every route needs `Authorization: Bearer <api.token>` except `/healthz`, `/readyz` and `/metrics`
(unless `api.healthz_require_token` / `api.metrics_require_token`). Errors, including aiohttp's own
404/405/413, come back as `{"error_id": "kebab-case", "message": ..., "details": {...}}`.
"""

from __future__ import annotations

import hmac
import json
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeVar

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.exceptions import RedisError

import dialer
from dialer.agent_registry import (
    AgentCommandError,
    AgentNotFoundError,
    AgentRecord,
    OwnerUnavailableError,
)
from dialer.agents import TRANSITIONS, Agent, AgentError
from dialer.compliance.dnc import OptOutSource, registry_status
from dialer.compliance.gate import Blocked, DialCandidate
from dialer.compliance.numbers import NumberError, normalise
from dialer.compliance.rules import registries_for
from dialer.config import CampaignConfig
from dialer.daemon import Services
from dialer.engine import AgentCallInfo, CampaignRuntime
from dialer.errors import DialerError, LeadError
from dialer.logging import mask_number
from dialer.outcomes import AgentState

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)

DNC_DISPOSITIONS: Final = frozenset({"dnc", "do_not_call", "do-not-call"})
"""Dispositions meaning "never call this number again": they write the internal DNC list."""

CALLBACK_DISPOSITION: Final = "callback"
"""The disposition that schedules the lead again at `callback_at`."""

MAX_ROW_ERRORS: Final = 1000
"""Rejected rows listed in an import's reply; the count covers them all."""

UPLOAD_CHUNK: Final = 64 * 1024
SPOOL_IN_MEMORY: Final = 1 << 20  # uploads up to 1 MiB stay in memory, larger ones spill to a temp file

AGENT_ID: Final = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")

_ERROR_IDS: Final = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
    409: "conflict", 413: "request-too-large", 415: "unsupported-media-type", 500: "internal-error",
    503: "service-unavailable",
}


class ApiError(DialerError):
    """An error the API reports to its client with a status, a kebab-case id, a message and details."""

    def __init__(self, status: int, error_id: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message
        self.details = details or {}


def error_response(status: int, error_id: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The JSON error body every failing route answers with (wazo's `APIException` shape)."""
    body = {"error_id": error_id, "message": message, "details": details or {}}
    return web.json_response(body, status=status, headers=headers)


# Request models ----------------------------------------------------------------------------------


class RequestModel(BaseModel):
    """A request body or query: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentLogin(RequestModel):
    """Log an agent in: where to reach them, which pool they serve, and whether they start ready."""

    uri: str = Field(pattern=r"^sips?:\S+$", max_length=256, description="SIP URI of the agent's phone")
    pool: str = Field("default", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="agent pool (a campaign's agent_pool)")
    skills: list[str] = Field(default_factory=list, max_length=64, description="skill tags")
    priority: int = Field(0, ge=-1000, le=1000, description="higher is offered calls first")
    state: Literal["ready", "paused"] = Field("ready", description="state right after login")
    reason: str = Field("", max_length=200, description="pause reason when state is paused")


class AgentPause(RequestModel):
    """Pause an agent: no calls are offered until they are ready again."""

    reason: str = Field(min_length=1, max_length=200, description="why (break, training, ...)")


class WrapUpDone(RequestModel):
    """End the agent's after-call work with a disposition.

    `dnc` (or `do_not_call`) puts the number on the internal do-not-call list before the agent is
    ready again; `callback` schedules the lead at `callback_at`.
    """

    disposition: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$", description="disposition code")
    callback_at: AwareDatetime | None = Field(
        None, description="when to call back (ISO 8601 with offset); required for `callback`"
    )

    @model_validator(mode="after")
    def _callback_time(self) -> WrapUpDone:
        if self.disposition == CALLBACK_DISPOSITION and self.callback_at is None:
            raise ValueError("callback_at is required for the callback disposition")
        if self.disposition != CALLBACK_DISPOSITION and self.callback_at is not None:
            raise ValueError(f"callback_at is only allowed with the callback disposition, "
                             f"not {self.disposition!r}")
        return self


class DncAdd(RequestModel):
    """Put a number on the internal list (an opt-out) or on one campaign's list."""

    number: str = Field(min_length=1, max_length=40, description="E.164 or national format")
    campaign: str | None = Field(None, description="campaign list; unset: the internal (company) list")
    region: str = Field("US", pattern=r"^[A-Z]{2}$", description="region for numbers without '+'")


class DncQuery(RequestModel):
    """Query of the DNC check and removal routes."""

    campaign: str | None = Field(
        None, description="one campaign; unset: every campaign (check) / the internal list (removal)"
    )
    region: str = Field("US", pattern=r"^[A-Z]{2}$", description="region for numbers without '+'")


class LeadImportQuery(RequestModel):
    """Query of the lead import."""

    region: str = Field("US", pattern=r"^[A-Z]{2}$", description="region for numbers without '+'")


# Response models ---------------------------------------------------------------------------------


class ErrorOut(BaseModel):
    """Every error: a stable kebab-case id, a message for people and details for programs."""

    error_id: str
    message: str
    details: dict[str, Any]


class HealthOut(BaseModel):
    """Liveness."""

    status: Literal["ok"]
    version: str
    uptime_s: float


class ReadyOut(BaseModel):
    """Readiness and what it was made of (503 when `ready` is false)."""

    ready: bool
    checks: dict[str, dict[str, Any]]


class AgentOut(BaseModel):
    """One agent as the node sees it."""

    agent_id: str
    uri: str
    pool: str
    skills: list[str]
    priority: int
    state: AgentState
    state_since: float = Field(description="epoch seconds")
    seconds_in_state: float
    pause_reason: str
    call_id: str | None
    calls_handled: int
    owner: str | None = Field(description="node holding the agent's session; None: ownerless or node-local")
    registered: bool = Field(description="shared through the cluster-wide agent registry")


class AgentListOut(BaseModel):
    """Every agent known to this node."""

    agents: list[AgentOut]


class WrapUpOut(BaseModel):
    """What a wrap-up did."""

    agent: AgentOut
    disposition: str
    call_id: str | None
    dnc_added: bool
    callback_at: AwareDatetime | None


class CampaignStatsOut(BaseModel):
    """Counters since the node started."""

    dials: int
    blocked: int
    live_answers: int
    machines: int
    abandons: int
    connected: int
    failures: int
    opt_outs: int
    ticks: int


class CampaignOut(BaseModel):
    """A campaign's live state on this node."""

    name: str
    state: Literal["running", "paused", "stopped", "removed"]
    configured: bool = Field(description="false: removed from the configuration by a reload")
    dialing: bool
    mode: str
    policy: str
    rule_pack: str
    agent_pool: str
    calls_in_flight: int
    last_dial_count: int
    agents: dict[str, int] = Field(description="agents of the campaign's pool by state")
    stats: CampaignStatsOut


class CampaignListOut(BaseModel):
    """Every campaign of this node."""

    campaigns: list[CampaignOut]


class AbandonOut(BaseModel):
    """The campaign's abandon position over its rolling window."""

    live_answers: int
    abandons: int
    rate: float
    limit: float


class LeadCountsOut(BaseModel):
    """Where a campaign's leads are."""

    campaign: str
    leads: int
    due: int
    scheduled: int
    leased: int
    done: int


class CampaignStatsDetailOut(BaseModel):
    """Live statistics of one campaign: engine counters, abandon window, leads."""

    campaign: CampaignOut
    abandon: AbandonOut
    leads: LeadCountsOut


class DncChangeOut(BaseModel):
    """The result of adding or removing a number."""

    number: str = Field(description="E.164")
    list: str = Field(description="'internal' or 'campaign:<name>'")
    changed: bool = Field(description="false when it was already there (add) / not there (remove)")


class GateVerdictOut(BaseModel):
    """The compliance gate's verdict for one campaign at this instant."""

    campaign: str
    allowed: bool
    reason: str | None
    detail: str


class DncCheckOut(BaseModel):
    """Whether a number is listed and whether each campaign may dial it now."""

    number: str
    internal: bool
    campaign_lists: dict[str, bool]
    verdicts: list[GateVerdictOut]


class RowErrorOut(BaseModel):
    """A rejected row of a lead file."""

    line: int
    reason: str


class ImportOut(BaseModel):
    """What a lead import did; every data row is imported, existing or rejected."""

    campaign: str
    rows: int
    imported: int
    existing: int
    rejected: int
    errors: list[RowErrorOut]
    errors_truncated: bool


# Route table -------------------------------------------------------------------------------------

Access = Literal["token", "health", "metrics"]


@dataclass(frozen=True)
class Route:
    """One route: what it does, what it takes and gives, and who may call it."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    response: type[BaseModel] | None = None  # None: a non-JSON body (see `response_type`)
    response_type: str = "application/json"
    status: int = 200
    body: type[BaseModel] | None = None
    raw_body: str | None = None  # media type of a non-JSON request body (CSV upload)
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    access: Access = "token"


@dataclass
class ApiState:
    """What the API remembers between requests."""

    stopped: set[str] = field(default_factory=set)  # campaigns stopped (not merely paused) through the API


SERVICES = web.AppKey("services", Services)
STATE = web.AppKey("api_state", ApiState)
ROUTES_KEY = web.AppKey("routes", list)


# Helpers -----------------------------------------------------------------------------------------


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"


def validation_error(exc: ValidationError, where: str) -> ApiError:
    """A 400 naming each bad field: `body.uri: String should match pattern ...`."""
    errors = [{"field": _format_loc(e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()]
    message = "; ".join(f"{where}.{e['field']}: {e['message']}" if e["field"] != "(root)"
                        else f"{where}: {e['message']}" for e in errors)
    return ApiError(400, "invalid-request", message, {"in": where, "errors": errors})


async def read_json(request: web.Request, model: type[M]) -> M:
    """Parse and validate the JSON body as `model` (400 naming the problem, 413 when too large)."""
    raw = await request.read()  # raises 413 beyond api.max_body_bytes (client_max_size)
    if not raw.strip():
        raw = b"{}"
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "malformed-json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed-json",
                       f"request body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, "body") from None


def read_query(request: web.Request, model: type[M]) -> M:
    """Validate the query string as `model` (400 naming the parameter)."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_error(exc, "query") from None


def ok(model: BaseModel, status: int = 200) -> web.Response:
    """A JSON response from a response model."""
    return web.json_response(model.model_dump(mode="json"), status=status)


def _svc(request: web.Request) -> Services:
    return request.app[SERVICES]


def _agent(svc: Services, agent_id: str) -> Agent:
    try:
        return svc.agents.get(agent_id)
    except AgentError:
        raise ApiError(404, "unknown-agent", f"unknown agent {agent_id!r}", {"agent_id": agent_id}) from None


def _runtime(svc: Services, name: str) -> CampaignRuntime:
    rt = svc.engine.campaigns.get(name)
    if rt is None:
        raise ApiError(404, "unknown-campaign", f"unknown campaign {name!r}",
                       {"campaign": name, "known": sorted(svc.engine.campaigns)})
    return rt


def _configured(svc: Services, name: str) -> CampaignConfig:
    cfg = svc.campaigns.get(name)
    if cfg is None:
        raise ApiError(404, "unknown-campaign", f"unknown campaign {name!r}",
                       {"campaign": name, "known": sorted(svc.campaigns)})
    return cfg


def _number(text: str, region: str) -> str:
    try:
        return normalise(text, region)
    except NumberError as exc:
        raise ApiError(400, "invalid-number", str(exc), {"number": mask_number(text)}) from None


def agent_out(svc: Services, agent: Agent, *, owner: str | None = None, registered: bool = False) -> AgentOut:
    """The API view of an agent of this node's pool."""
    now = time.time()
    return AgentOut(agent_id=agent.agent_id, uri=agent.uri, pool=agent.pool, skills=sorted(agent.skills),
                    priority=agent.priority, state=agent.state, state_since=agent.state_since,
                    seconds_in_state=max(0.0, now - agent.state_since), pause_reason=agent.pause_reason,
                    call_id=agent.call_id, calls_handled=agent.calls_handled, owner=owner,
                    registered=registered)


def campaign_out(svc: Services, state: ApiState, rt: CampaignRuntime) -> CampaignOut:
    """The API view of a campaign's runtime."""
    configured = rt.name in svc.campaigns
    status: Literal["running", "paused", "stopped", "removed"]
    if not configured:
        status = "removed"
    elif rt.name in state.stopped:
        status = "stopped"
    else:
        status = "running" if rt.dialing else "paused"
    by_state = {s.value: 0 for s in AgentState}
    for agent in svc.agents.in_pool(rt.config.agent_pool):
        by_state[agent.state.value] += 1
    s = rt.stats
    stats = CampaignStatsOut(dials=s.dials, blocked=s.blocked, live_answers=s.live_answers,
                             machines=s.machines, abandons=s.abandons, connected=s.connected,
                             failures=s.failures,
                             opt_outs=s.opt_outs, ticks=s.ticks)
    return CampaignOut(name=rt.name, state=status, configured=configured, dialing=rt.dialing,
                       mode=rt.config.mode.value, policy=rt.config.pacing.policy,
                       rule_pack=rt.config.rule_pack,
                       agent_pool=rt.config.agent_pool, calls_in_flight=len(rt.calls),
                       last_dial_count=rt.last_dial_count, agents=by_state, stats=stats)


# Health ------------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves requests."""
    svc = _svc(request)
    uptime_s = round(time.time() - svc.started_at, 3)
    return ok(HealthOut(status="ok", version=dialer.__version__, uptime_s=uptime_s))


HOME_REGION: Final = {"us": "US", "uk": "GB", "ca": "CA"}
"""The country whose national registry a rule pack's campaigns consult for their own callees."""


def required_registries(campaigns: dict[str, CampaignConfig]) -> dict[str, int]:
    """Registries the campaigns rely on, each with the strictest `max_age_days` asked of it."""
    required: dict[str, int] = {}
    for cfg in campaigns.values():
        names = set(registries_for(cfg, HOME_REGION[cfg.rule_pack]) or ())
        for listed in cfg.dnc.registries.values():
            names.update(listed)
        for name in names:
            required[name] = min(required.get(name, cfg.dnc.max_age_days), cfg.dnc.max_age_days)
    return required


async def dnc_freshness(svc: Services, now: float) -> dict[str, Any]:
    """Per required registry: loaded copies, oldest as-of date, age; `ok` false if any is missing or stale."""
    today = datetime.fromtimestamp(now, UTC).date()
    result: dict[str, Any] = {"ok": True, "registries": {}}
    for name, max_age in sorted(required_registries(svc.campaigns).items()):
        try:
            copies = await registry_status(svc.redis, name)
        except (RedisError, OSError) as exc:
            result["ok"] = False
            result["registries"][name] = {"status": "unknown", "error": str(exc)}
            continue
        if not copies:
            result["ok"] = False
            result["registries"][name] = {"status": "missing", "copies": 0, "max_age_days": max_age}
            continue
        oldest = min(c.as_of for c in copies)
        age = (today - oldest).days
        status = "fresh"
        if age > max_age:
            status = "stale"
            result["ok"] = False
        elif age >= svc.config.dnc.warn_age_days:
            status = "ageing"
        result["registries"][name] = {"status": status, "copies": len(copies),
                                      "oldest_as_of": oldest.isoformat(), "age_days": age,
                                      "max_age_days": max_age}
    return result


async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis reachable, required DNC registry copies loaded and fresh, telephony up."""
    svc = _svc(request)
    checks: dict[str, dict[str, Any]] = {
        "redis": {"ok": svc.redis_ok},
        "dnc": await dnc_freshness(svc, time.time()),
        "telephony": {"ok": svc.telephony_ready()},
    }
    ready = all(c["ok"] for c in checks.values())
    if not ready:
        failing = [name for name, c in checks.items() if not c["ok"]]
        return error_response(503, "not-ready", f"not ready: {', '.join(failing)}", {"checks": checks})
    return ok(ReadyOut(ready=True, checks=checks))


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the node's registry."""
    svc = _svc(request)
    body = generate_latest(svc.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this server."""
    return web.json_response(openapi_document(request.app[ROUTES_KEY], _svc(request)))


# Agents ------------------------------------------------------------------------------------------
#
# Agents logged in through the API are registered in the cluster-wide agent registry when the daemon
# runs one (`svc.agent_registry`): their session lives on one node, and a command sent to any node is
# applied by the owner. Agents put straight into this node's pool (the simulator's) stay node-local.
# Illegal moves are refused here with the state machine's own message before anything is sent, so
# every node answers the same 409 whatever the registry would have made of the command.


@dataclass(frozen=True)
class _Seen:
    """An agent's state as this node knows it, and where its session lives."""

    state: AgentState
    registered: bool  # in the agent registry (else only in this node's pool)
    owner: str | None  # node holding the session; None when ownerless or node-local
    here: bool  # a command is applied on this node (owned here, ownerless, or node-local)


async def _locate(svc: Services, agent_id: str) -> _Seen:
    reg = svc.agent_registry
    if reg is not None:
        rec = await reg.get(agent_id)
        if rec is not None:
            if reg.owns(agent_id):
                return _Seen(svc.agents.get(agent_id).state, True, reg.node_id, True)
            if rec.live:
                return _Seen(rec.state, True, rec.owner, False)
            # Ownerless, or its node died: this node takes the session over on the next command, and
            # (see AgentRegistry._adopt) the calls died with the old node: only ready stays ready.
            kept = rec.state in (AgentState.READY, AgentState.LOGGED_OUT)
            adopted = rec.state if kept else AgentState.PAUSED
            return _Seen(adopted, True, None, True)
    return _Seen(_agent(svc, agent_id).state, False, None, True)


def _check_move(agent_id: str, seen: _Seen, new: AgentState) -> None:
    if new not in TRANSITIONS[seen.state]:
        raise ApiError(409, "illegal-state-change",
                       f"agent {agent_id!r} cannot go from {seen.state} to {new}",
                       {"agent_id": agent_id, "state": seen.state.value, "requested": new.value})


def record_out(svc: Services, rec: AgentRecord) -> AgentOut:
    """The API view of a registered agent (this node's pool when it holds the session: it is fresher)."""
    reg = svc.agent_registry
    if reg is not None and reg.owns(rec.agent_id):
        return agent_out(svc, svc.agents.get(rec.agent_id), owner=reg.node_id, registered=True)
    return AgentOut(agent_id=rec.agent_id, uri=rec.uri, pool=rec.pool, skills=sorted(rec.skills),
                    priority=rec.priority, state=rec.state, state_since=rec.state_since,
                    seconds_in_state=max(0.0, time.time() - rec.state_since), pause_reason=rec.pause_reason,
                    call_id=rec.call_id, calls_handled=rec.calls_handled, owner=rec.owner, registered=True)


async def _command(svc: Services, agent_id: str, seen: _Seen, action: str, local: AgentState | None,
                   **kw: Any) -> AgentOut:
    """Apply `action` through the registry (registered agents) or to this node's pool (`local` state)."""
    reg = svc.agent_registry
    if reg is not None and seen.registered:
        try:
            return record_out(svc, await reg.command(agent_id, action, **kw))
        except AgentNotFoundError as exc:
            raise ApiError(404, "unknown-agent", str(exc), {"agent_id": agent_id}) from None
        except AgentCommandError as exc:
            raise ApiError(400, "invalid-agent-command", str(exc), {"agent_id": agent_id}) from None
        except OwnerUnavailableError as exc:
            raise ApiError(503, "agent-owner-unavailable", str(exc),
                           {"agent_id": agent_id, "owner": seen.owner}) from None
        except AgentError as exc:  # the state moved between our check and the owner's
            raise ApiError(409, "illegal-state-change", str(exc), {"agent_id": agent_id}) from None
    if action == "wrap_up_done":
        svc.engine.finish_wrap_up(agent_id, str(kw.get("disposition", "")))
    elif local is not None:
        try:
            svc.agents.transition(agent_id, local, reason=str(kw.get("reason", "")))
        except AgentError as exc:
            raise ApiError(409, "illegal-state-change", str(exc), {"agent_id": agent_id}) from None
    return agent_out(svc, svc.agents.get(agent_id))


async def list_agents(request: web.Request) -> web.Response:
    """Every agent: the registry's (every node's) and this node's own."""
    svc = _svc(request)
    out: dict[str, AgentOut] = {}
    if svc.agent_registry is not None:
        for rec in await svc.agent_registry.agents():
            out[rec.agent_id] = record_out(svc, rec)
    for agent in svc.agents:
        out.setdefault(agent.agent_id, agent_out(svc, agent))
    return ok(AgentListOut(agents=[out[k] for k in sorted(out)]))


async def get_agent(request: web.Request) -> web.Response:
    """One agent."""
    svc = _svc(request)
    agent_id = request.match_info["agent_id"]
    if svc.agent_registry is not None:
        rec = await svc.agent_registry.get(agent_id)
        if rec is not None:
            return ok(record_out(svc, rec))
    return ok(agent_out(svc, _agent(svc, agent_id)))


async def login_agent(request: web.Request) -> web.Response:
    """Log an agent in (or back in) with their phone's SIP URI; they start ready or paused."""
    svc = _svc(request)
    agent_id = request.match_info["agent_id"]
    if not AGENT_ID.match(agent_id):
        raise ApiError(400, "invalid-agent-id",
                       f"invalid agent id {agent_id!r}: 1 to 64 letters, digits, '_', '.', '@', '-'")
    body = await read_json(request, AgentLogin)
    try:
        seen: _Seen | None = await _locate(svc, agent_id)
    except ApiError:
        seen = None  # a new agent
    if seen is not None and seen.state is not AgentState.LOGGED_OUT:
        raise ApiError(409, "agent-logged-in", f"agent {agent_id!r} is already logged in ({seen.state})",
                       {"agent_id": agent_id, "state": seen.state.value, "owner": seen.owner})
    paused = body.state == "paused"
    reason = (body.reason or "login") if paused else ""
    reg = svc.agent_registry
    if reg is not None and (seen is None or seen.registered):
        try:
            out = record_out(svc, await reg.login(agent_id, body.uri, body.pool, skills=body.skills,
                                                  priority=body.priority, paused=paused, reason=reason))
        except OwnerUnavailableError as exc:
            raise ApiError(503, "agent-owner-unavailable", str(exc), {"agent_id": agent_id}) from None
    else:
        svc.agents.add(agent_id, body.uri, body.pool, skills=body.skills, priority=body.priority)
        svc.agents.transition(agent_id, AgentState.PAUSED if paused else AgentState.READY, reason=reason)
        out = agent_out(svc, svc.agents.get(agent_id))
    if body.pool not in {c.agent_pool for c in svc.campaigns.values()}:
        log.warning("agent_pool_without_campaign", agent=agent_id, pool=body.pool)
    log.info("agent_logged_in", agent=agent_id, pool=body.pool, state=out.state.value, owner=out.owner)
    return ok(out)


async def ready_agent(request: web.Request) -> web.Response:
    """The agent is ready for calls (from paused, or ending wrap-up without a disposition)."""
    svc = _svc(request)
    agent_id = request.match_info["agent_id"]
    seen = await _locate(svc, agent_id)
    _check_move(agent_id, seen, AgentState.READY)
    if seen.state is AgentState.WRAP_UP and not seen.registered:
        out = await _command(svc, agent_id, seen, "wrap_up_done", None, disposition="")
    else:
        out = await _command(svc, agent_id, seen, "ready", AgentState.READY)
    log.info("agent_ready", agent=agent_id)
    return ok(out)


async def pause_agent(request: web.Request) -> web.Response:
    """Pause the agent with a reason; no calls are offered until they are ready again."""
    svc = _svc(request)
    agent_id = request.match_info["agent_id"]
    body = await read_json(request, AgentPause)
    seen = await _locate(svc, agent_id)
    if seen.state is AgentState.RESERVED:
        # The call is being put through to them right now: pausing would strand it.
        raise ApiError(409, "illegal-state-change",
                       f"agent {agent_id!r} is being connected to a call: pause after it",
                       {"agent_id": agent_id, "state": seen.state.value, "requested": "paused"})
    _check_move(agent_id, seen, AgentState.PAUSED)
    out = await _command(svc, agent_id, seen, "pause", AgentState.PAUSED, reason=body.reason)
    log.info("agent_paused", agent=agent_id, reason=body.reason)
    return ok(out)


async def apply_disposition(svc: Services, agent_id: str,
                            body: WrapUpDone) -> tuple[AgentCallInfo | None, bool]:
    """Carry out what a disposition means for the agent's last call on this node; (call, dnc_added).

    `dnc` puts the number on the internal list and `callback` schedules the lead, both before the
    agent leaves wrap-up: if Redis refuses, the agent stays in wrap-up and the client can retry,
    rather than an opt-out being lost.
    """
    call = svc.engine.agent_last_call(agent_id)
    if call is not None and body.disposition:
        # The disposition belongs to the attempt's record (history and CDR export), whatever it means.
        await svc.leads.set_disposition(call.campaign, call.lead_id, call.call_id, body.disposition,
                                        agent_id=agent_id)
    if body.disposition not in DNC_DISPOSITIONS and body.disposition != CALLBACK_DISPOSITION:
        return call, False
    if call is None:
        raise ApiError(409, "no-call", f"agent {agent_id!r} has no call to apply {body.disposition!r} to",
                       {"agent_id": agent_id})
    if body.disposition in DNC_DISPOSITIONS:
        added = await svc.dnc.add(call.number, source=OptOutSource.DISPOSITION, at=time.time())
        log.info("dnc_opt_out", campaign=call.campaign, source="disposition", agent=agent_id,
                 number=mask_number(call.number))
        return call, added
    assert body.callback_at is not None  # WrapUpDone requires it for this disposition
    try:
        await svc.leads.schedule_callback(call.campaign, call.lead_id, body.callback_at.timestamp())
    except LeadError as exc:
        raise ApiError(409, "no-lead", str(exc), {"campaign": call.campaign}) from None
    return call, False


async def wrap_up_agent(request: web.Request) -> web.Response:
    """End wrap-up with a disposition; `dnc` opts the number out, `callback` schedules the lead."""
    svc = _svc(request)
    agent_id = request.match_info["agent_id"]
    body = await read_json(request, WrapUpDone)
    seen = await _locate(svc, agent_id)
    if seen.state is not AgentState.WRAP_UP:
        raise ApiError(409, "illegal-state-change",
                       f"agent {agent_id!r} cannot end wrap-up: they are {seen.state}, "
                       f"not {AgentState.WRAP_UP}",
                       {"agent_id": agent_id, "state": seen.state.value, "requested": "ready"})
    effects = body.disposition in DNC_DISPOSITIONS or body.disposition == CALLBACK_DISPOSITION
    if effects and not seen.here:
        # The call's number and lead are known only to the node that placed it.
        raise ApiError(409, "agent-on-other-node",
                       f"agent {agent_id!r} is held by node {seen.owner!r}: send the {body.disposition!r} "
                       "disposition to that node's API, which knows the call",
                       {"agent_id": agent_id, "owner": seen.owner})
    call, dnc_added = await apply_disposition(svc, agent_id, body) if seen.here else (None, False)
    out = await _command(svc, agent_id, seen, "wrap_up_done", None, disposition=body.disposition)
    log.info("agent_wrap_up_done", agent=agent_id, disposition=body.disposition,
             call_id=call.call_id if call else None)
    return ok(WrapUpOut(agent=out, disposition=body.disposition, call_id=call.call_id if call else None,
                        dnc_added=dnc_added, callback_at=body.callback_at))


async def logout_agent(request: web.Request) -> web.Response:
    """Log the agent out (from ready, paused or wrap-up)."""
    svc = _svc(request)
    agent_id = request.match_info["agent_id"]
    seen = await _locate(svc, agent_id)
    _check_move(agent_id, seen, AgentState.LOGGED_OUT)
    out = await _command(svc, agent_id, seen, "logout", AgentState.LOGGED_OUT)
    log.info("agent_logged_out", agent=agent_id)
    return ok(out)


# Campaigns ---------------------------------------------------------------------------------------


async def list_campaigns(request: web.Request) -> web.Response:
    """Every campaign with its state, policy, calls in flight and counters."""
    svc, state = _svc(request), request.app[STATE]
    return ok(CampaignListOut(campaigns=[campaign_out(svc, state, svc.engine.campaigns[name])
                                         for name in sorted(svc.engine.campaigns)]))


async def get_campaign(request: web.Request) -> web.Response:
    """One campaign."""
    svc, state = _svc(request), request.app[STATE]
    return ok(campaign_out(svc, state, _runtime(svc, request.match_info["name"])))


async def campaign_stats(request: web.Request) -> web.Response:
    """Live statistics: engine counters, the abandon window and the leads."""
    svc, state = _svc(request), request.app[STATE]
    rt = _runtime(svc, request.match_info["name"])
    now = time.time()
    status = await svc.ledger.status(rt.name, now)
    counts = await svc.leads.counts(rt.name, now)
    return ok(CampaignStatsDetailOut(
        campaign=campaign_out(svc, state, rt),
        abandon=AbandonOut(live_answers=status.live_answers, abandons=status.abandons, rate=status.rate,
                           limit=status.limit),
        leads=LeadCountsOut(campaign=counts.campaign, leads=counts.leads, due=counts.due,
                            scheduled=counts.scheduled, leased=counts.leased, done=counts.done),
    ))


def _set_dialing(request: web.Request, dialing: bool, stopped: bool) -> web.Response:
    svc, state = _svc(request), request.app[STATE]
    rt = _runtime(svc, request.match_info["name"])
    if dialing and rt.name not in svc.campaigns:
        raise ApiError(409, "campaign-removed",
                       f"campaign {rt.name!r} was removed from the configuration: it cannot start",
                       {"campaign": rt.name})
    svc.engine.set_dialing(rt.name, dialing)
    if stopped:
        state.stopped.add(rt.name)
        svc.metrics.set_campaign_state(rt.name, "stopped")
    else:
        state.stopped.discard(rt.name)
    out = campaign_out(svc, state, rt)
    log.info("campaign_state_changed", campaign=rt.name, state=out.state)
    return ok(out)


async def start_campaign(request: web.Request) -> web.Response:
    """Start (or resume) dialing."""
    return _set_dialing(request, True, False)


async def pause_campaign(request: web.Request) -> web.Response:
    """Pause dialing; calls in progress carry on."""
    return _set_dialing(request, False, False)


async def stop_campaign(request: web.Request) -> web.Response:
    """Stop dialing and mark the campaign stopped; calls in progress carry on."""
    return _set_dialing(request, False, True)


# DNC ---------------------------------------------------------------------------------------------


def _list_name(campaign: str | None) -> str:
    return "internal" if campaign is None else f"campaign:{campaign}"


async def add_dnc(request: web.Request) -> web.Response:
    """Add a number: to the internal list (an opt-out, binding every campaign) or to a campaign's."""
    svc = _svc(request)
    body = await read_json(request, DncAdd)
    if body.campaign is not None:
        _configured(svc, body.campaign)
    number = _number(body.number, body.region)
    added = await svc.dnc.add(number, campaign=body.campaign, source=OptOutSource.API, at=time.time())
    log.info("dnc_added", list=_list_name(body.campaign), source="api", number=mask_number(number), new=added)
    out = DncChangeOut(number=number, list=_list_name(body.campaign), changed=added)
    return ok(out, status=201 if added else 200)


async def remove_dnc(request: web.Request) -> web.Response:
    """Remove a number from the internal list (or a campaign's with `?campaign=`)."""
    svc = _svc(request)
    query = read_query(request, DncQuery)
    if query.campaign is not None:
        _configured(svc, query.campaign)
    number = _number(request.match_info["number"], query.region)
    removed = await svc.dnc.remove(number, campaign=query.campaign, at=time.time())
    log.info("dnc_removed", list=_list_name(query.campaign), number=mask_number(number), was_listed=removed)
    return ok(DncChangeOut(number=number, list=_list_name(query.campaign), changed=removed))


async def check_dnc(request: web.Request) -> web.Response:
    """Is the number listed, and may each campaign (or `?campaign=`) dial it right now?"""
    svc = _svc(request)
    query = read_query(request, DncQuery)
    names = [query.campaign] if query.campaign is not None else sorted(svc.campaigns)
    if query.campaign is not None:
        _configured(svc, query.campaign)
    number = _number(request.match_info["number"], query.region)
    now = time.time()
    verdicts = []
    lists = {}
    for name in names:
        verdict = await svc.gate.check(DialCandidate(number, name), now)
        if isinstance(verdict, Blocked):
            verdicts.append(GateVerdictOut(campaign=name, allowed=False, reason=verdict.reason.value,
                                           detail=verdict.detail))
        else:
            verdicts.append(GateVerdictOut(campaign=name, allowed=True, reason=None, detail=""))
        lists[name] = await svc.dnc.contains(number, campaign=name)
    internal = await svc.dnc.contains(number)
    return ok(DncCheckOut(number=number, internal=internal, campaign_lists=lists, verdicts=verdicts))


# Leads -------------------------------------------------------------------------------------------


async def import_leads(request: web.Request) -> web.Response:
    """Import a CSV lead file (the request body) into the campaign; rejected rows come back by line."""
    svc = _svc(request)
    name = request.match_info["name"]
    _configured(svc, name)
    query = read_query(request, LeadImportQuery)
    limit = svc.config.api.max_upload_bytes
    too_large = ApiError(413, "upload-too-large",
                         f"lead file larger than api.max_upload_bytes ({limit} bytes)",
                         {"max_upload_bytes": limit})
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    # Stream the upload to a spool (memory, then disk) rather than holding 64 MiB in one bytes object.
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        size = 0
        async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
            size += len(chunk)
            if size > limit:
                raise too_large
            spool.write(chunk)
        spool.seek(0)
        try:
            report = await svc.leads.import_csv(name, spool, default_region=query.region)
        except LeadError as exc:
            raise ApiError(400, "invalid-lead-file", str(exc), {"campaign": name}) from None
    errors = [RowErrorOut(line=e.line, reason=e.reason) for e in report.errors[:MAX_ROW_ERRORS]]
    return ok(ImportOut(campaign=name, rows=report.rows, imported=report.imported, existing=report.existing,
                        rejected=report.rejected, errors=errors,
                        errors_truncated=len(report.errors) > MAX_ROW_ERRORS))


async def lead_counts(request: web.Request) -> web.Response:
    """Where the campaign's leads are: due, scheduled later, leased, done."""
    svc = _svc(request)
    name = request.match_info["name"]
    _configured(svc, name)
    c = await svc.leads.counts(name, time.time())
    return ok(LeadCountsOut(campaign=c.campaign, leads=c.leads, due=c.due, scheduled=c.scheduled,
                            leased=c.leased, done=c.done))


# The table ---------------------------------------------------------------------------------------

_AGENT = (401, 404)


def routes(svc: Services) -> list[Route]:
    """Every route of the API for this node's settings (the metrics path is configurable)."""
    table = [
        Route("GET", "/healthz", healthz, "Liveness", "health", HealthOut, access="health"),
        Route("GET", "/readyz", readyz, "Readiness: Redis, DNC registry freshness, telephony", "health",
              ReadyOut, errors=(503,), access="health"),
        Route("GET", "/openapi.json", openapi, "This document", "meta", None),
        Route("GET", "/agents", list_agents, "List agents", "agents", AgentListOut),
        Route("GET", "/agents/{agent_id}", get_agent, "Get an agent", "agents", AgentOut, errors=_AGENT),
        Route("POST", "/agents/{agent_id}/login", login_agent, "Log an agent in", "agents", AgentOut,
              body=AgentLogin, errors=(400, 409, 413, 503)),
        Route("POST", "/agents/{agent_id}/ready", ready_agent, "Make an agent ready", "agents", AgentOut,
              errors=(*_AGENT, 409, 503)),
        Route("POST", "/agents/{agent_id}/pause", pause_agent, "Pause an agent with a reason", "agents",
              AgentOut, body=AgentPause, errors=(*_AGENT, 400, 409, 413, 503)),
        Route("POST", "/agents/{agent_id}/wrap-up", wrap_up_agent, "End wrap-up with a disposition", "agents",
              WrapUpOut, body=WrapUpDone, errors=(*_AGENT, 400, 409, 413, 503)),
        Route("POST", "/agents/{agent_id}/logout", logout_agent, "Log an agent out", "agents", AgentOut,
              errors=(*_AGENT, 409, 503)),
        Route("GET", "/campaigns", list_campaigns, "List campaigns with live state", "campaigns",
              CampaignListOut),
        Route("GET", "/campaigns/{name}", get_campaign, "Get a campaign", "campaigns", CampaignOut,
              errors=(404,)),
        Route("GET", "/campaigns/{name}/stats", campaign_stats, "Live statistics of a campaign", "campaigns",
              CampaignStatsDetailOut, errors=(404,)),
        Route("POST", "/campaigns/{name}/start", start_campaign, "Start dialing", "campaigns", CampaignOut,
              errors=(404, 409)),
        Route("POST", "/campaigns/{name}/pause", pause_campaign, "Pause dialing", "campaigns", CampaignOut,
              errors=(404,)),
        Route("POST", "/campaigns/{name}/stop", stop_campaign, "Stop dialing", "campaigns", CampaignOut,
              errors=(404,)),
        Route("POST", "/campaigns/{name}/leads", import_leads, "Import a CSV lead file", "leads", ImportOut,
              raw_body="text/csv", query=LeadImportQuery, errors=(400, 404, 413)),
        Route("GET", "/campaigns/{name}/leads", lead_counts, "Lead status of a campaign", "leads",
              LeadCountsOut, errors=(404,)),
        Route("POST", "/dnc", add_dnc, "Add a number to the internal (opt-out) or a campaign list", "dnc",
              DncChangeOut, status=201, body=DncAdd, errors=(400, 404, 413)),
        Route("GET", "/dnc/{number}", check_dnc, "Check a number against the lists and the gate", "dnc",
              DncCheckOut, query=DncQuery, errors=(400, 404)),
        Route("DELETE", "/dnc/{number}", remove_dnc, "Remove a number from a list", "dnc", DncChangeOut,
              query=DncQuery, errors=(400, 404)),
    ]
    if svc.config.metrics.enabled:
        table.append(Route("GET", svc.config.metrics.path, metrics, "Prometheus metrics", "health", None,
                           response_type=CONTENT_TYPE_LATEST, access="metrics"))
    return table


def is_open(route: Route, svc: Services) -> bool:
    """Whether `route` is served without the bearer token under this node's settings."""
    if route.access == "health":
        return not svc.config.api.healthz_require_token
    if route.access == "metrics":
        return not svc.config.api.metrics_require_token
    return False


# Middlewares -------------------------------------------------------------------------------------


def _auth_middleware(svc: Services, open_paths: frozenset[tuple[str, str]]) -> Any:
    token = svc.config.api.token.get_secret_value().encode() if svc.config.api.token is not None else None
    challenge = {"WWW-Authenticate": 'Bearer realm="dialer"'}

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is not None and (request.method, resource.canonical) in open_paths:
            return await handler(request)
        if token is None:
            raise ApiError(401, "unauthorized", "this route needs the API token, and api.token is not set")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized",
                           "missing bearer token: send 'Authorization: Bearer <api.token>'",
                           {"headers": challenge})
        if not hmac.compare_digest(given.strip().encode(), token):
            raise ApiError(401, "unauthorized", "invalid bearer token", {"headers": challenge})
        return await handler(request)

    return auth


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        extra = dict(exc.details)
        challenge = extra.pop("headers", None)
        return error_response(exc.status, exc.error_id, exc.message, extra, challenge)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        details: dict[str, Any] = {}
        headers = {}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            details = {"method": exc.method, "allowed": sorted(exc.allowed_methods)}
            headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        elif exc.status == 404:
            details = {"path": request.path}
        elif exc.status == 413:
            details = {"max_body_bytes": request.app[SERVICES].config.api.max_body_bytes}
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return error_response(exc.status, _ERROR_IDS.get(exc.status, "http-error"), message, details, headers)
    except (RedisError, OSError) as exc:
        log.error("api_store_unavailable", path=request.path, error=str(exc))
        return error_response(503, "store-unavailable", f"Redis is unavailable: {exc}")
    except NumberError as exc:
        return error_response(400, "invalid-number", str(exc))
    except Exception:
        log.exception("api_internal_error", method=request.method, path=request.path)
        return error_response(500, "internal-error", "internal error; see the daemon's log")


def build_app(svc: Services) -> web.Application:
    """The aiohttp application serving `svc`."""
    table = routes(svc)
    open_paths = frozenset((r.method, r.path) for r in table if is_open(r, svc))
    app = web.Application(client_max_size=svc.config.api.max_body_bytes,
                          middlewares=[_error_middleware, _auth_middleware(svc, open_paths)])
    app[SERVICES] = svc
    app[STATE] = ApiState()
    app[ROUTES_KEY] = table
    for route in table:
        app.router.add_route(route.method, route.path, route.handler)
    return app


# OpenAPI -----------------------------------------------------------------------------------------

REF: Final = "#/components/schemas/{model}"
_PATH_PARAM: Final = re.compile(r"\{(\w+)\}")


def model_schema(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
    """The JSON Schema of a model as it appears in the document (references into components)."""
    return model.model_json_schema(ref_template=REF, mode=mode)


def _add_schema(components: dict[str, Any], model: type[BaseModel],
                mode: Literal["validation", "serialization"]) -> dict[str, str]:
    schema = model_schema(model, mode)
    for name, sub in schema.pop("$defs", {}).items():
        components.setdefault(name, sub)
    components[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model_schema(model, "validation")
    required = set(schema.get("required", []))
    return [{"name": name, "in": "query", "required": name in required, "schema": prop,
             "description": prop.get("description", "")} for name, prop in schema["properties"].items()]


def openapi_document(table: list[Route], svc: Services) -> dict[str, Any]:
    """An OpenAPI 3.1 document for `table`, with the pydantic models as component schemas."""
    components: dict[str, Any] = {}
    error_ref = _add_schema(components, ErrorOut, "serialization")
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        op: dict[str, Any] = {
            "operationId": route.handler.__name__,
            "summary": route.summary,
            "description": (route.handler.__doc__ or route.summary).strip(),
            "tags": [route.tag],
            "security": [] if is_open(route, svc) else [{"bearer": []}],
        }
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in _PATH_PARAM.findall(route.path)]
        if route.query is not None:
            params += _query_parameters(route.query)
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _add_schema(components, route.body, "validation")}}}
        elif route.raw_body is not None:
            op["requestBody"] = {"required": True, "content": {
                route.raw_body: {"schema": {"type": "string", "contentMediaType": route.raw_body}}}}
        if route.response is not None:
            schema = _add_schema(components, route.response, "serialization")
            content = {"application/json": {"schema": schema}}
        else:
            content = {route.response_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(route.status): {"description": route.summary, "content": content}}
        if route.status == 201 and route.body is DncAdd:
            responses["200"] = {"description": "already listed", "content": content}
        statuses = set(route.errors)
        if not is_open(route, svc):
            statuses.add(401)
        if route.body is not None or route.query is not None:
            statuses.add(400)
        for status in sorted(statuses):
            responses[str(status)] = {"description": _ERROR_IDS.get(status, "error"),
                                      "content": {"application/json": {"schema": error_ref}}}
        op["responses"] = responses
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "dialer", "version": dialer.__version__,
                 "description": "HTTP API of one dialer node: agents, campaigns, DNC, leads, health."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
