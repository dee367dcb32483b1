"""Scale-out benchmark: several dialer nodes on one real Redis, for a simulated hour.

What runs: `--nodes` engines (3), each with `--agents` simulated agents (500) logged in through its own
`AgentRegistry`, its own Redis clients, `RedisLeadStore` (leased claims, renewals, reaper), the real
`ComplianceGate` and `RedisAbandonLedger`, and its own simulated world (`dialer.sim.world`, the warm
scenario by default), all against one real redis-server started here.

How time works (read this before quoting the numbers): the daemon's simulated world runs in real time,
so an hour of 1,500 agents cannot be replayed at 1:1 here. The nodes instead share ONE process and ONE
event loop in virtual time (as `dialer simulate` does), with a twist that keeps the Redis traffic real:
the loop's clock stands still while any Redis command is in flight (the loop then waits for the real
socket) and jumps to the next timer only when nothing is waiting on Redis. So every claim, gate lookup,
completion, lease renewal, reap, abandon-ledger update and agent-state mirror really goes to Redis, in
the order and number a real 3-node cluster would send them, while talk and ring times cost no wall
time. Redis round trips take zero virtual time (their real cost shows in the wall-clock figures), and
the three nodes share one CPU core here where production gives each its own host.

Reported: claims per simulated second and per wall second, Redis commands per simulated second and per
wall second (INFO stats), engine tick wall time (p50/p99/max, including the tick's Redis round trips
and whatever other node's work the shared loop interleaved), and Redis memory per 1M leads (fresh
after import, and per 1M attempts with their history and CDR entries).

    python -m bench.scale            # 3 nodes x 500 agents x 1 simulated hour
    python -m bench.scale --quick    # 3 nodes x 100 agents x 10 simulated minutes (< 2 min)

Writes bench/results/scale.json and bench/results/scale.md, and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import selectors
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import BlockingConnectionPool

from dialer.agent_registry import AgentRegistry
from dialer.agents import AgentPool
from dialer.compliance.abandon import RedisAbandonLedger
from dialer.compliance.checker import ComplianceGate
from dialer.compliance.hours import check_hours
from dialer.compliance.numbers import classify
from dialer.compliance.rules import abandon_policy
from dialer.config import CampaignConfig
from dialer.daemon import REDIS_MAX_CONNECTIONS
from dialer.engine import CampaignRuntime, Engine
from dialer.leads import Lead
from dialer.leads_redis import RedisLeadStore
from dialer.logging import configure_logging
from dialer.metrics import DialerMetrics
from dialer.sim.run import SIM_EPOCH, campaign_for
from dialer.sim.scenario import load_scenario
from dialer.sim.world import SimTelephony
from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CAMPAIGN = "scale"
NUMBER_PREFIX = "+44207"
"""London numbers (+44 20 7xxx xxxx, 10M of them): inside UK calling hours at the simulation's start
(10:00 UTC on a Wednesday) and for the hours after."""
BLOCKING = frozenset({"XREAD", "BLPOP", "XREADGROUP", "BRPOP", "BZPOPMIN"})
"""Commands that wait on the server by design (the agent inbox): not work in flight."""


# Virtual time that waits for real Redis --------------------------------------------------------------


class InFlight:
    """How many Redis commands (or pipelines) are awaiting their reply, across every client."""

    count = 0
    round_trips = 0  # commands and pipelines sent, since the start


class CountingPipeline(Pipeline):
    """A pipeline whose execution counts as one command in flight."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        InFlight.count += 1
        InFlight.round_trips += 1
        try:
            return await super().execute(raise_on_error)
        finally:
            InFlight.count -= 1


class CountingRedis(aioredis.Redis):
    """A client that tells the loop when it is waiting for Redis."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        # redis-py leaves execute_command unannotated.
        if str(args[0]).upper() in BLOCKING:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        InFlight.count += 1
        InFlight.round_trips += 1
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        finally:
            InFlight.count -= 1

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class _HybridSelector(selectors.DefaultSelector):
    def __init__(self, loop: HybridTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
        if ready or timeout == 0:
            return ready
        if InFlight.count > 0 or timeout is None:
            # Someone waits for Redis (or only blocking reads remain): wait for the real socket
            # without moving the clock.
            waited: list[tuple[selectors.SelectorKey, int]] = super().select(0.05)
            return waited
        self._loop.advance(timeout)
        return []


class HybridTimeLoop(asyncio.SelectorEventLoop):
    """Virtual time, except that it stands still while a Redis command is in flight."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_HybridSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock to the next timer (nothing is waiting on Redis)."""
        self._virtual_now += seconds


