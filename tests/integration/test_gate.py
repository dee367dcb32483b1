"""The compliance gate against a real redis-server: every failure blocks with its own reason."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog
from prometheus_client import CollectorRegistry

from dialer.compliance.abandon import AbandonProtection
from dialer.compliance.dnc import DncKeys, DncLists, OptOutRecorder, RegistryLoader, connect
from dialer.compliance.gate import (
    Blocked,
    BlockReason,
    Clearance,
    ComplianceGate,
    DialCandidate,
    Gate,
    Verdict,
)
from dialer.config import CampaignConfig
from dialer.errors import ComplianceError
from dialer.leads_redis import RedisLeadStore
from dialer.metrics import DialerMetrics
from tests.integration.compliance_support import NOW, campaign, days_ago, write_lines
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

LISTED = "+12125550123"  # on the national registry
CLEAN = "+12125550124"  # not listed
LA = "+13105550100"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = connect(redis_url, timeout_s=1.0)
    yield c
    await c.aclose()


async def load(client: aioredis.Redis, tmp_path: Path, registry: str = "us-national", *lines: str,
               as_of_days: int = 1) -> None:
    f = write_lines(tmp_path / f"{registry}-{len(lines)}.txt", *lines)
    await RegistryLoader(client).load(registry, [f], as_of=days_ago(as_of_days), now=NOW)


def gate_for(client: aioredis.Redis, *campaigns: CampaignConfig, **kw: object) -> ComplianceGate:
    cs = campaigns or (campaign(),)
    gate = ComplianceGate(client, {c.name: c for c in cs}, **kw)  # type: ignore[arg-type]
    protocol: Gate = gate  # the engine codes against the protocol: mypy checks the fit
    assert protocol is gate
    return gate


def reason(v: Verdict) -> BlockReason | None:
    return v.reason if isinstance(v, Blocked) else None


async def test_clears_unlisted_and_blocks_listed(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123", "310,5550199")
    gate = gate_for(client)
    ok = await gate.check(DialCandidate(CLEAN, "c"), NOW)
    assert isinstance(ok, Clearance)
    ok.verify(CLEAN, "c", NOW + 0.1)
    blocked = await gate.check(DialCandidate(LISTED, "c"), NOW)
    assert reason(blocked) is BlockReason.DNC_NATIONAL
    assert reason(await gate.check(DialCandidate("+13105550199", "c"), NOW)) is BlockReason.DNC_NATIONAL
    assert isinstance(await gate.check(DialCandidate(LA, "c"), NOW), Clearance)


async def test_number_opted_out_while_its_lead_sits_in_the_hopper_is_never_dialled(
        redis_url: str, client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123")
    leads_client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with RedisLeadStore(leads_client, owns_client=True) as store:
        await store.import_csv("c", [b"number\n", f"{CLEAN}\n".encode()], due_at=NOW - 60)
        # The lead was clean when it entered the hopper; the customer opts out (API) meanwhile.
        await OptOutRecorder(DncLists(client)).opt_out(CLEAN, "other-campaign", "api")
        [lead] = await store.claim("c", 10, NOW)
    assert lead.number == CLEAN
    verdict = await gate_for(client).check(DialCandidate(lead.number, "c", lead.lead_id), NOW)
    assert reason(verdict) is BlockReason.DNC_INTERNAL


async def test_opt_out_sources_and_audit(client: aioredis.Redis) -> None:
    recorder = OptOutRecorder(DncLists(client))
    for i, source in enumerate(("api", "dtmf", "disposition")):
        await recorder.opt_out(f"+1212555010{i}", "c", source)
    with pytest.raises(ComplianceError, match="unknown opt-out source 'fax'"):
        await recorder.opt_out("+12125550109", "c", "fax")
    assert await client.scard(DncKeys().internal) == 3
    entries: Any = await client.xrange(DncKeys().audit)
    assert [e[1][b"source"] for e in entries] == [b"api", b"dtmf", b"disposition"]


async def test_campaign_list_blocks_only_its_campaign(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123")
    await DncLists(client).add(CLEAN, campaign="a")
    gate = gate_for(client, campaign("a"), campaign("b"))
    assert reason(await gate.check(DialCandidate(CLEAN, "a"), NOW)) is BlockReason.DNC_CAMPAIGN
    assert isinstance(await gate.check(DialCandidate(CLEAN, "b"), NOW), Clearance)
    await DncLists(client).remove(CLEAN, campaign="a")
    assert isinstance(await gate.check(DialCandidate(CLEAN, "a"), NOW), Clearance)
    with pytest.raises(ComplianceError, match="'a b' is not a campaign name"):
        await DncLists(client).add(CLEAN, campaign="a b")


async def test_redis_stopped_blocks_everything(redis_server: RedisServer, client: aioredis.Redis,
                                               tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123")
    gate = gate_for(client)
    assert isinstance(await gate.check(DialCandidate(CLEAN, "c"), NOW), Clearance)
    redis_server.stop()
    verdicts = await gate.check_many([DialCandidate(CLEAN, "c"), DialCandidate(LA, "c")], NOW)
    assert [reason(v) for v in verdicts] == [BlockReason.STORE_UNAVAILABLE] * 2
    assert isinstance(verdicts[0], Blocked) and "redis" in verdicts[0].detail
    # The test server keeps nothing across a restart: an empty Redis must block, not clear.
    redis_server.start()
    assert reason(await gate.check(DialCandidate(CLEAN, "c"), NOW)) is BlockReason.REGISTRY_MISSING
    await load(client, tmp_path, "us-national", "2125550123")
    assert isinstance(await gate.check(DialCandidate(CLEAN, "c"), NOW), Clearance)


async def test_deleted_registry_key_blocks_its_area_code(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123", "3105550199")
    await client.delete(DncKeys().registry("us-national", 212))
    gate = gate_for(client)
    v = await gate.check(DialCandidate(CLEAN, "c"), NOW)
    assert reason(v) is BlockReason.REGISTRY_MISSING
    assert isinstance(v, Blocked) and "area code 212" in v.detail
    assert isinstance(await gate.check(DialCandidate(LA, "c"), NOW), Clearance)


async def test_area_code_never_loaded_blocks(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123")
    v = await gate_for(client).check(DialCandidate("+14155550100", "c"), NOW)
    assert reason(v) is BlockReason.REGISTRY_MISSING


@pytest.mark.parametrize(("age_days", "expected"), [(31, None), (32, BlockReason.REGISTRY_STALE)])
async def test_registry_older_than_31_days_blocks(client: aioredis.Redis, tmp_path: Path, age_days: int,
                                                  expected: BlockReason | None) -> None:
    await load(client, tmp_path, "us-national", "2125550123", as_of_days=age_days)
    v = await gate_for(client).check(DialCandidate(CLEAN, "c"), NOW)
    assert reason(v) is expected
    if expected:
        assert isinstance(v, Blocked) and f"is {age_days} days old (limit 31)" in v.detail


async def test_aging_registry_warns_once_and_feeds_the_age_gauge(client: aioredis.Redis,
                                                                  tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123", as_of_days=26)
    registry = CollectorRegistry()
    gate = gate_for(client, metrics=DialerMetrics(registry, clock=lambda: NOW))
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert isinstance(await gate.check(DialCandidate(CLEAN, "c"), NOW), Clearance)
    warnings = [e for e in logs if e["event"] == "dnc_registry_aging"]
    assert len(warnings) == 1
    assert warnings[0]["age_days"] == 26 and warnings[0]["area_code"] == 212
    age = registry.get_sample_value("dialer_dnc_list_age_seconds", {"registry": "us-national"})
    assert age is not None and 26 * 86400 <= age < 27 * 86400


async def test_stricter_campaign_age_limit(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123", as_of_days=10)
    strict = campaign(dnc={"max_age_days": 7, "warn_age_days": 5})
    assert reason(await gate_for(client, strict).check(DialCandidate(CLEAN, "c"), NOW)) \
        is BlockReason.REGISTRY_STALE


async def test_unparseable_number_blocks(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123")
    gate = gate_for(client)
    for bad in ("2125550124", "+1212555012", "+15555550123", "+12125550124 ", "", "+44207"):
        v = await gate.check(DialCandidate(bad, "c"), NOW)
        assert reason(v) is BlockReason.UNPARSEABLE_NUMBER, bad


async def test_unknown_zone_blocks(client: aioredis.Redis) -> None:
    # An Iridium number is valid but has no time zone; the campaign says no registry applies to it.
    sat = campaign(dnc={"registries": {"001": []}})
    v = await gate_for(client, sat).check(DialCandidate("+881612345678", "c"), NOW)
    assert reason(v) is BlockReason.UNKNOWN_ZONE
    # Without that setting the gate does not know which registry applies: blocked too.
    v = await gate_for(client).check(DialCandidate("+881612345678", "c"), NOW)
    assert reason(v) is BlockReason.REGISTRY_MISSING


async def test_unknown_campaign_blocks(client: aioredis.Redis) -> None:
    v = await gate_for(client).check(DialCandidate(CLEAN, "nope"), NOW)
    assert reason(v) is BlockReason.GATE_ERROR


async def test_area_code_outside_the_subscription_blocks(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123", "3105550199")
    c = campaign(dnc={"area_codes": ["212"]})
    gate = gate_for(client, c)
    assert isinstance(await gate.check(DialCandidate(CLEAN, "c"), NOW), Clearance)
    assert reason(await gate.check(DialCandidate(LA, "c"), NOW)) is BlockReason.NOT_SUBSCRIBED


async def test_state_registry_applies_to_the_area_codes_it_covers(client: aioredis.Redis,
                                                                   tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2155550100", "2125550123")
    c = campaign(dnc={"registries": {"US": ["us-national", "state-PA"]}})
    gate = gate_for(client, c)
    assert reason(await gate.check(DialCandidate("+12155550101", "c"), NOW)) is BlockReason.REGISTRY_MISSING
    await load(client, tmp_path, "state-PA", "2155550101")
    assert reason(await gate.check(DialCandidate("+12155550101", "c"), NOW)) is BlockReason.DNC_STATE
    assert isinstance(await gate.check(DialCandidate("+12155550102", "c"), NOW), Clearance)
    assert isinstance(await gate.check(DialCandidate(CLEAN, "c"), NOW), Clearance)  # 212 not covered
    await client.delete(DncKeys().registry("state-PA", 215))
    assert reason(await gate.check(DialCandidate("+12155550102", "c"), NOW)) is BlockReason.REGISTRY_MISSING


async def test_calling_hours_at_the_gate_split_zone_and_dst(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2085550100")
    gate = gate_for(client)
    idaho = DialCandidate("+12085551234", "c")
    # 15:30 UTC in November: 08:30 in Boise, 07:30 in the Pacific half of 208.
    early = NOW - 1.5 * 3600
    assert reason(await gate.check(idaho, early)) is BlockReason.OUTSIDE_HOURS
    assert isinstance(await gate.check(idaho, NOW), Clearance)


async def test_uk_abandon_protection_lifted_by_a_guaranteed_agent(client: aioredis.Redis,
                                                                  tmp_path: Path) -> None:
    write_lines(tmp_path / "tps.txt", "+447911000001", "07911000002")
    await RegistryLoader(client).load("uk-tps", [tmp_path / "tps.txt"], as_of=days_ago(2), now=NOW)
    uk = campaign(rule_pack="uk")
    gate = gate_for(client, uk)
    number = "+447911123456"
    assert reason(await gate.check(DialCandidate("+447911000002", "c"), NOW)) is BlockReason.DNC_NATIONAL
    assert isinstance(await gate.check(DialCandidate(number, "c"), NOW), Clearance)
    protection = AbandonProtection(client)
    await protection.protect(number, NOW - 3600)
    v = await gate.check(DialCandidate(number, "c"), NOW)
    assert reason(v) is BlockReason.ABANDON_PROTECTED
    assert isinstance(await gate.check(DialCandidate(number, "c"), NOW, guaranteed_agent=True), Clearance)
    # 72 hours after the abandon the number may be called again.
    later = NOW - 3600 + 72 * 3600 + 1
    assert reason(await gate.check(DialCandidate(number, "c"), later)) is not BlockReason.ABANDON_PROTECTED
    # A US campaign is not bound by Ofcom's rule.
    await load(client, tmp_path, "us-national", "2125550123")
    await protection.protect(CLEAN, NOW - 60)
    assert isinstance(await gate_for(client).check(DialCandidate(CLEAN, "c"), NOW), Clearance)


async def test_intl_block_deleted_blocks(client: aioredis.Redis, tmp_path: Path) -> None:
    write_lines(tmp_path / "tps.txt", "+447911000001")
    await RegistryLoader(client).load("uk-tps", [tmp_path / "tps.txt"], as_of=days_ago(2), now=NOW)
    gate = gate_for(client, campaign(rule_pack="uk"))
    assert isinstance(await gate.check(DialCandidate("+447911000099", "c"), NOW), Clearance)
    await client.delete(DncKeys().block("uk-tps", "4479110"))
    assert reason(await gate.check(DialCandidate("+447911000099", "c"), NOW)) is BlockReason.REGISTRY_MISSING
    await client.delete(DncKeys().meta("uk-tps", "all"))
    assert reason(await gate.check(DialCandidate("+442071234567", "c"), NOW)) is BlockReason.REGISTRY_MISSING


async def test_check_many_keeps_order_and_counts_metrics(client: aioredis.Redis, tmp_path: Path) -> None:
    await load(client, tmp_path, "us-national", "2125550123")
    registry = CollectorRegistry()
    metrics = DialerMetrics(registry)
    gate = gate_for(client, metrics=metrics)
    cands = [DialCandidate(n, "c") for n in (CLEAN, LISTED, "junk", "+14155550100")] * 700
    verdicts = await gate.check_many(cands, NOW)
    first = [None, BlockReason.DNC_NATIONAL, BlockReason.UNPARSEABLE_NUMBER, BlockReason.REGISTRY_MISSING]
    assert [reason(v) for v in verdicts[:4]] == first
    assert [reason(v) for v in verdicts] == [reason(v) for v in verdicts[:4]] * 700
    assert registry.get_sample_value("dialer_gate_checks_total", {"campaign": "c"}) == 2800
    assert registry.get_sample_value("dialer_gate_blocks_total",
                                     {"campaign": "c", "reason": "dnc_national"}) == 700


async def test_reload_racing_a_stream_of_checks_never_sees_a_partial_list(
        redis_url: str, client: aioredis.Redis, tmp_path: Path) -> None:
    # Two versions of the registry over three area codes. Numbers in both versions must be blocked at
    # every instant; a reload that deleted then rewrote keys (or wrote them one by one without a
    # sentinel) would let them through or report the registry missing. The swap is one MULTI/EXEC and
    # a batch is one script call, so each batch must see exactly one version.
    always = ["2125550001", "3105550001", "4155550001"]
    only_v1 = ["2125550002", "3105550002"]
    only_v2 = ["2125550003", "4155550003"]
    f1 = write_lines(tmp_path / "v1.txt", *always, *only_v1)
    f2 = write_lines(tmp_path / "v2.txt", *always, *only_v2)
    loader = RegistryLoader(client)
    await loader.load("us-national", [f1], as_of=days_ago(3), now=NOW)
    cands = [DialCandidate(f"+1{n}", "c") for n in (*always, *only_v1, *only_v2)]
    d = BlockReason.DNC_NATIONAL
    v1_view = [d, d, d, d, d, None, None]
    v2_view = [d, d, d, None, None, d, d]
    stop = asyncio.Event()
    seen: list[list[BlockReason | None]] = []

    async def stream_of_checks() -> None:
        c = connect(redis_url, timeout_s=2.0)
        try:
            gate = gate_for(c)
            while not stop.is_set():
                seen.append([reason(v) for v in await gate.check_many(cands, NOW)])
        finally:
            await c.aclose()

    async with asyncio.TaskGroup() as tg:
        for _ in range(3):
            tg.create_task(stream_of_checks())
        for i in range(6):
            await loader.load("us-national", [f2 if i % 2 == 0 else f1], as_of=days_ago(2), now=NOW)
            await asyncio.sleep(0.02)
        stop.set()
    assert len(seen) > 20
    assert v1_view in seen and v2_view in seen
    partial = [view for view in seen if view not in (v1_view, v2_view)]
    assert partial == []
    # The last load (i = 5) was v1.
    final = await gate_for(client).check_many(cands, NOW)
    assert [reason(v) for v in final] == v1_view


async def test_one_batch_mixing_campaigns_and_shapes(client: aioredis.Redis, tmp_path: Path) -> None:
    # Common-shape candidates of two campaigns and a state-list campaign and a UK campaign in one
    # batch: several script calls in one pipelined round trip, verdicts back in order.
    await load(client, tmp_path, "us-national", "2125550123", "2155550100")
    await load(client, tmp_path, "state-PA", "2155550101")
    write_lines(tmp_path / "tps.txt", "+447911000001")
    await RegistryLoader(client).load("uk-tps", [tmp_path / "tps.txt"], as_of=days_ago(2), now=NOW)
    await DncLists(client).add(CLEAN, campaign="b")
    gate = gate_for(client, campaign("a"), campaign("b"), campaign("uk", rule_pack="uk"),
                    campaign("pa", dnc={"registries": {"US": ["us-national", "state-PA"]}}))
    cases = [
        (DialCandidate(CLEAN, "a"), None),
        (DialCandidate(CLEAN, "b"), BlockReason.DNC_CAMPAIGN),
        (DialCandidate("+447911000001", "uk"), BlockReason.DNC_NATIONAL),
        (DialCandidate("+12155550101", "pa"), BlockReason.DNC_STATE),
        (DialCandidate("+12155550101", "a"), None),
        (DialCandidate(LISTED, "uk"), BlockReason.DNC_NATIONAL),
        (DialCandidate("+447911000002", "uk"), None),
        (DialCandidate(LISTED, "b"), BlockReason.DNC_NATIONAL),
    ]
    verdicts = await gate.check_many([c for c, _ in cases], NOW)
    assert [reason(v) for v in verdicts] == [r for _, r in cases]
    for (cand, _), v in zip(cases, verdicts, strict=True):
        if isinstance(v, Clearance):
            v.verify(cand.number, cand.campaign, NOW)
