"""Scale-out and crash safety: several real daemon processes on one real redis-server.

Each node runs `python -m dialer run --simulate` (a simulated world in real time, the real engine,
gate, lead store and abandon ledger). The campaign's calls are short so a few hundred leads finish
in seconds. The checks read what the nodes left in Redis: every lead's attempt history and the CDR
stream. Also here: the agent registry across processes, and the gate closing while Redis is away.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from dialer.agent_registry import (
    AgentCommandError,
    AgentNotFoundError,
    AgentRegistry,
    AgentRegistryError,
    OwnerUnavailableError,
)
from dialer.agents import AgentError, AgentPool
from dialer.compliance.checker import ComplianceGate
from dialer.compliance.gate import Blocked, BlockReason, Clearance, DialCandidate
from dialer.compliance.hours import check_hours
from dialer.compliance.numbers import classify
from dialer.config import CampaignConfig, RedisSettings, load_campaign
from dialer.daemon import redis_client
from dialer.leads import AttemptRecord, lead_id_for
from dialer.leads_redis import CampaignCounts, RedisLeadStore
from dialer.outcomes import AgentState, Outcome
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = "scale"
LEAD_LEASE_S = 2.0
OUTAGE_S = 3.0
LEADS = 200
AGENTS = 15  # simulated agents per node
RULES = {Outcome.BUSY: (2, 1.0), Outcome.CONGESTION: (3, 0.5)}
"""The campaign's retry rules: outcome -> (max attempts, delay s). Every other outcome ends the lead."""

SCENARIO = """\
name = "scale-test"
description = "sub-second calls so a few hundred leads finish in seconds"
connect_s = 0.05
safe_harbor_s = 0.3
[outcomes]
live = 0.45
machine = 0.15
busy = 0.25
failed = 0.15
[ring]
live = { components = [ { weight = 1.0, mean_s = 0.4, sd_s = 0.1 } ], min_s = 0.1 }
machine = { components = [ { weight = 1.0, mean_s = 0.4, sd_s = 0.1 } ], min_s = 0.1 }
busy = { components = [ { weight = 1.0, mean_s = 0.3, sd_s = 0.1 } ], min_s = 0.1 }
failed = { components = [ { weight = 1.0, mean_s = 0.2, sd_s = 0.05 } ], min_s = 0.1 }
[talk]
distribution = "fixed"
mean_s = 0.6
[wrap]
distribution = "fixed"
mean_s = 0.1
[amd]
false_positive = 0.0
false_negative = 0.0
human_decision_s = { components = [ { weight = 1.0, mean_s = 0.05, sd_s = 0.0 } ] }
machine_decision_s = { components = [ { weight = 1.0, mean_s = 0.1, sd_s = 0.0 } ] }
machine_talk_s = 0.3
"""

# Numbers whose callee-local time must be inside the legal window (08:00-21:00) for the test to
# dial them; a campaign cannot widen it. One of these places is always in its daytime.
NUMBER_PLANS = [  # (E.164 prefix, digits to append)
    ("+1212736", 4),  # New York
    ("+1312555", 4),  # Chicago
    ("+1415555", 4),  # Los Angeles
    ("+1808234", 4),  # Honolulu
    ("+1671456", 4),  # Guam
    ("+6129876", 4),  # Sydney
    ("+8131234", 4),  # Tokyo
    ("+4930123", 5),  # Berlin
    ("+442079", 6),  # London
]


def campaign_toml() -> str:
    return textwrap.dedent(f"""\
        name = "{CAMPAIGN}"
        agent_pool = "{CAMPAIGN}"
        max_lines = 40
        tick_interval_s = 0.2
        ring_timeout_s = 15.0
        wrap_up_s = 5.0
        [pacing]
        policy = "ratio"
        params = {{ dial_level = 3.0 }}
        [hours]   # the campaign adds no limit of its own: the whole day (the law still applies)
        start = "00:00:00"
        end = "23:59:59"
        [dnc]     # no national registry copy is loaded in these tests: none applies
        registries = {{ US = [], GU = [], AU = [], JP = [], DE = [], GB = [] }}
        [retry.busy]
        max_attempts = {RULES[Outcome.BUSY][0]}
        delay_s = {RULES[Outcome.BUSY][1]}
        [retry.congestion]
        max_attempts = {RULES[Outcome.CONGESTION][0]}
        delay_s = {RULES[Outcome.CONGESTION][1]}
        """)