# One node --------------------------------------------------------------------------------------


class TimedEngine(Engine):
    """The engine, with the wall time of every pacing tick recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tick_s: list[float] = []

    async def tick(self, rt: CampaignRuntime) -> int:
        started = time.perf_counter()
        try:
            return await super().tick(rt)
        finally:
            self.tick_s.append(time.perf_counter() - started)


class CountingStore(RedisLeadStore):
    """The lead store, counting claims."""

    claim_calls = 0
    claimed = 0

    async def claim(self, campaign: str, count: int, now: float) -> list[Lead]:
        leads = await super().claim(campaign, count, now)
        if count > 0:
            CountingStore.claim_calls += 1
            CountingStore.claimed += len(leads)
        return leads


@dataclass
class Node:
    """One simulated node and what it is made of."""

    name: str
    engine: TimedEngine
    pool: AgentPool
    world: SimTelephony
    registry: AgentRegistry
    store: CountingStore
    clients: list[aioredis.Redis] = field(default_factory=list)


def node_client(url: str, *, decode_responses: bool = False) -> CountingRedis:
    """A node's client, pooled as the daemon's are (`dialer.daemon.redis_client`). No socket timeout:
    a blocking read runs in real time while the virtual clock races ahead."""
    pool = BlockingConnectionPool.from_url(url, max_connections=REDIS_MAX_CONNECTIONS, timeout=None,
                                           decode_responses=decode_responses, socket_timeout=None)
    client = CountingRedis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too, as from_pool would
    return client


def campaign_config(scenario_path: Path, policy: str) -> CampaignConfig:
    base = campaign_for(load_scenario(scenario_path), policy, {})
    data = base.model_dump()
    data.update(name=CAMPAIGN, agent_pool=CAMPAIGN, rule_pack="uk",
                dnc={"registries": {"GB": []}})  # no registry copy is loaded in the benchmark
    return CampaignConfig.model_validate(data)


def lead_rows(n: int) -> Iterator[bytes]:
    yield b"number,first_name,account\n"
    for i in range(n):
        yield f"{NUMBER_PREFIX}{i:07d},First{i % 997},ACC-{i:08d}\n".encode()


async def used_memory(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("memory")
    return int(info["used_memory"])


async def attempt_memory(client: aioredis.Redis, attempts: int, sample: int = 400) -> float:
    """Bytes per attempt: the CDR stream plus the attempt-history lists (sampled), per attempt.

    Measured with MEMORY USAGE on the keys themselves, so allocator slack and fixed overheads (scripts,
    client buffers, agent hashes) do not count; the overall used_memory figure is reported beside it.
    """
    if not attempts:
        return 0.0
    cdr = int(await client.memory_usage(f"dialer:{{{CAMPAIGN}}}:cdr", samples=0) or 0)
    keys: list[str] = []
    async for key in client.scan_iter(match=f"dialer:{{{CAMPAIGN}}}:hist:*", count=1000):
        keys.append(str(key))
    picked = random.Random(0).sample(keys, min(sample, len(keys)))
    sizes = [int(await client.memory_usage(k, samples=0) or 0) for k in picked]
    hist = statistics.fmean(sizes) * len(keys) if sizes else 0.0
    return (cdr + hist) / attempts


async def commands_processed(client: aioredis.Redis) -> int:
    info: dict[str, Any] = await client.info("stats")
    return int(info["total_commands_processed"])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def simulate(url: str, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()

    def clock() -> float:
        return SIM_EPOCH + loop.time()

    campaign = campaign_config(args.scenario, args.policy)
    sample = classify(f"{NUMBER_PREFIX}0000000")
    for dt in (0.0, args.hours * 3600.0):
        assert check_hours(campaign, sample, SIM_EPOCH + dt).reason is None, "numbers outside calling hours"
    scenario = load_scenario(args.scenario)
    admin = CountingRedis.from_url(url, decode_responses=True)
    mem_empty = await used_memory(admin)
    importer = RedisLeadStore(admin, node_id="importer")
    t0 = time.perf_counter()
    report = await importer.import_csv(CAMPAIGN, lead_rows(args.leads), default_region="GB", due_at=SIM_EPOCH)
    import_s = time.perf_counter() - t0
    assert report.imported == args.leads and report.rejected == 0, report.errors[:3]
    mem_imported = await used_memory(admin)

    nodes: list[Node] = []
    for i in range(args.nodes):
        name = f"node{i + 1}"
        text, raw = node_client(url, decode_responses=True), node_client(url)
        pool = AgentPool(clock)
        world = SimTelephony(scenario, random.Random(args.seed + i), clock, args.scenario.parent)
        store = CountingStore(text, node_id=name, lease_s=60.0)
        gate = ComplianceGate(raw, {CAMPAIGN: campaign})
        ledger = RedisAbandonLedger(raw, {CAMPAIGN: abandon_policy(campaign)})
        metrics = DialerMetrics(CollectorRegistry(), clock=clock)
        engine = TimedEngine({CAMPAIGN: campaign}, agents=pool, leads=store, gate=gate, telephony=world,
                             abandon=ledger, clock=clock, metrics=metrics,
                             call_ids=_call_ids(name))
        world.on_wrap_up_done = engine.finish_wrap_up
        registry = AgentRegistry(text, pool, node_id=name, finish_wrap_up=engine.finish_wrap_up)
        nodes.append(Node(name, engine, pool, world, registry, store, [text, raw]))

    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    login0 = time.perf_counter()
    for node in nodes:
        tasks.append(loop.create_task(node.registry.run(stop)))
        tasks.append(loop.create_task(node.store.maintain(stop)))
        for a in range(args.agents):  # agents log in through the registry: their node owns them
            await node.registry.login(f"{node.name}-a{a:04d}", f"sip:{node.name}-a{a:04d}@sim", CAMPAIGN)
    login_wall_s = time.perf_counter() - login0
    mem_ready = await used_memory(admin)  # leads imported, agents logged in
    await admin.config_resetstat()
    ops0 = await commands_processed(admin)
    trips0 = InFlight.round_trips
    wall0 = time.perf_counter()
    virtual0 = loop.time()
    for node in nodes:
        tasks.append(loop.create_task(node.engine.run()))
    await asyncio.sleep(args.hours * 3600.0)
    virtual_s = loop.time() - virtual0
    wall_s = time.perf_counter() - wall0
    ops = await commands_processed(admin) - ops0
    trips = InFlight.round_trips - trips0
    for node in nodes:
        node.engine.stop_dialing()
    for node in nodes:
        await node.engine.drain(5.0)
        node.engine.stop()
    stop.set()
    await asyncio.gather(*tasks)
    counts = await importer.counts(CAMPAIGN, clock())
    attempts = await admin.xlen(f"dialer:{{{CAMPAIGN}}}:cdr")
    mem_after = await used_memory(admin)
    attempt_bytes = await attempt_memory(admin, attempts)
    commandstats: dict[str, Any] = await admin.info("commandstats")
    for node in nodes:
        for client in node.clients:
            await client.aclose()
    await admin.aclose()

    ticks = [t for n in nodes for t in n.engine.tick_s]
    per_node: list[dict[str, Any]] = []
    for node in nodes:
        stats = node.engine.campaigns[CAMPAIGN].stats
        per_node.append({"node": node.name, "dials": stats.dials, "live_answers": stats.live_answers,
                         "connected": stats.connected, "abandons": stats.abandons, "ticks": stats.ticks,
                         "tick_p99_ms": round(percentile(node.engine.tick_s, 0.99) * 1000, 2)})
    dials = sum(p["dials"] for p in per_node)
    live = sum(p["live_answers"] for p in per_node)
    lead_bytes = (mem_imported - mem_empty) / args.leads
    overall_attempt_bytes = (mem_after - mem_ready) / attempts if attempts else 0.0
    top = sorted(((k.removeprefix("cmdstat_"), int(v["calls"])) for k, v in commandstats.items()),
                 key=lambda kv: -kv[1])[:10]
    return {
        "nodes": args.nodes, "agents_per_node": args.agents, "simulated_hours": args.hours,
        "scenario": scenario.name, "policy": campaign.pacing.policy, "leads_imported": args.leads,
        "import_rows_per_s": round(args.leads / import_s),
        "wall_s": round(wall_s, 1), "login_wall_s": round(login_wall_s, 2),
        "speed_x_real_time": round(virtual_s / wall_s, 1),
        "dials": dials, "live_answers": live,
        "abandons": sum(p["abandons"] for p in per_node),
        "claims": CountingStore.claimed, "claim_calls": CountingStore.claim_calls,
        "claims_per_sim_s": round(CountingStore.claimed / virtual_s, 2),
        "claims_per_wall_s": round(CountingStore.claimed / wall_s, 1),
        "redis_commands": ops,
        "redis_ops_per_sim_s": round(ops / virtual_s, 1),
        "redis_ops_per_wall_s": round(ops / wall_s),
        "redis_ops_per_dial": round(ops / dials, 1) if dials else None,
        "client_round_trips": trips,
        "round_trips_per_sim_s": round(trips / virtual_s, 1),
        "round_trips_per_dial": round(trips / dials, 1) if dials else None,
        "tick_count": len(ticks),
        "tick_p50_ms": round(percentile(ticks, 0.50) * 1000, 2),
        "tick_p99_ms": round(percentile(ticks, 0.99) * 1000, 2),
        "tick_max_ms": round(max(ticks, default=0.0) * 1000, 2),
        "tick_mean_ms": round(statistics.fmean(ticks) * 1000, 2) if ticks else 0.0,
        "redis_mb_per_1m_leads_imported": round(lead_bytes * 1e6 / 2**20),
        "redis_mb_per_1m_attempts": round(attempt_bytes * 1e6 / 2**20),
        "redis_mb_per_1m_attempts_incl_overhead": round(overall_attempt_bytes * 1e6 / 2**20),
        "leads_left": {"due": counts.due, "scheduled": counts.scheduled, "leased": counts.leased,
                       "done": counts.done},
        "per_node": per_node,
        "redis_top_commands": dict(top),
        "python": platform.python_version(), "machine": platform.machine(),
    }


def _call_ids(node: str) -> Any:
    counter = iter(range(1, 1 << 62))
    return lambda: f"{node}-{next(counter)}"


def table(r: dict[str, Any]) -> str:
    rows = [
        ("nodes x agents", f"{r['nodes']} x {r['agents_per_node']}"),
        ("simulated time", f"{r['simulated_hours']:.3g} h ({r['scenario']}, {r['policy']})"),
        ("wall time", f"{r['wall_s']} s ({r['speed_x_real_time']}x real time)"),
        ("dials / live answers / abandons", f"{r['dials']} / {r['live_answers']} / {r['abandons']}"),
        ("claims per simulated s", f"{r['claims_per_sim_s']}"),
        ("claims per wall s", f"{r['claims_per_wall_s']}"),
        ("Redis ops per simulated s", f"{r['redis_ops_per_sim_s']}"),
        ("Redis ops per wall s", f"{r['redis_ops_per_wall_s']}"),
        ("Redis ops per dial (incl. inside Lua)", f"{r['redis_ops_per_dial']}"),
        ("client round trips per simulated s", f"{r['round_trips_per_sim_s']}"),
        ("client round trips per dial", f"{r['round_trips_per_dial']}"),
        ("engine tick p50 / p99 / max", f"{r['tick_p50_ms']} / {r['tick_p99_ms']} / {r['tick_max_ms']} ms"
                                        f" ({r['tick_count']} ticks)"),
        ("Redis MB per 1M leads (imported)", f"{r['redis_mb_per_1m_leads_imported']}"),
        ("Redis MB per 1M attempts (history+CDR)", f"{r['redis_mb_per_1m_attempts']}"
                                                    f" ({r['redis_mb_per_1m_attempts_incl_overhead']} with"
                                                    " all overheads)"),
        ("lead import", f"{r['import_rows_per_s']} rows/s"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="3 x 100 agents for 10 simulated minutes")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--agents", type=int, default=None, help="agents per node (500; --quick: 100)")
    p.add_argument("--hours", type=float, default=None, help="simulated hours (1; --quick: 1/6)")
    p.add_argument("--leads", type=int, default=None, help="leads imported (enough for the run)")
    p.add_argument("--scenario", type=Path, default=ROOT / "config" / "scenarios" / "warm.toml")
    p.add_argument("--policy", default="predictive")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/scale.json)")
    args = p.parse_args(argv)
    args.agents = args.agents or (100 if args.quick else 500)
    args.hours = args.hours or (1 / 6 if args.quick else 1.0)
    args.leads = args.leads or int(args.nodes * args.agents * args.hours * 90) + 1000
    configure_logging("warning", False)
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            with asyncio.Runner(loop_factory=HybridTimeLoop) as runner:
                result = runner.run(simulate(server.url, args))
        finally:
            server.stop()
    result["quick"] = args.quick
    text = table(result)
    print(text)
    out = args.out or RESULTS / ("scale-quick.json" if args.quick else "scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.quick and args.out is None:
        (RESULTS / "scale.md").write_text(
            "# Scale-out benchmark (`python -m bench.scale`)\n\n"
            "One process, one virtual-time event loop, N engines sharing one real redis-server; the clock\n"
            "stands still while a Redis command is in flight (see the module docstring). Wall-clock\n"
            "figures are for all nodes on one core.\n\n" + text + "\n\nPer node: " +
            json.dumps(result["per_node"]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
