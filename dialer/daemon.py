"""The daemon: one node of the dialer, owning engine, telephony, API server and reload in one TaskGroup.

Signals only set events. SIGTERM/SIGINT: stop placing calls, let connected calls finish for
`drain_timeout_s`, hang up and record the rest, exit 0. SIGHUP: re-read every config file; a valid
new config applies from the next tick without dropping calls, an invalid one is rejected (logged,
counted) and the old one keeps running. systemd `Type=notify` readiness and watchdog are sent when
`NOTIFY_SOCKET` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, disable_created_metrics
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from dialer.agent_registry import AgentRegistry
from dialer.agents import AgentPool
from dialer.compliance.abandon import AbandonProtection, RedisAbandonLedger
from dialer.compliance.checker import ComplianceGate
from dialer.compliance.dnc import DncLists, OptOutRecorder, registry_status
from dialer.compliance.rules import DEFAULT_REGISTRIES, abandon_policy
from dialer.config import CampaignConfig, DaemonConfig, RedisSettings, load_all
from dialer.engine import Engine
from dialer.errors import ConfigError
from dialer.leads_redis import RedisLeadStore
from dialer.logging import configure_logging
from dialer.metrics import DialerMetrics
from dialer.outcomes import AgentState
from dialer.sim.scenario import load_scenario
from dialer.sim.world import SimTelephony
from dialer.telephony import Telephony
from sip.pool import SipPool

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_SOFTWARE = 70  # sysexits EX_SOFTWARE: an internal error stopped the daemon
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a required service (the SIP pool) could not start
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is invalid; systemd should not restart in a loop


def notify(message: str) -> bool:
    """Send one sd_notify message (READY=1, STOPPING=1, WATCHDOG=1, STATUS=...) if under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=str(exc))
            return False
    return True


GATE_REDIS_RETRIES = 2
"""Retries of a failed command on the gate/DNC/abandon client: few, so the gate closes fast."""
LEADS_REDIS_RETRIES = 8
"""Retries on the lead/agent client: back-off 0.05 s doubling to 1 s rides out a ~5 s Redis restart,
so a call that ends meanwhile still gets its own record instead of a lease-expiry one."""

REDIS_MAX_CONNECTIONS = 64
"""Connections per client (a node has two); more concurrent commands queue for a free one."""
REDIS_POOL_WAIT_S = 10.0
"""Longest a command waits for a free connection before it fails."""

API_SHUTDOWN_S = 2.0
"""How long an API request still running at the end of a shutdown may take before it is cut off."""
SHUTDOWN_STALL_S = 5.0
"""A shutdown still running this long after the drain timeout logs where every task waits."""

LEAD_LEASE_ENV = "DIALER_LEAD_LEASE_S"
AGENT_LEASE_ENV = "DIALER_AGENT_LEASE_S"
"""Lease lengths (seconds) of lead claims (default 60) and agent sessions (default 15): how long a
dead node's leads and agents stay with it. Short values suit tests and tight fail-over needs."""


