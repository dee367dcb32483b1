"""The OpenAPI document matches the routes the app serves and the pydantic models it validates with."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CollectorRegistry

from dialer.agents import AgentPool
from dialer.api import (
    REF,
    AgentLogin,
    AgentPause,
    DncAdd,
    DncQuery,
    LeadImportQuery,
    WrapUpDone,
    build_app,
    openapi_document,
    routes,
)
from dialer.compliance.abandon import RedisAbandonLedger
from dialer.compliance.checker import ComplianceGate
from dialer.compliance.dnc import DncLists
from dialer.config import load_all
from dialer.daemon import Services
from dialer.engine import Engine
from dialer.leads_redis import RedisLeadStore
from dialer.metrics import DialerMetrics
from dialer.sim.scenario import load_scenario
from dialer.sim.world import SimTelephony

SCENARIO = Path(__file__).resolve().parents[1] / "config" / "scenarios" / "warm.toml"


def services(tmp_path: Path, api: str = "", metrics: str = "") -> Services:
    """Real services on a config file; nothing connects (the document needs no I/O)."""
    (tmp_path / "campaigns").mkdir(parents=True, exist_ok=True)
    (tmp_path / "campaigns" / "c1.toml").write_text('name = "c1"\n')
    (tmp_path / "dialer.toml").write_text(f'[api]\ntoken = "t0ken-value"\n{api}\n[metrics]\n{metrics}\n')
    config, campaigns = load_all(tmp_path / "dialer.toml", {})
    registry = CollectorRegistry()
    metrics_ = DialerMetrics(registry)
    redis = aioredis.Redis()
    leads = RedisLeadStore(aioredis.Redis(decode_responses=True))
    agents = AgentPool(time.time)
    gate = ComplianceGate(redis, campaigns)
    ledger = RedisAbandonLedger(redis, {})
    telephony = SimTelephony(load_scenario(SCENARIO), random.Random(1), time.time, SCENARIO.parent)
    engine = Engine(campaigns, agents=agents, leads=leads, gate=gate, telephony=telephony, abandon=ledger)
    return Services(tmp_path / "dialer.toml", config, campaigns, registry, metrics_, redis, agents, leads,
                    gate, DncLists(redis), ledger, engine, telephony)


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Services]:
    yield services(tmp_path)


def served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app's router serves."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        out.add((route.method, str(path)))
    return out


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    schema: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_served_route_is_documented_and_nothing_else(svc: Services) -> None:
    app = build_app(svc)
    doc = openapi_document(routes(svc), svc)
    assert served(app) == documented(doc)
    assert {("GET", "/metrics"), ("POST", "/agents/{agent_id}/wrap-up")} <= documented(doc)
    assert len(served(app)) == len(routes(svc)) == 22


def test_metrics_path_follows_the_configuration(tmp_path: Path) -> None:
    moved = services(tmp_path / "a", metrics='path = "/prom"')
    assert ("GET", "/prom") in documented(openapi_document(routes(moved), moved))
    assert served(build_app(moved)) == documented(openapi_document(routes(moved), moved))
    off = services(tmp_path / "b", metrics="enabled = false")
    doc = openapi_document(routes(off), off)
    assert not any("metrics" in path for _, path in documented(doc))
    assert served(build_app(off)) == documented(doc)


@pytest.mark.parametrize(("method", "path", "model"), [
    ("post", "/agents/{agent_id}/login", AgentLogin),
    ("post", "/agents/{agent_id}/pause", AgentPause),
    ("post", "/agents/{agent_id}/wrap-up", WrapUpDone),
    ("post", "/dnc", DncAdd),
])
def test_request_schemas_are_the_models(svc: Services, method: str, path: str, model: Any) -> None:
    doc = openapi_document(routes(svc), svc)
    body = doc["paths"][path][method]["requestBody"]
    assert body["required"] is True
    schema = resolve(doc, body["content"]["application/json"]["schema"]["$ref"])
    expected = model.model_json_schema(ref_template=REF, mode="validation")
    expected.pop("$defs", None)
    assert schema == expected
    assert schema["additionalProperties"] is False  # unknown keys are refused, and documented so
    assert "400" in doc["paths"][path][method]["responses"]


@pytest.mark.parametrize(("method", "path", "model"), [
    ("get", "/dnc/{number}", DncQuery),
    ("delete", "/dnc/{number}", DncQuery),
    ("post", "/campaigns/{name}/leads", LeadImportQuery),
])
def test_query_parameters_are_the_models(svc: Services, method: str, path: str, model: Any) -> None:
    doc = openapi_document(routes(svc), svc)
    params = doc["paths"][path][method]["parameters"]
    query = {p["name"]: p for p in params if p["in"] == "query"}
    assert set(query) == set(model.model_fields)
    for name, field in model.model_fields.items():
        assert query[name]["required"] is field.is_required()
    path_params = [p["name"] for p in params if p["in"] == "path"]
    assert path_params == [path.split("{")[1].split("}")[0]]


def test_the_csv_upload_is_documented_as_text_csv(svc: Services) -> None:
    op = openapi_document(routes(svc), svc)["paths"]["/campaigns/{name}/leads"]["post"]
    assert list(op["requestBody"]["content"]) == ["text/csv"]
    assert {"400", "401", "404", "413"} <= set(op["responses"])


def test_every_reference_resolves_and_errors_share_one_schema(svc: Services) -> None:
    doc = openapi_document(routes(svc), svc)
    assert doc["openapi"] == "3.1.0"
    for ref in refs(doc):
        resolve(doc, ref)
    error = resolve(doc, "#/components/schemas/ErrorOut")
    assert error["required"] == ["error_id", "message", "details"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["operationId"] and op["summary"], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    assert response["content"]["application/json"]["schema"] == {"$ref": REF.format(
                        model="ErrorOut")}, (method, path, status)


def test_security_follows_the_open_route_settings(tmp_path: Path) -> None:
    default = services(tmp_path / "a")
    doc = openapi_document(routes(default), default)
    open_ops = {(m.upper(), p) for p, ops in doc["paths"].items()
                for m, op in ops.items() if op["security"] == []}
    assert open_ops == {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "401" in doc["paths"]["/agents"]["get"]["responses"]
    assert "401" not in doc["paths"]["/healthz"]["get"]["responses"]
    closed = services(tmp_path / "b", api="healthz_require_token = true\nmetrics_require_token = true")
    doc = openapi_document(routes(closed), closed)
    assert all(op["security"] == [{"bearer": []}] for ops in doc["paths"].values() for op in ops.values())
