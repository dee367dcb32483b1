"""The HTTP API (aiohttp): health, readiness and metrics; agents, campaigns, DNC and leads routes."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dialer.daemon import Services

SERVICES = web.AppKey("services", Services)


def build_app(svc: Services) -> web.Application:
    """The aiohttp application serving `svc`."""
    app = web.Application(client_max_size=svc.config.api.max_body_bytes)
    app[SERVICES] = svc
    app.router.add_get("/healthz", healthz)
    if svc.config.metrics.enabled:
        app.router.add_get(svc.config.metrics.path, metrics)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process serves requests."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the node's registry."""
    svc = request.app[SERVICES]
    body = generate_latest(svc.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