def lease_from_env(environ: Mapping[str, str], name: str, default: float) -> float:
    """A lease length in seconds from environment variable `name`, or `default` when unset."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.5 <= value <= 3600:
        raise ConfigError([f"${name}: expected seconds between 0.5 and 3600, got {raw!r}"])
    return value


def log_stalled_shutdown(loop: asyncio.AbstractEventLoop, waited_s: float) -> None:
    """Log each task still pending and the line it waits on: why a shutdown is not finishing."""
    tasks = []
    for task in asyncio.all_tasks(loop):
        where = []
        # Task.get_stack() stops at the outermost coroutine: follow what each one awaits instead.
        awaiting: Any = task.get_coro()
        while (f := getattr(awaiting, "cr_frame", None) or getattr(awaiting, "gi_frame", None)) is not None:
            where.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}")
            awaiting = getattr(awaiting, "cr_await", None) or getattr(awaiting, "gi_yieldfrom", None)
        tasks.append({"task": task.get_name(), "at": where})
    log.error("shutdown_stalled", waited_s=waited_s, tasks=sorted(tasks, key=lambda t: str(t["task"])))


def node_call_ids(node_id: str, clock: Callable[[], float]) -> Callable[[], str]:
    """Call ids unique across the cluster: nodes started together would otherwise mint the same ones
    (a per-process counter and the millisecond), and CDRs of two calls would share an id."""
    counter = itertools.count(1)
    return lambda: f"{node_id}-{next(counter)}-{int(clock() * 1000)}"


def redis_client(settings: RedisSettings, *, decode_responses: bool = False,
                 retries: int = GATE_REDIS_RETRIES) -> aioredis.Redis:
    """A client for the configured Redis, through Sentinel when sentinels are listed.

    A command that fails on a broken connection is retried `retries` times on a fresh one, with
    exponential back-off (0.05 s doubling to 1 s), so a Redis restart or fail-over is ridden out
    without a storm of reconnects; what still fails raises and, in the gate, blocks the dial.
    """
    password = settings.password.get_secret_value() if settings.password else None
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_connect_timeout_s,
        "health_check_interval": settings.health_check_interval_s,
        "retry_on_timeout": False,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
    }
    if settings.sentinels:
        from redis.asyncio.sentinel import Sentinel

        hosts = [(a.rsplit(":", 1)[0].strip("[]"), int(a.rsplit(":", 1)[1])) for a in settings.sentinels]
        sentinel_kwargs = {}
        if settings.sentinel_password is not None:
            sentinel_kwargs["password"] = settings.sentinel_password.get_secret_value()
        # redis-py's Sentinel constructor is not annotated.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs=sentinel_kwargs, password=password, **common
        )
        client: aioredis.Redis = sentinel.master_for(settings.sentinel_master)
        return client
    kwargs = dict(common)
    if password is not None:
        kwargs["password"] = password
    # A bounded pool that makes a burst wait for a free connection: redis-py's default pool raises
    # MaxConnectionsError beyond 100 concurrent commands, which a node with hundreds of agents reaches
    # when many calls end at once (bench/scale.py) and which would lose those calls' records.
    pool = BlockingConnectionPool.from_url(settings.url, max_connections=REDIS_MAX_CONNECTIONS,
                                           timeout=REDIS_POOL_WAIT_S, **kwargs)
    return aioredis.Redis.from_pool(pool)


@dataclass
class Services:
    """Everything a running node is made of; the API and the reload act on these."""

    config_path: Path
    config: DaemonConfig
    campaigns: dict[str, CampaignConfig]
    registry: CollectorRegistry
    metrics: DialerMetrics
    redis: aioredis.Redis
    agents: AgentPool
    leads: RedisLeadStore
    gate: ComplianceGate
    dnc: DncLists
    ledger: RedisAbandonLedger
    engine: Engine
    telephony: Telephony
    agent_registry: AgentRegistry | None = None
    started_at: float = field(default_factory=time.time)
    redis_ok: bool = False
    reload_count: int = 0

    def telephony_ready(self) -> bool:
        """True when the telephony back end can place calls (at least one SIP worker up)."""
        if isinstance(self.telephony, SipPool):
            return self.telephony.workers_up() > 0
        return True


async def open_telephony(config: DaemonConfig, simulate: Path | None, clock: Callable[[], float],
                         seed: int) -> tuple[Telephony, Callable[[], Any]]:
    """The telephony back end and its closer: the SIP worker pool, or a simulated world in real time."""
    if simulate is not None:
        scenario = load_scenario(simulate)
        world = SimTelephony(scenario, random.Random(seed), clock, simulate.parent)

        async def close_world() -> None:
            return None

        return world, close_world
    pool = SipPool(config.sip, clock=clock)
    await pool.open()
    return pool, pool.close


def lab_clock(start: datetime, config: DaemonConfig, simulated: bool) -> Callable[[], float]:
    """A wall clock that starts at `start` and runs at real speed: for demos and tests at any hour.

    Calling hours are the law; moving the clock moves them. So this is refused unless no real call
    can be placed: the telephony is simulated, or the SIP trunk is on the loopback network.
    """
    host = urlsplit(config.sip.trunk_uri.replace("sip:", "sip://", 1)).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not (simulated or loopback):
        raise ConfigError([f"--clock-start: refused with a trunk beyond loopback ({config.sip.trunk_uri}); "
                           "it is for simulations and lab trunks on 127.0.0.0/8 only"])
    offset = start.timestamp() - time.time()
    log.warning("lab_clock", start=start.isoformat(), offset_s=round(offset, 3))
    return lambda: time.time() + offset


class Daemon:
    """One dialer node. `await Daemon(path).run()` returns the process exit code."""

    def __init__(self, config_path: Path, *, simulate: Path | None = None, sim_agents: int = 0,
                 seed: int = 1, env: Mapping[str, str] | None = None,
                 clock_start: datetime | None = None) -> None:
        """`clock_start` runs the node's wall clock from that instant (lab use: see `lab_clock`)."""
        self.config_path = config_path
        self.clock_start = clock_start
        self.simulate = simulate
        self.sim_agents = sim_agents
        self.seed = seed
        self.env = env
        self.services: Services | None = None
        self.api_port: int | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.started = asyncio.Event()
        self._seen_starts = self._seen_restarts = 0

    def request_stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration (what SIGHUP does)."""
        self._reload.set()

    async def run(self) -> int:
        """Run until stopped; returns the exit code."""
        try:
            config, campaigns = load_all(self.config_path, self.env)
        except ConfigError as exc:
            configure_logging("info", None)
            log.error("config_invalid", path=str(self.config_path), problems=exc.problems)
            return EXIT_CONFIG
        configure_logging(config.logging.level, config.logging.json_lines)
        # Compiled pacing code is loaded (compiled, on a fresh install) now, while nothing is running
        # yet, not on the first pacing tick of a campaign that has calls to look after.
        from dialer.pacing import kernels  # numba: only a daemon, not every `dialer` command, loads it

        started = time.perf_counter()
        kernels.warm_up()
        log.info("pacing_kernels_ready", seconds=round(time.perf_counter() - started, 3))
        try:
            return await self._run(config, campaigns)
        except ConfigError as exc:
            log.error("config_invalid", path=str(self.config_path), problems=exc.problems)
            return EXIT_CONFIG
        except Exception:
            log.exception("daemon_failed")
            return EXIT_SOFTWARE

    async def _run(self, config: DaemonConfig, campaigns: dict[str, CampaignConfig]) -> int:
        loop = asyncio.get_running_loop()
        clock = time.time
        if self.clock_start is not None:
            clock = lab_clock(self.clock_start, config, self.simulate is not None)
        if not config.metrics.created_series:
            # The *_created series are mostly noise on a dashboard (prometheus-client: unannotated).
            disable_created_metrics()  # type: ignore[no-untyped-call]
        registry = CollectorRegistry()
        metrics = DialerMetrics(registry, clock=clock)
        redis = redis_client(config.redis)
        # The lead store works on decoded strings; the DNC bitmaps on bytes: one client each.
        leads_redis = redis_client(config.redis, decode_responses=True, retries=LEADS_REDIS_RETRIES)
        environ = os.environ if self.env is None else self.env
        lead_lease_s = lease_from_env(environ, LEAD_LEASE_ENV, config.cluster.lead_lease_s)
        agent_lease_s = lease_from_env(environ, AGENT_LEASE_ENV, config.cluster.agent_lease_s)
        try:
            telephony, close_telephony = await open_telephony(config, self.simulate, clock, self.seed)
        except Exception as exc:
            log.error("telephony_unavailable", error=str(exc))
            await redis.aclose()
            await leads_redis.aclose()
            return EXIT_UNAVAILABLE
        agents = AgentPool(clock)
        leads = RedisLeadStore(leads_redis, node_id=config.node_id, lease_s=lead_lease_s)
        gate = ComplianceGate(redis, campaigns)
        dnc = DncLists(redis)
        ledger = RedisAbandonLedger(redis, {name: abandon_policy(c) for name, c in campaigns.items()})
        engine = Engine(campaigns, agents=agents, leads=leads, gate=gate, telephony=telephony, abandon=ledger,
                        opt_out=OptOutRecorder(dnc), protection=AbandonProtection(redis), clock=clock,
                        metrics=metrics,
                        call_ids=node_call_ids(leads.node_id, clock))
        svc = Services(self.config_path, config, campaigns, registry, metrics, redis, agents, leads, gate,
                       dnc, ledger, engine, telephony)
        svc.agent_registry = AgentRegistry(leads_redis, agents, node_id=leads.node_id, lease_s=agent_lease_s,
                                           finish_wrap_up=engine.finish_wrap_up)
        self.services = svc
        if isinstance(telephony, SimTelephony):  # a simulated world plays the agents' after-call work
            telephony.on_wrap_up_done = engine.finish_wrap_up
        for i in range(self.sim_agents):
            pool_name = next(iter(campaigns.values())).agent_pool if campaigns else "default"
            agents.add(f"sim{i:03d}", f"sip:sim{i:03d}@127.0.0.1", pool_name)
            agents.transition(f"sim{i:03d}", AgentState.READY)

        for sig, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                             (signal.SIGHUP, self.request_reload)):
            loop.add_signal_handler(sig, handler)
        runner = web.AppRunner(self._app(svc), handle_signals=False, access_log=None,
                               shutdown_timeout=API_SHUTDOWN_S)
        await runner.setup()
        site = web.TCPSite(runner, config.api.host, config.api.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.api_port = sockets[0].getsockname()[1] if sockets else config.api.port
        log.info("daemon_started", api=f"{config.api.host}:{self.api_port}", campaigns=sorted(campaigns),
                 redis=config.redis.redacted_url, telephony="sim" if self.simulate else "sip")
        stop_maintenance = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                engine_task = tg.create_task(engine.run(), name="engine")
                tg.create_task(leads.maintain(stop_maintenance), name="lead-leases")
                tg.create_task(svc.agent_registry.run(stop_maintenance), name="agent-registry")
                tg.create_task(self._health(svc, stop_maintenance), name="health")
                reload = tg.create_task(self._reload_loop(svc), name="reload")
                notify("READY=1")
                try:
                    self.started.set()
                    await self._stop.wait()
                    notify("STOPPING=1")
                    # Not cancelled: it also covers what asyncio.run() awaits after this returns.
                    stall_s = config.drain_timeout_s + SHUTDOWN_STALL_S
                    loop.call_later(stall_s, log_stalled_shutdown, loop, stall_s)
                    log.info("daemon_draining", timeout_s=config.drain_timeout_s, calls=engine.active_calls)
                    hung_up = await engine.drain(config.drain_timeout_s)
                    log.info("daemon_drained", hung_up=hung_up)
                    engine.stop()
                    await engine_task
                finally:
                    # The loops that talk to Redis end on this event, not by cancellation: on Python
                    # 3.11 a cancel landing in redis-py's socket write (asyncio.wait_for, as the write
                    # completes) is swallowed, and the task group would wait for them forever.
                    stop_maintenance.set()
                    reload.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await runner.cleanup()
            await asyncio.shield(close_telephony())
            await redis.aclose()
            await leads_redis.aclose()
        log.info("daemon_stopped")
        return EXIT_OK

    def _app(self, svc: Services) -> web.Application:
        from dialer.api import build_app

        return build_app(svc)

    async def _health(self, svc: Services, stop: asyncio.Event) -> None:
        """Redis health for /readyz and dialer_redis_up; systemd watchdog pings. Until `stop` is set."""
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        interval = min(svc.config.redis.health_check_interval_s,
                       watchdog_usec / 2e6 if watchdog_usec else float("inf"))
        while not stop.is_set():
            try:
                svc.redis_ok = bool(await svc.redis.ping())
            except Exception as exc:
                if svc.redis_ok:
                    log.error("redis_unreachable", error=str(exc))
                svc.redis_ok = False
            svc.metrics.redis_up.set(1 if svc.redis_ok else 0)
            self._publish_sip(svc)
            if svc.redis_ok:
                await self._publish_dnc_ages(svc)
            if watchdog_usec:
                notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    def _publish_sip(self, svc: Services) -> None:
        """SIP pool gauges and worker start/restart counters (as deltas of the pool's own counts)."""
        pool = svc.telephony
        if not isinstance(pool, SipPool):
            return
        used, free = pool.slots()
        svc.metrics.set_sip_slots(used=used, free=free)
        svc.metrics.sip_workers_up.set(pool.workers_up())
        restarts = pool.restarts - self._seen_restarts
        firsts = (pool.starts - self._seen_starts) - restarts
        for _ in range(max(firsts, 0)):
            svc.metrics.record_worker_start(restart=False)
        for _ in range(max(restarts, 0)):
            svc.metrics.record_worker_start(restart=True)
        self._seen_starts, self._seen_restarts = pool.starts, pool.restarts

    @staticmethod
    async def _publish_dnc_ages(svc: Services) -> None:
        """Feed dialer_dnc_list_age_seconds: per registry, the as-of date of its oldest loaded copy."""
        names = {n for regs in DEFAULT_REGISTRIES.values() for n in regs}
        for campaign in svc.campaigns.values():
            names.update(n for regs in campaign.dnc.registries.values() for n in regs)
        for name in sorted(names):
            try:
                copies = await registry_status(svc.redis, name)
            except Exception as exc:
                log.warning("dnc_status_failed", registry=name, error=str(exc))
                continue
            if copies:
                oldest = min(c.as_of for c in copies)
                as_of = datetime.combine(oldest, datetime.min.time(), tzinfo=UTC).timestamp()
                svc.metrics.set_dnc_loaded(name, as_of)

    async def _reload_loop(self, svc: Services) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            self.reload(svc)

    def reload(self, svc: Services) -> bool:
        """Apply the configuration on disk if it is valid; keep the running one otherwise."""
        try:
            config, campaigns = load_all(self.config_path, self.env)
        except ConfigError as exc:
            svc.metrics.record_reload(ok=False)
            log.error("config_reload_rejected", problems=exc.problems)
            return False
        try:
            svc.engine.reconfigure(campaigns)
            svc.gate.set_campaigns(campaigns)
            svc.ledger.windows = {name: abandon_policy(c) for name, c in campaigns.items()}
        except Exception as exc:  # e.g. two campaigns on one pool: keep the old configuration
            svc.metrics.record_reload(ok=False)
            log.error("config_reload_rejected", problems=[str(exc)])
            return False
        restart_keys = [k for k in ("redis", "sip", "api", "node_id")
                        if getattr(config, k) != getattr(svc.config, k)]
        if restart_keys:
            log.warning("config_restart_required", keys=restart_keys)
        svc.campaigns = campaigns
        svc.reload_count += 1
        svc.metrics.record_reload(ok=True)
        log.info("config_reloaded", campaigns=sorted(campaigns))
        return True