def numbers_callable_now(campaign: CampaignConfig, count: int) -> list[str]:
    """`count` numbers of one place where the law allows calls now and for the next 15 minutes."""
    now = time.time()
    for prefix, digits in NUMBER_PLANS:
        sample = prefix + "1" * digits
        info = classify(sample)
        if all(check_hours(campaign, info, now + dt).reason is None for dt in (0, 900)):
            return [f"{prefix}{i:0{digits}d}" for i in range(10, 10 + count)]
    raise AssertionError("no numbering plan is inside calling hours now")  # cannot happen: see NUMBER_PLANS


@dataclass
class Cluster:
    """A test cluster: a Redis server, config files and the node processes started on them."""

    tmp: Path
    redis: RedisServer
    scenario: Path
    procs: dict[str, subprocess.Popen[bytes]]

    def config(self, node: str) -> Path:
        path = self.tmp / f"{node}.toml"
        path.write_text(textwrap.dedent(f"""\
            node_id = "{node}"
            campaigns_dir = "campaigns"
            drain_timeout_s = 3.0
            [redis]
            url = "{self.redis.url}"
            socket_timeout_s = 1.0
            socket_connect_timeout_s = 0.5
            health_check_interval_s = 1.0
            [api]
            port = 0
            [logging]
            json = true
            """))
        return path

    def start(self, node: str, agents: int = 12, lead_lease_s: float = LEAD_LEASE_S) -> None:
        env = {**os.environ, "DIALER_LEAD_LEASE_S": str(lead_lease_s), "DIALER_AGENT_LEASE_S": "2"}
        env.pop("DIALER_REDIS_URL", None)
        log = (self.tmp / f"{node}.log").open("wb")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "dialer", "run", "--config", str(self.config(node)), "--simulate",
             str(self.scenario), "--sim-agents", str(agents), "--seed", str(len(self.procs) + 1)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop_all(self) -> None:
        """SIGTERM every node and wait for each to exit.

        A node's shutdown is bounded by its drain timeout (3 s here) plus the engine's bounded waits
        for the calls' last records (5 s, then 5 s): 20 s leaves room for a starved CI machine. A
        node still running then has stalled; it logged `shutdown_stalled` with where it waited.
        """
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        for node, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"node {node} did not stop on SIGTERM; its log ends:\n"
                                     f"{self.log(node)[-3000:]}") from None

    def log(self, node: str) -> str:
        return (self.tmp / f"{node}.log").read_text(errors="replace")

    def originations(self, node: str) -> int:
        """The node's `dialer_originations_total` for the campaign, read from its /metrics."""
        match = re.search(r'"api": "127\.0\.0\.1:(\d+)"', self.log(node))
        assert match, self.log(node)[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        found = re.search(rf'^dialer_originations_total{{campaign="{CAMPAIGN}"}} (\S+)$', text, re.M)
        assert found, text[:2000]
        return int(float(found.group(1)))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / f"{CAMPAIGN}.toml").write_text(campaign_toml())
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = RedisServer(redis_dir, appendonly=True)
    server.start()
    c = Cluster(tmp_path, server, scenario, {})
    try:
        yield c
    finally:
        for proc in c.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()


@pytest.fixture
async def store(cluster: Cluster) -> AsyncIterator[RedisLeadStore]:
    async with RedisLeadStore.from_url(cluster.redis.url, node_id="test") as s:
        yield s


async def import_leads(cluster: Cluster, store: RedisLeadStore, count: int) -> list[str]:
    campaign = load_campaign(cluster.tmp / "campaigns" / f"{CAMPAIGN}.toml")
    nums = numbers_callable_now(campaign, count)
    report = await store.import_csv(CAMPAIGN, [b"number,name\n", *(f"{n},x\n".encode() for n in nums)])
    assert (report.imported, report.rejected) == (count, 0), report.errors[:3]
    return nums


