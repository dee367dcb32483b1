"""The HTTP API against a real daemon: real Redis, the simulated world in real time, aiohttp's client.

Every route is exercised, with auth failures, malformed and invalid bodies, unknown agents and
campaigns, an oversized upload, and a full agent cycle on leads imported through the API.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from dialer.agent_registry import AgentRegistry
from dialer.agents import AgentPool
from dialer.compliance.dnc import RegistryLoader
from dialer.daemon import Daemon
from dialer.leads_redis import RedisLeadStore
from dialer.outcomes import AgentState
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

TOKEN = "s3cret-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD = 4096

# One block of numbers per time zone: whatever the hour of the test, some zone is inside the legal
# 08:00-21:00 window; the test asks the gate (through the API) which ones may be dialled now.
ZONE_NUMBERS = {
    "America/New_York": [f"+1212555{n:04d}" for n in range(100, 110)],
    "Pacific/Honolulu": [f"+1808555{n:04d}" for n in range(100, 110)],
    "America/Los_Angeles": [f"+1310555{n:04d}" for n in range(100, 110)],
    "Europe/London": [f"+4420794601{n:02d}" for n in range(20, 30)],
    "Asia/Tokyo": [f"+813123456{n:02d}" for n in range(70, 80)],
    "Asia/Kolkata": [f"+9122261234{n:02d}" for n in range(50, 60)],
    "Australia/Sydney": [f"+612921234{n:02d}" for n in range(50, 60)],
    "America/Sao_Paulo": [f"+55119123456{n:02d}" for n in range(70, 80)],
}
REGISTERED = "+12125550199"  # on the national registry loaded by `load_registry`

FAST_SCENARIO = """
name = "fast"
description = "every dial is a person who answers after about a second and talks about a second"
connect_s = 0.1
safe_harbor_s = 1.0
[outcomes]
live = 1.0
[ring]
live = { components = [ { weight = 1.0, mean_s = 0.8, sd_s = 0.1 } ], min_s = 0.5 }
[talk]
distribution = "fixed"
mean_s = 1.0
sd_s = 0.0
[wrap]
distribution = "fixed"
mean_s = 600.0
sd_s = 0.0
[amd]
enabled = false
"""


def write_config(root: Path, redis_url: str, *, policy: str = "progressive", drain_s: float = 2.0) -> Path:
    """A dialer.toml and one campaign `api` whose hours are the legal window (any time of day works
    as long as some zone's numbers are inside it)."""
    (root / "campaigns").mkdir()
    (root / "dialer.toml").write_text(f"""
campaigns_dir = "campaigns"
drain_timeout_s = {drain_s}
[redis]
url = "{redis_url}"
health_check_interval_s = 0.5
[api]
host = "127.0.0.1"
port = 0
token = "{TOKEN}"
max_body_bytes = 2048
max_upload_bytes = {MAX_UPLOAD}
[logging]
level = "warning"
json = true
""")
    (root / "campaigns" / "api.toml").write_text(f"""
name = "api"
agent_pool = "api-pool"
tick_interval_s = 0.2
ring_timeout_s = 15.0
wrap_up_s = 600.0
[pacing]
policy = "{policy}"
[hours]
start = 00:00:00
end = 23:59:59
[dnc]
registries = {{ US = ["us-national"], GB = [], JP = [], IN = [], AU = [], BR = [] }}
""")
    (root / "fast.toml").write_text(FAST_SCENARIO)
    return root / "dialer.toml"


async def load_registry(redis_url: str, root: Path) -> None:
    """Load a small, current us-national copy for the area codes the test dials."""
    path = root / "us-national.txt"
    path.write_text("2125550199\n8085550199\n3105550199\n")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await RegistryLoader(client).load("us-national", [path], as_of=datetime.now(UTC).date())
    finally:
        await client.aclose()


@dataclass
class Node:
    """A running daemon and a client session on its API (no token by default)."""

    daemon: Daemon
    http: aiohttp.ClientSession
    root: Path
    redis_url: str
    redis: RedisServer

    async def call(self, method: str, path: str, *, status: int, auth: bool = True,
                   **kwargs: Any) -> Any:
        """Send a request; assert the status; return the decoded JSON (or text for non-JSON)."""
        headers = dict(AUTH) if auth else {}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.request(method, path, headers=headers, **kwargs) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.text()
            assert resp.status == status, (method, path, resp.status, body)
            return body


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll `predicate` until it holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def node(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Node]:
    """A daemon on the fast scenario, started in this test's loop and stopped with exit code 0."""
    redis_url = redis_server.url
    path = write_config(tmp_path, redis_url)
    daemon = Daemon(path, simulate=tmp_path / "fast.toml", sim_agents=0)
    task = asyncio.create_task(daemon.run())
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait({task, started}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    assert daemon.started.is_set(), f"daemon did not start (exit {task.result() if task.done() else '-'})"
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{daemon.api_port}") as http:
            yield Node(daemon, http, tmp_path, redis_url, redis_server)
    finally:
        started.cancel()
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0


def assert_error(body: Any, error_id: str, *fragments: str) -> None:
    """`body` is a wazo-style error with this id whose message contains every fragment."""
    assert isinstance(body, dict) and set(body) == {"error_id", "message", "details"}, body
    assert body["error_id"] == error_id, body
    for fragment in fragments:
        assert fragment in body["message"], (fragment, body)


# Health, auth and the error shape ------------------------------------------------------------------


async def test_health_readiness_metrics_openapi_and_auth(node: Node) -> None:
    health = await node.call("GET", "/healthz", status=200, auth=False)
    assert health["status"] == "ok" and health["uptime_s"] >= 0

    # No registry copy loaded yet: the campaign's us-national is missing, so the node is not ready.
    await wait_for(lambda: _redis_ok(node), 5, "the first Redis health check")
    body = await node.call("GET", "/readyz", status=503, auth=False)
    assert_error(body, "not-ready", "dnc")
    checks = body["details"]["checks"]
    assert checks["redis"]["ok"] and checks["telephony"]["ok"]
    assert checks["dnc"]["registries"]["us-national"]["status"] == "missing"
    await load_registry(node.redis_url, node.root)
    ready = await node.call("GET", "/readyz", status=200, auth=False)
    assert ready["ready"] is True
    assert ready["checks"]["dnc"]["registries"]["us-national"] == {
        "status": "fresh", "copies": 3, "oldest_as_of": datetime.now(UTC).date().isoformat(),
        "age_days": 0, "max_age_days": 31}

    text = await node.call("GET", "/metrics", status=200, auth=False)
    assert "dialer_build_info" in text and 'dialer_campaign_state{campaign="api"' in text

    # Every other route needs the token: missing, wrong scheme, wrong value.
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer wrong"}):
        async with node.http.get("/openapi.json", headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            body = await resp.json()
        assert_error(body, "unauthorized", "bearer token")
    for method, path in (("GET", "/agents"), ("POST", "/campaigns/api/pause"), ("POST", "/dnc"),
                         ("GET", "/nowhere")):
        assert_error(await node.call(method, path, status=401, auth=False), "unauthorized", "missing")
    doc = await node.call("GET", "/openapi.json", status=200)
    assert doc["openapi"] == "3.1.0" and "/agents/{agent_id}/wrap-up" in doc["paths"]

    # aiohttp's own errors in the same shape.
    assert_error(await node.call("GET", "/nowhere", status=404), "not-found")
    body = await node.call("DELETE", "/agents", status=405)
    assert_error(body, "method-not-allowed")
    assert body["details"] == {"method": "DELETE", "allowed": ["GET"]}
    body = await node.call("POST", "/agents/a1/pause", status=413, data=b'{"reason": "' + b"x" * 4000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert_error(body, "request-too-large", "2048")
    # Malformed JSON, a non-object, unknown keys, missing and invalid fields.
    a1 = {"uri": "sip:a1@127.0.0.1", "pool": "api-pool", "state": "paused", "reason": "setup"}
    await node.call("POST", "/agents/a1/login", status=200, json=a1)
    body = await node.call("POST", "/agents/a1/pause", status=400, data=b'{"reason": ',
                           headers={"Content-Type": "application/json"})
    assert_error(body, "malformed-json", "not valid JSON", "line 1")
    assert_error(await node.call("POST", "/agents/a1/pause", status=400, json=["x"]), "malformed-json",
                 "must be a JSON object, not list")
    body = await node.call("POST", "/agents/a1/pause", status=400, json={"reason": "x", "colour": "red"})
    assert_error(body, "invalid-request", "body.colour: Extra inputs are not permitted")
    assert body["details"]["errors"][0]["field"] == "colour"
    assert_error(await node.call("POST", "/agents/a1/pause", status=400, json={}), "invalid-request",
                 "body.reason: Field required")
    assert_error(await node.call("POST", "/agents/a2/login", status=400, json={"uri": "tel:123"}),
                 "invalid-request", "body.uri: String should match pattern")


async def test_redis_outage_makes_the_node_unready_and_store_routes_503(node: Node) -> None:
    await load_registry(node.redis_url, node.root)
    await wait_for(lambda: _redis_ok(node), 5, "the first Redis health check")
    await node.call("GET", "/readyz", status=200, auth=False)
    node.redis.stop()
    try:
        async def redis_down() -> bool:
            return not await _redis_ok(node)

        await wait_for(redis_down, 5, "the health check to see Redis gone")
        body = await node.call("GET", "/readyz", status=503, auth=False)
        assert_error(body, "not-ready", "redis", "dnc")
        checks = body["details"]["checks"]
        assert checks["redis"] == {"ok": False} and checks["telephony"] == {"ok": True}
        assert checks["dnc"]["registries"]["us-national"]["status"] == "unknown"
        body = await node.call("POST", "/dnc", status=503, json={"number": "+12125550100"})
        assert_error(body, "store-unavailable", "Redis is unavailable")
        assert (await node.call("GET", "/healthz", status=200, auth=False))["status"] == "ok"
    finally:
        node.redis.start()
    await wait_for(lambda: _redis_ok(node), 5, "Redis to be back")
    # The test server keeps no data across restarts: ready again once the registry is reloaded.
    body = await node.call("GET", "/readyz", status=503, auth=False)
    assert body["details"]["checks"]["redis"] == {"ok": True}
    assert body["details"]["checks"]["dnc"]["registries"]["us-national"]["status"] == "missing"
    await load_registry(node.redis_url, node.root)
    await node.call("GET", "/readyz", status=200, auth=False)


async def _redis_ok(node: Node) -> bool:
    services = node.daemon.services
    return services is not None and services.redis_ok


# Agents ------------------------------------------------------------------------------------------


async def test_agent_routes_state_machine_and_unknown_agent(node: Node) -> None:
    login = {"uri": "sip:alice@127.0.0.1:5070", "pool": "elsewhere", "skills": ["fr", "en"], "priority": 3,
             "state": "paused", "reason": "briefing"}
    alice = await node.call("POST", "/agents/alice/login", status=200, json=login)
    assert alice["state"] == "paused" and alice["pause_reason"] == "briefing" and alice["registered"]
    assert alice["skills"] == ["en", "fr"] and alice["priority"] == 3
    body = await node.call("POST", "/agents/alice/login", status=409, json=login)
    assert_error(body, "agent-logged-in", "already logged in (paused)")
    body = await node.call("POST", "/agents/bad%20id/login", status=400, json=login)
    assert_error(body, "invalid-agent-id", "invalid agent id 'bad id'")

    # Illegal moves answer 409 with the state machine's own message.
    body = await node.call("POST", "/agents/alice/pause", status=409, json={"reason": "again"})
    assert_error(body, "illegal-state-change", "cannot go from paused to paused")
    assert body["details"] == {"agent_id": "alice", "state": "paused", "requested": "paused"}
    body = await node.call("POST", "/agents/alice/wrap-up", status=409, json={"disposition": "sale"})
    assert_error(body, "illegal-state-change", "cannot end wrap-up: they are paused")

    ready = await node.call("POST", "/agents/alice/ready", status=200)
    assert ready["state"] == "ready" and ready["pause_reason"] == ""
    paused = await node.call("POST", "/agents/alice/pause", status=200, json={"reason": "lunch"})
    assert paused["state"] == "paused" and paused["pause_reason"] == "lunch"
    listed = await node.call("GET", "/agents", status=200)
    assert [a["agent_id"] for a in listed["agents"]] == ["alice"]
    got = await node.call("GET", "/agents/alice", status=200)
    assert got["uri"] == "sip:alice@127.0.0.1:5070" and got["pool"] == "elsewhere"
    out = await node.call("POST", "/agents/alice/logout", status=200)
    assert out["state"] == "logged_out"
    body = await node.call("POST", "/agents/alice/logout", status=409)
    assert_error(body, "illegal-state-change", "cannot go from logged_out to logged_out")
    # Logged out, the agent may log in again, with a new phone.
    again = await node.call("POST", "/agents/alice/login", status=200,
                            json={"uri": "sip:alice@127.0.0.1:5080", "pool": "elsewhere"})
    assert again["state"] == "ready" and again["uri"].endswith(":5080")

    for method, path, payload in (("GET", "/agents/bob", None), ("POST", "/agents/bob/ready", None),
                                  ("POST", "/agents/bob/pause", {"reason": "x"}),
                                  ("POST", "/agents/bob/wrap-up", {"disposition": "sale"}),
                                  ("POST", "/agents/bob/logout", None)):
        body = await node.call(method, path, status=404, json=payload)
        assert_error(body, "unknown-agent", "unknown agent 'bob'")
    body = await node.call("POST", "/agents/alice/wrap-up", status=400, json={"disposition": "callback"})
    assert_error(body, "invalid-request", "callback_at is required for the callback disposition")
    body = await node.call("POST", "/agents/alice/wrap-up", status=400,
                           json={"disposition": "sale", "callback_at": "2030-01-01T10:00:00"})
    assert_error(body, "invalid-request", "body.callback_at: Input should have timezone info")


async def test_agents_of_other_nodes_are_routed_and_node_local_agents_served_here(node: Node) -> None:
    svc = node.daemon.services
    assert svc is not None and svc.agent_registry is not None
    here = svc.agent_registry.node_id
    mine = await node.call("POST", "/agents/dave/login", status=200, json={"uri": "sip:dave@127.0.0.1",
                                                                         "pool": "api-pool"})
    assert mine["registered"] is True and mine["owner"] == here

    # Another node, sharing the Redis registry, holds zoe's session.
    client = aioredis.Redis.from_url(node.redis_url, decode_responses=True)
    other_pool = AgentPool(time.time)
    other = AgentRegistry(client, other_pool, node_id="other-node", lease_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    try:
        await other.login("zoe", "sip:zoe@127.0.0.1", "api-pool")
        zoe = await node.call("GET", "/agents/zoe", status=200)
        assert (zoe["owner"], zoe["state"], zoe["registered"]) == ("other-node", "ready", True)
        listed = await node.call("GET", "/agents", status=200)
        owners = [(a["agent_id"], a["owner"]) for a in listed["agents"]]
        assert owners == [("dave", here), ("zoe", "other-node")]
        # Commands reach the owner and come back as its answer; illegal ones are refused here alike.
        paused = await node.call("POST", "/agents/zoe/pause", status=200, json={"reason": "coffee"})
        assert (paused["state"], paused["pause_reason"]) == ("paused", "coffee")
        assert paused["owner"] == "other-node"
        assert other_pool.get("zoe").state is AgentState.PAUSED and not svc.agent_registry.owns("zoe")
        body = await node.call("POST", "/agents/zoe/pause", status=409, json={"reason": "again"})
        assert_error(body, "illegal-state-change", "cannot go from paused to paused")
        # In wrap-up on the other node: an opt-out must be sent where the call's number is known.
        for state in (AgentState.READY, AgentState.RESERVED, AgentState.TALKING, AgentState.WRAP_UP):
            other_pool.transition("zoe", state, call_id="c-other")

        async def mirrored() -> bool:
            return bool((await node.call("GET", "/agents/zoe", status=200))["state"] == "wrap_up")

        await wait_for(mirrored, 5, "zoe's wrap-up to be mirrored")
        body = await node.call("POST", "/agents/zoe/wrap-up", status=409, json={"disposition": "dnc"})
        assert_error(body, "agent-on-other-node", "held by node 'other-node'")
        assert body["details"]["owner"] == "other-node"
        done = await node.call("POST", "/agents/zoe/wrap-up", status=200, json={"disposition": "sale"})
        assert done["agent"]["state"] == "ready" and done["call_id"] is None
        out = await node.call("POST", "/agents/zoe/logout", status=200)
        assert out["state"] == "logged_out"
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.aclose()

    # An agent put straight into this node's pool (as the simulator does) is served here only.
    svc.agents.add("sim-local", "sip:sim@127.0.0.1", "elsewhere")
    local = await node.call("POST", "/agents/sim-local/ready", status=200)
    assert (local["state"], local["registered"], local["owner"]) == ("ready", False, None)
    local = await node.call("POST", "/agents/sim-local/pause", status=200, json={"reason": "x"})
    assert local["state"] == "paused"
    assert (await node.call("POST", "/agents/sim-local/logout", status=200))["state"] == "logged_out"
    body = await node.call("POST", "/agents/sim-local/logout", status=409)
    assert_error(body, "illegal-state-change", "cannot go from logged_out to logged_out")


# Campaigns ---------------------------------------------------------------------------------------


async def test_campaign_routes(node: Node) -> None:
    listed = await node.call("GET", "/campaigns", status=200)
    (campaign,) = listed["campaigns"]
    assert campaign["name"] == "api" and campaign["state"] == "running" and campaign["dialing"]
    assert campaign["policy"] == "progressive" and campaign["agent_pool"] == "api-pool"
    assert campaign["calls_in_flight"] == 0 and campaign["stats"]["ticks"] >= 1
    assert set(campaign["agents"]) == {"logged_out", "ready", "reserved", "talking", "wrap_up", "paused"}

    paused = await node.call("POST", "/campaigns/api/pause", status=200)
    assert paused["state"] == "paused" and not paused["dialing"]
    stopped = await node.call("POST", "/campaigns/api/stop", status=200)
    assert stopped["state"] == "stopped" and not stopped["dialing"]
    metrics = await node.call("GET", "/metrics", status=200, auth=False)
    assert 'dialer_campaign_state{campaign="api",state="stopped"} 1.0' in metrics
    assert (await node.call("GET", "/campaigns/api", status=200))["state"] == "stopped"
    started = await node.call("POST", "/campaigns/api/start", status=200)
    assert started["state"] == "running" and started["dialing"]
    stats = await node.call("GET", "/campaigns/api/stats", status=200)
    assert stats["campaign"]["name"] == "api"
    assert stats["abandon"] == {"live_answers": 0, "abandons": 0, "rate": 0.0, "limit": 0.03}
    assert stats["leads"]["leads"] == 0

    for method, path in (("GET", "/campaigns/nope"), ("GET", "/campaigns/nope/stats"),
                         ("POST", "/campaigns/nope/start"), ("POST", "/campaigns/nope/pause"),
                         ("POST", "/campaigns/nope/stop"), ("GET", "/campaigns/nope/leads")):
        body = await node.call(method, path, status=404)
        assert_error(body, "unknown-campaign", "unknown campaign 'nope'")


# DNC ---------------------------------------------------------------------------------------------


async def test_dnc_routes(node: Node) -> None:
    await load_registry(node.redis_url, node.root)
    # National format is normalised with the region; the opt-out lands on the internal list.
    london = ZONE_NUMBERS["Europe/London"][0]
    added = await node.call("POST", "/dnc", status=201, json={"number": "020 7946 0120", "region": "GB"})
    assert added == {"number": london, "list": "internal", "changed": True}
    again = await node.call("POST", "/dnc", status=200, json={"number": london})
    assert again["changed"] is False
    removed = await node.call("DELETE", f"/dnc/{london}", status=200)
    assert removed == {"number": london, "list": "internal", "changed": True}
    assert (await node.call("DELETE", f"/dnc/{london}", status=200))["changed"] is False

    # The gate checks hours first, so verdicts are asserted on numbers whose zone is awake.
    number, other = await dialable_now(node, 2)
    check = await node.call("GET", f"/dnc/{number}", status=200)
    assert check == {"number": number, "internal": False, "campaign_lists": {"api": False},
                     "verdicts": [{"campaign": "api", "allowed": True, "reason": None, "detail": ""}]}
    await node.call("POST", "/dnc", status=201, json={"number": number})
    check = await node.call("GET", f"/dnc/{number}?campaign=api", status=200)
    assert check["internal"] is True
    assert check["verdicts"][0]["allowed"] is False and check["verdicts"][0]["reason"] == "dnc_internal"
    await node.call("DELETE", f"/dnc/{number}", status=200)
    assert (await node.call("GET", f"/dnc/{number}", status=200))["verdicts"][0]["allowed"] is True

    # A campaign's own list.
    added = await node.call("POST", "/dnc", status=201, json={"number": other, "campaign": "api"})
    assert added["list"] == "campaign:api"
    check = await node.call("GET", f"/dnc/{other}?campaign=api", status=200)
    assert check["internal"] is False and check["campaign_lists"] == {"api": True}
    assert check["verdicts"][0]["reason"] == "dnc_campaign"
    removed = await node.call("DELETE", f"/dnc/{other}?campaign=api", status=200)
    assert removed == {"number": other, "list": "campaign:api", "changed": True}

    # The national registry: blocked as dnc_national when its zone is awake.
    registered = await node.call("GET", f"/dnc/{REGISTERED}", status=200)
    verdict = registered["verdicts"][0]
    assert not verdict["allowed"] and verdict["reason"] in ("dnc_national", "outside_hours"), verdict
    if number.startswith("+1212"):
        assert verdict["reason"] == "dnc_national"

    body = await node.call("POST", "/dnc", status=400, json={"number": "12"})
    assert_error(body, "invalid-number", "not a NANP number: +1 needs a 3-digit area code")
    body = await node.call("POST", "/dnc", status=400, json={"number": "call me maybe"})
    assert_error(body, "invalid-number", "unparseable number 'call me maybe'")
    body = await node.call("GET", "/dnc/+1212000", status=400)
    assert_error(body, "invalid-number")
    body = await node.call("DELETE", "/dnc/+99912345678", status=400)
    assert_error(body, "invalid-number")
    body = await node.call("POST", "/dnc", status=404, json={"number": number, "campaign": "nope"})
    assert_error(body, "unknown-campaign")
    assert_error(await node.call("GET", f"/dnc/{number}?campaign=nope", status=404), "unknown-campaign")
    body = await node.call("GET", f"/dnc/{number}?colour=red", status=400)
    assert_error(body, "invalid-request", "query.colour: Extra inputs are not permitted")


# Leads -------------------------------------------------------------------------------------------


async def test_lead_routes(node: Node) -> None:
    await node.call("POST", "/campaigns/api/pause", status=200)  # nobody dials these
    csv = b"number,name\n+12125550101,Ann\nnot a number,Bob\n+12125550101,Dup\n\n(212) 555-0102,Cy\n"
    report = await node.call("POST", "/campaigns/api/leads", status=200, data=csv,
                             headers={"Content-Type": "text/csv"})
    assert report["rows"] == 4 and report["imported"] == 2 and report["rejected"] == 2
    assert [e["line"] for e in report["errors"]] == [3, 4]
    assert "duplicate: number +12125550101 already on line 2" in report["errors"][1]["reason"]
    assert report["errors_truncated"] is False
    again = await node.call("POST", "/campaigns/api/leads?region=US", status=200, data=csv)
    assert again["existing"] == 2 and again["imported"] == 0
    counts = await node.call("GET", "/campaigns/api/leads", status=200)
    assert counts == {"campaign": "api", "leads": 2, "due": 2, "scheduled": 0, "leased": 0, "done": 0}

    oversized = b"number\n" + b"+12125550103\n" * 400
    body = await node.call("POST", "/campaigns/api/leads", status=413, data=oversized)
    assert_error(body, "upload-too-large", f"({MAX_UPLOAD} bytes)")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit applies while streaming
        for _ in range(10):
            yield b"number\n" + b"+12125550104\n" * 50

    body = await node.call("POST", "/campaigns/api/leads", status=413, data=chunks())
    assert_error(body, "upload-too-large")
    body = await node.call("POST", "/campaigns/api/leads", status=400, data=b"name,phone\nAnn,123\n")
    assert_error(body, "invalid-lead-file", "number")
    body = await node.call("POST", "/campaigns/api/leads?region=ZZ", status=400, data=csv)
    assert_error(body, "invalid-lead-file", "unknown default region 'ZZ'")
    body = await node.call("POST", "/campaigns/api/leads?region=usa", status=400, data=csv)
    assert_error(body, "invalid-request", "query.region: String should match pattern")
    body = await node.call("POST", "/campaigns/nope/leads", status=404, data=csv)
    assert_error(body, "unknown-campaign")
    assert (await node.call("GET", "/campaigns/api/leads", status=200))["leads"] == 2


# A full agent cycle ------------------------------------------------------------------------------


async def dialable_now(node: Node, count: int) -> list[str]:
    """`count` numbers the gate clears right now (their zone's legal window is open)."""
    for numbers in ZONE_NUMBERS.values():
        check = await node.call("GET", f"/dnc/{numbers[0]}?campaign=api", status=200)
        if check["verdicts"][0]["allowed"]:
            return numbers[:count]
    raise AssertionError("no zone of the test is inside its calling window")


async def test_full_agent_cycle_with_dispositions(node: Node) -> None:
    await load_registry(node.redis_url, node.root)
    numbers = await dialable_now(node, 3)
    csv = ("number\n" + "\n".join(numbers) + "\n").encode()
    report = await node.call("POST", "/campaigns/api/leads", status=200, data=csv)
    assert report["imported"] == 3

    async def wrapping_up() -> bool:
        agent = await node.call("GET", "/agents/carol", status=200)
        return bool(agent["state"] == "wrap_up")

    # Login ready: progressive pacing dials one number for her; the person answers and is put
    # through; the call ends and she is in wrap-up.
    await node.call("POST", "/agents/carol/login", status=200, json={"uri": "sip:carol@127.0.0.1",
                                                                     "pool": "api-pool"})
    await wait_for(wrapping_up, 15, "the first call to reach carol and end")
    carol = await node.call("GET", "/agents/carol", status=200)
    assert carol["calls_handled"] == 1
    # She cannot be paused into a call, nor log in twice; wrap-up with a callback tomorrow.
    callback_at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    done = await node.call("POST", "/agents/carol/wrap-up", status=200,
                           json={"disposition": "callback", "callback_at": callback_at.isoformat()})
    assert done["agent"]["state"] == "ready" and done["disposition"] == "callback"
    assert done["dnc_added"] is False and done["call_id"]
    first_call = done["call_id"]

    await wait_for(wrapping_up, 15, "the second call to reach carol and end")
    done = await node.call("POST", "/agents/carol/wrap-up", status=200, json={"disposition": "dnc"})
    assert done["dnc_added"] is True and done["call_id"] != first_call
    second_call = done["call_id"]
    assert done["agent"]["state"] == "ready" and done["agent"]["calls_handled"] == 2
    listed = [n for n in numbers if (await node.call("GET", f"/dnc/{n}", status=200))["internal"]]
    assert len(listed) == 1, listed  # exactly the number of the second call was opted out
    check = await node.call("GET", f"/dnc/{listed[0]}?campaign=api", status=200)
    assert check["verdicts"][0]["reason"] == "dnc_internal"

    # The wrap-up disposition ends the cycle: she is ready and the third lead is dialled for her.
    await wait_for(wrapping_up, 15, "the third call to reach carol and end")
    await node.call("POST", "/agents/carol/pause", status=200, json={"reason": "done"})
    await node.call("POST", "/agents/carol/logout", status=200)
    stats = await node.call("GET", "/campaigns/api/stats", status=200)
    assert stats["campaign"]["stats"]["connected"] == 3 and stats["campaign"]["stats"]["abandons"] == 0
    assert stats["abandon"]["live_answers"] == 3
    leads = stats["leads"]
    # The callback lead waits for tomorrow; the opted-out and the third are done.
    assert leads["leads"] == 3 and leads["scheduled"] == 1 and leads["done"] == 2, leads
    # Dispositions reach the attempts' records (CDR export merges them in).
    client = aioredis.Redis.from_url(node.redis_url, decode_responses=True)
    try:
        dispositions = {r.call_id: r.disposition async for _, r in RedisLeadStore(client).cdrs("api")}
    finally:
        await client.aclose()
    assert dispositions[first_call] == "callback" and dispositions[second_call] == "dnc"