async def counts(store: RedisLeadStore) -> CampaignCounts:
    """The campaign's lead counts; a connection broken by a Redis restart is retried."""
    for _ in range(50):
        try:
            return await store.counts(CAMPAIGN, time.time())
        except RedisConnectionError:
            await asyncio.sleep(0.1)
    raise AssertionError("Redis did not come back")


async def wait_until(store: RedisLeadStore, cluster: Cluster, *, done_at_least: int,
                     timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        c = await counts(store)
        if c.done >= done_at_least:
            return
        for node, proc in cluster.procs.items():
            assert proc.poll() is None or proc.returncode == -signal.SIGKILL, \
                f"node {node} exited with {proc.returncode}:\n{cluster.log(node)[-3000:]}"
        if time.monotonic() > deadline:
            logs = "\n".join(cluster.log(n)[-1500:] for n in cluster.procs)
            raise AssertionError(f"campaign stuck at {c}\n{logs}")
        await asyncio.sleep(0.2)


async def wait_finished(store: RedisLeadStore, cluster: Cluster, total: int, timeout_s: float) -> None:
    """Until no lead is due or leased: each is done, or parked by a gate block (checked by the caller)."""
    deadline = time.monotonic() + timeout_s
    while True:
        c = await counts(store)
        if c.due == 0 and c.leased == 0 and c.done + c.scheduled == total:
            parked = c.scheduled
            if parked == 0 or time.monotonic() > deadline:  # retries due later would show up as due
                return
            await asyncio.sleep(RULES[Outcome.BUSY][1] + 0.5)
            c2 = await counts(store)
            if c2.due == 0 and c2.leased == 0 and c2.scheduled == parked:
                return
        if time.monotonic() > deadline:
            logs = "\n".join(cluster.log(n)[-1500:] for n in cluster.procs)
            raise AssertionError(f"campaign did not finish: {c}\n{logs}")
        await asyncio.sleep(0.2)


@dataclass
class Audit:
    """What Redis holds about the campaign after a run."""

    histories: dict[str, list[AttemptRecord]]
    attempts_field: dict[str, int]
    states: dict[str, str]
    cdrs: list[AttemptRecord]


async def audit(store: RedisLeadStore, nums: list[str]) -> Audit:
    histories: dict[str, list[AttemptRecord]] = {}
    attempts: dict[str, int] = {}
    states: dict[str, str] = {}
    for number in nums:
        lead_id = lead_id_for(CAMPAIGN, number)
        info = await store.lead_info(CAMPAIGN, lead_id)
        assert info is not None, f"lead {lead_id} lost"
        histories[lead_id] = info.history
        attempts[lead_id] = info.lead.attempts
        states[lead_id] = info.state
    cdrs = [rec async for _, rec in store.cdrs(CAMPAIGN)]
    return Audit(histories, attempts, states, cdrs)


def check_rules_and_records(a: Audit) -> Counter[str]:
    """Every lead was attempted as the retry rules say, never twice at once, and CDRs match histories.

    Returns the count of each attempt outcome (plus `lease_expired`).
    """
    seen: Counter[str] = Counter()
    cdr_ids = Counter(r.call_id for r in a.cdrs)
    assert not [c for c, n in cdr_ids.items() if n > 1], "a CDR was written twice"
    history_ids = Counter(r.call_id for h in a.histories.values() for r in h)
    assert cdr_ids == history_ids, "CDR stream and attempt histories disagree"
    dialled = Counter((r.lead_id, r.attempt) for r in a.cdrs if r.dialled_at is not None)
    assert max(dialled.values()) == 1, "an attempt number was dialled twice"
    for lead_id, history in a.histories.items():
        assert history, f"lead {lead_id} was never attempted"
        attempted = [r for r in history if r.outcome is not Outcome.BLOCKED]
        assert [r.attempt for r in attempted] == list(range(1, len(attempted) + 1)), history
        assert a.attempts_field[lead_id] == len(attempted), (lead_id, a.attempts_field[lead_id], history)
        for prev, nxt in itertools.pairwise(history):
            # One attempt at a time: the next claim comes after the previous attempt ended (or its
            # lease was reaped), so no lead was ever being dialled by two nodes at once.
            assert prev.ended_at is not None and nxt.claimed_at >= prev.ended_at - 0.05, (prev, nxt)
        for i, rec in enumerate(history):
            seen[rec.reason if rec.reason == "lease_expired" else str(rec.outcome)] += 1
            last = i == len(history) - 1
            if rec.reason == "lease_expired" or rec.outcome is Outcome.BLOCKED:
                continue  # requeued by the reaper / the gate, whatever the retry rules say
            assert rec.outcome is not None
            rule = RULES.get(rec.outcome)
            retry = rule is not None and rec.attempt < rule[0]
            if last:
                assert not retry, f"lead {lead_id} should have been retried after {rec}"
                assert a.states[lead_id] == "done", (lead_id, a.states[lead_id], history)
            else:
                assert retry, f"lead {lead_id} was retried after {rec.outcome} attempt {rec.attempt}"
                assert rule is not None and rec.ended_at is not None
                assert history[i + 1].claimed_at >= rec.ended_at + rule[1] - 0.05, "retried too early"
    return seen


async def test_three_nodes_share_one_campaign(cluster: Cluster, store: RedisLeadStore) -> None:
    nums = await import_leads(cluster, store, LEADS)
    for node in ("n1", "n2", "n3"):
        cluster.start(node, agents=AGENTS)
    await wait_finished(store, cluster, len(nums), timeout_s=40)
    a = await audit(store, nums)
    per_node = {n: await asyncio.to_thread(cluster.originations, n) for n in ("n1", "n2", "n3")}
    cluster.stop_all()
    seen = check_rules_and_records(a)
    assert all(state == "done" for state in a.states.values())
    # Every node dialled, and the nodes' own counts add up to the dialled attempts Redis recorded.
    assert all(n > 0 for n in per_node.values()), per_node
    assert sum(per_node.values()) == sum(1 for r in a.cdrs if r.dialled_at is not None), per_node
    assert seen["lease_expired"] == 0 and seen[str(Outcome.BLOCKED)] == 0, seen
    # The retry rules were exercised (check_rules_and_records checked each step against them): leads
    # were retried after busy and after congestion, and leads stopped at busy's attempt limit. With
    # these outcome chances each is expected 10 to 50 times in 200 leads, so none is left to luck
    # (a lead congested three times running, ~0.7 expected, is).
    retried = Counter(str(r.outcome) for h in a.histories.values() for r in h[:-1])
    capped = Counter(str(h[-1].outcome) for h in a.histories.values()
                     if h[-1].outcome in RULES and h[-1].attempt == RULES[h[-1].outcome][0])
    assert retried[str(Outcome.BUSY)] and retried[str(Outcome.CONGESTION)], retried
    assert capped[str(Outcome.BUSY)], capped
    assert sum(len(h) for h in a.histories.values()) == len(a.cdrs)
    for node in ("n1", "n2", "n3"):
        assert '"daemon_stopped"' in cluster.log(node)


async def test_killed_node_claims_are_redialled_by_the_others(cluster: Cluster,
                                                               store: RedisLeadStore) -> None:
    nums = await import_leads(cluster, store, LEADS)
    for node in ("n1", "n2"):
        cluster.start(node, agents=AGENTS)
    await wait_until(store, cluster, done_at_least=LEADS // 4, timeout_s=25)
    leased_by_n1 = [lid for lid in (await leased_leads(store)) if lid[1] == "n1"]
    cluster.procs["n1"].kill()
    killed_at = time.time()
    cluster.procs["n1"].wait()
    await wait_finished(store, cluster, len(nums), timeout_s=40)
    a = await audit(store, nums)
    cluster.stop_all()
    seen = check_rules_and_records(a)
    assert all(state == "done" for state in a.states.values())
    assert seen["lease_expired"] >= 1, "the killed node held no claim: kill it later"
    for lead_id, _ in leased_by_n1:
        history = a.histories[lead_id]
        lapsed = [i for i, r in enumerate(history) if r.reason == "lease_expired"]
        if not lapsed:
            continue  # completed by n1 just before the kill
        rec = history[lapsed[-1]]
        assert rec.ended_at is not None and rec.ended_at >= killed_at, "reaped while its lease was live"
        # The lapse was reaped no sooner than a lease after the kill, then dialled again by n2.
        assert rec.ended_at <= killed_at + LEAD_LEASE_S + 3.0
        if lapsed[-1] < len(history) - 1:
            assert history[lapsed[-1] + 1].dialled_at is not None


async def leased_leads(store: RedisLeadStore) -> list[tuple[str, str]]:
    """(lead id, node) of every lead leased right now."""
    ids = cast(list[str], await store.redis.zrange(f"dialer:{{{CAMPAIGN}}}:leases", 0, -1))
    out = []
    for lead_id in ids:
        node = await store.redis.hget(f"dialer:{{{CAMPAIGN}}}:lead:{lead_id}", "node")
        if node:
            out.append((str(lead_id), str(node)))
    return out


async def test_redis_restart_pauses_dialing_and_loses_nothing(cluster: Cluster,
                                                               store: RedisLeadStore) -> None:
    nums = await import_leads(cluster, store, LEADS)
    for node in ("n1", "n2"):  # leases outlast the outage: calls that end meanwhile keep their records
        cluster.start(node, agents=AGENTS, lead_lease_s=OUTAGE_S + 7)
    await wait_until(store, cluster, done_at_least=LEADS // 4, timeout_s=25)
    cluster.redis.stop()
    down_at = time.time()  # the server has exited: nothing can be cleared from here on
    await asyncio.sleep(OUTAGE_S)
    up_at = time.time()
    cluster.redis.start()
    await wait_finished(store, cluster, len(nums), timeout_s=40)
    a = await audit(store, nums)
    cluster.stop_all()
    seen = check_rules_and_records(a)
    dialled = sorted(r.dialled_at for r in a.cdrs if r.dialled_at is not None)
    inside = [t for t in dialled if down_at < t < up_at]
    assert not inside, f"{len(inside)} calls were placed while Redis was away"
    assert any(t < down_at for t in dialled) and any(t > up_at for t in dialled), "dialing did not resume"
    # A lead is finished, or parked by the gate (Redis away at its check): none is lost or left leased.
    for lead_id, state in a.states.items():
        if state != "done":
            last = a.histories[lead_id][-1]
            assert (state, last.outcome, last.reason) == ("scheduled", Outcome.BLOCKED, "store_unavailable")
    assert len(a.histories) == len(nums)
    # Calls that ended while Redis was away were recorded once it was back (the lead client retries
    # with back-off), not replaced by lease-expiry records.
    assert seen["lease_expired"] == 0, seen
    logs = cluster.log("n1") + cluster.log("n2")
    assert '"attempt_not_recorded"' not in logs
    assert '"redis_unreachable"' in logs  # the nodes noticed


# The gate alone ----------------------------------------------------------------------------------


async def test_gate_fails_closed_while_redis_is_away_and_reopens(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    settings = RedisSettings(url=server.url, socket_timeout_s=0.5, socket_connect_timeout_s=0.5)
    client = redis_client(settings)
    campaign = load_campaign_text(tmp_path)
    gate = ComplianceGate(client, {CAMPAIGN: campaign})
    number = numbers_callable_now(campaign, 1)[0]
    candidate = DialCandidate(number, CAMPAIGN, "lead-1")
    try:
        assert isinstance(await gate.check(candidate, time.time()), Clearance)
        server.stop()
        started = time.monotonic()
        verdict = await gate.check(candidate, time.time())
        took = time.monotonic() - started
        assert isinstance(verdict, Blocked) and verdict.reason is BlockReason.STORE_UNAVAILABLE, verdict
        assert "redis" in verdict.detail
        assert took < 2.0, f"the gate took {took:.2f} s to close"
        server.start()
        assert isinstance(await gate.check(candidate, time.time()), Clearance)  # reconnected by itself
    finally:
        await client.aclose()
        server.stop()


def load_campaign_text(tmp: Path) -> CampaignConfig:
    path = tmp / f"{CAMPAIGN}.toml"
    path.write_text(campaign_toml())
    return load_campaign(path)


# Agent registry across processes -----------------------------------------------------------------

OWNER_SCRIPT = """
import asyncio, sys, time
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from dialer.agent_registry import AgentRegistry
from dialer.agents import AgentPool

async def main() -> None:
    client = aioredis.Redis.from_url(sys.argv[1], decode_responses=True)
    registry = AgentRegistry(client, AgentPool(time.time), node_id="n1", lease_s=3.0)
    stop = asyncio.Event()
    task = asyncio.create_task(registry.run(stop))
    await registry.login("a1", "sip:a1@127.0.0.1", "sales", skills=["fr"])
    print("up", flush=True)
    await task

asyncio.run(main())
"""


@pytest.fixture
async def agent_redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_agent_commands_reach_the_owner_node_and_a_dead_owner_is_taken_over(
        redis_server: RedisServer, agent_redis: aioredis.Redis) -> None:
    # A node in its own process, so that it can be SIGKILLed; started once, read from a thread.
    owner = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", OWNER_SCRIPT, redis_server.url], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pool = AgentPool(time.time)
    here = AgentRegistry(agent_redis, pool, node_id="n2", lease_s=3.0, command_timeout_s=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(here.run(stop))
    try:
        assert owner.stdout is not None
        seen: list[bytes] = []
        while not seen or seen[-1].strip() != b"up":  # after its log lines
            line = await asyncio.wait_for(asyncio.to_thread(owner.stdout.readline), 15)
            assert line, b"".join(seen)
            seen.append(line)
        rec = await here.get("a1")
        assert rec is not None and (rec.owner, rec.state, rec.pool, rec.live) == ("n1", AgentState.READY,
                                                                                 "sales", True)
        # Routed to n1, applied to n1's pool, mirrored back: n2 never holds the agent.
        paused = await here.command("a1", "pause", reason="break")
        assert (paused.owner, paused.state, paused.pause_reason) == ("n1", AgentState.PAUSED, "break")
        relogged = await here.login("a1", "sip:a1@10.0.0.9", "sales")
        assert (relogged.owner, relogged.uri, relogged.state) == ("n1", "sip:a1@10.0.0.9", AgentState.PAUSED)
        assert not here.owns("a1") and len(pool) == 0
        with pytest.raises(AgentError, match="'a1' is paused, not in wrap-up"):
            await here.command("a1", "wrap_up_done", disposition="sale")
        with pytest.raises(AgentNotFoundError, match="unknown agent 'nobody': not logged in on any node"):
            await here.command("nobody", "ready")
        with pytest.raises(AgentCommandError, match="unknown agent action 'dance'"):
            await here.command("a1", "dance")
        with pytest.raises(AgentCommandError, match="pause needs a reason"):
            await here.command("a1", "pause")

        owner.kill()
        owner.wait()
        with pytest.raises(OwnerUnavailableError, match="held by node 'n1', which did not answer within 1 s"):
            await here.command("a1", "ready")
        deadline = time.monotonic() + 5
        while (rec := await here.get("a1")) is not None and rec.live:
            assert time.monotonic() < deadline, "n1's lease never expired"
            await asyncio.sleep(0.1)
        # The agent's next action moves the session here; the paused agent stays paused until ready.
        taken = await here.command("a1", "ready")
        assert (taken.owner, taken.state, taken.live) == ("n2", AgentState.READY, True)
        assert here.owns("a1") and pool.get("a1").state is AgentState.READY
        assert pool.select("sales") is pool.get("a1")  # n2's engine now offers it calls
        await asyncio.sleep(1.2)  # heartbeats keep the session
        rec = await here.get("a1")
        assert rec is not None and rec.live and rec.lease_until > time.time() + 1.0
        out = await here.command("a1", "logout")
        assert (out.state, out.owner) == (AgentState.LOGGED_OUT, None)
        assert [r.agent_id for r in await here.agents(pool="sales")] == ["a1"]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()


async def test_sessions_are_released_on_shutdown(agent_redis: aioredis.Redis) -> None:
    registry = AgentRegistry(agent_redis, AgentPool(time.time), node_id="n1", lease_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(registry.run(stop))
    await registry.login("b1", "sip:b1@127.0.0.1", "support", paused=True, reason="training")
    rec = await registry.get("b1")
    assert rec is not None
    assert (rec.owner, rec.state, rec.pause_reason) == ("n1", AgentState.PAUSED, "training")
    stop.set()
    await asyncio.wait_for(task, 5)
    rec = await registry.get("b1")
    assert rec is not None and (rec.owner, rec.live, rec.state) == (None, False, AgentState.PAUSED)
    other = AgentRegistry(agent_redis, AgentPool(time.time), node_id="n2")
    taken = await other.command("b1", "ready")  # no wait for a lease: it was given up
    assert (taken.owner, taken.state) == ("n2", AgentState.READY)
    await other.release_all()


def test_registry_refuses_a_bytes_client() -> None:
    client = aioredis.Redis()
    with pytest.raises(AgentRegistryError, match="needs a client created with decode_responses=True"):
        AgentRegistry(client, AgentPool(time.time), node_id="n1")



async def test_a_heartbeat_whose_reply_was_lost_still_reports_the_lost_session(
        agent_redis: aioredis.Redis) -> None:
    """Redis runs n1's heartbeat and the connection drops before the reply (the client may retry it):
    the next heartbeat still tells n1 that n2 took the session."""
    n1 = AgentRegistry(agent_redis, AgentPool(time.time), node_id="n1", lease_s=0.5)
    await n1.login("c1", "sip:c1@127.0.0.1", "sales")
    await asyncio.sleep(0.6)
    n2 = AgentRegistry(agent_redis, AgentPool(time.time), node_id="n2", lease_s=5.0)
    await n2.command("c1", "pause", reason="lunch")  # n1's lease expired: n2 takes the session
    script = n1._heartbeat

    async def lost_reply(**kw: Any) -> Any:
        await script(**kw)
        raise RedisConnectionError("connection reset after the script ran")

    n1._heartbeat = lost_reply  # type: ignore[assignment]
    with pytest.raises(RedisConnectionError):
        await n1.renew()
    assert n1.owns("c1")  # nothing learnt yet
    n1._heartbeat = script
    assert await n1.renew() == ["c1"]
    assert not n1.owns("c1")
    assert await n1.renew() == []  # told once
    await n2.release_all()


async def test_a_node_that_lost_a_session_stops_using_the_agent(agent_redis: aioredis.Redis) -> None:
    # n1 stops heart-beating (a partition, a stalled loop): no run() loop, a short lease.
    pool1 = AgentPool(time.time)
    n1 = AgentRegistry(agent_redis, pool1, node_id="n1", lease_s=0.5)
    await n1.login("c1", "sip:c1@127.0.0.1", "sales")
    await asyncio.sleep(0.6)
    pool2 = AgentPool(time.time)
    n2 = AgentRegistry(agent_redis, pool2, node_id="n2", lease_s=5.0)
    taken = await n2.command("c1", "pause", reason="lunch")  # lease expired: n2 takes the session
    assert (taken.owner, taken.state) == ("n2", AgentState.PAUSED)
    # n1 wakes up and its engine reserves the agent for a call: the mirror write is refused, and the
    # next renewal tells n1 the session is gone.
    pool1.transition("c1", AgentState.RESERVED, call_id="call-1")
    assert await n1.renew() == ["c1"]
    assert not n1.owns("c1")
    rec = await n2.get("c1")
    assert rec is not None and (rec.owner, rec.state, rec.pause_reason) == ("n2", AgentState.PAUSED, "lunch")
    # The call n1 already placed finishes there; then n1 logs the agent out of its own pool.
    pool1.transition("c1", AgentState.TALKING, call_id="call-1")
    pool1.transition("c1", AgentState.WRAP_UP)
    await asyncio.sleep(0)
    assert pool1.get("c1").state is AgentState.LOGGED_OUT
    rec = await n2.get("c1")
    assert rec is not None and rec.state is AgentState.PAUSED
    await n2.release_all()
