"""The Redis lead store against a real redis-server: import, leases, retries, callbacks, CDRs, AOF."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from dialer.config import CampaignConfig, RetryRule
from dialer.errors import LeadError
from dialer.leads import AttemptRecord, Lead, LeaseLostError, RowError, lead_id_for, next_attempt_at
from dialer.leads_cli import EXPORT_COLUMNS, export_cdrs, register
from dialer.leads_redis import CdrRetention, RedisLeadStore
from dialer.outcomes import Outcome
from tests.support.servers import RedisServer, free_port

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "config" / "leads" / "sample.csv"


def csv_lines(*rows: str, header: str = "number,first_name,last_name") -> list[bytes]:
    return ("\n".join((header, *rows)) + "\n").encode().splitlines(keepends=True)


def numbers(n: int, area: str = "212") -> list[str]:
    """n distinct fictional numbers (555-01xx in several area codes when n > 100)."""
    areas = [area, "312", "303", "206", "415", "617", "702", "503", "404", "713"]
    return [f"+1{areas[i // 100]}5550{100 + i % 100}" for i in range(n)]


def record(lead: Lead, outcome: Outcome, now: float, call_id: str = "") -> AttemptRecord:
    return AttemptRecord(call_id or f"call-{lead.lead_id}-{lead.attempts + 1}", lead.lead_id, lead.campaign,
                         lead.number, lead.attempts + 1, now, dialled_at=now, ended_at=now + 1,
                         outcome=outcome, sip_status=486 if outcome is Outcome.BUSY else 200)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisLeadStore]:
    async with RedisLeadStore.from_url(redis_url, node_id="node-a", lease_s=30.0) as s:
        yield s


async def import_numbers(store: RedisLeadStore, campaign: str, nums: list[str], due_at: float = 0.0) -> None:
    report = await store.import_csv(campaign, csv_lines(*(f"{n},F,L" for n in nums)), due_at=due_at)
    assert (report.imported, report.rejected) == (len(nums), 0), report.errors


async def test_import_then_reimport_is_idempotent(store: RedisLeadStore) -> None:
    with SAMPLE.open("rb") as fh:
        first = await store.import_csv("c1", fh)
    assert (first.rows, first.imported, first.existing, first.rejected) == (200, 200, 0, 0)
    [lead] = await store.claim("c1", 1, time.time())
    await store.complete(lead, record(lead, Outcome.BUSY, time.time()), retry_at=time.time() + 3600)
    before = await store.counts("c1", time.time())
    with SAMPLE.open("rb") as fh:
        again = await store.import_csv("c1", fh)
    assert (again.rows, again.imported, again.existing, again.rejected) == (200, 0, 200, 0)
    assert await store.counts("c1", time.time()) == before
    assert (before.leads, before.due, before.scheduled) == (200, 199, 1)
    info = await store.lead_info("c1", lead.lead_id)
    assert info is not None and info.lead.attempts == 1 and info.state == "scheduled"  # not reset
    assert info.lead.data["account_id"].startswith("ACC-") and info.lead.zones
    # Import leaves no temporary keys behind.
    keys = [k async for k in store.redis.scan_iter(match="dialer:{c1}:import:*")]
    assert keys == []


async def test_malformed_rows_are_reported_with_line_numbers(store: RedisLeadStore) -> None:
    seen: list[RowError] = []
    lines = csv_lines(
        "2125550100,Ann,Lee",            # 2
        "not-a-number,Bob,Ray",          # 3
        "(212) 555-0100,Ann,Again",      # 4 duplicate of line 2 in another format
        "3125550100,Cy",                 # 5 missing a field
        "3125550101,Di,Kay",             # 6
    )
    report = await store.import_csv("c1", lines, on_error=seen.append, batch_size=2)
    assert (report.rows, report.imported, report.existing, report.rejected) == (5, 2, 0, 3)
    assert sorted(str(e) for e in seen) == [
        "line 3: number 'not-a-number' cannot be parsed: "
        "The string supplied did not seem to be a phone number",
        "line 4: duplicate: number +12125550100 already on line 2",
        "line 5: expected 3 fields, found 2",
    ]
    assert report.errors == []  # given to the callback instead
    assert (await store.counts("c1", time.time())).leads == 2


async def test_bad_campaign_name_and_header_are_refused(store: RedisLeadStore) -> None:
    with pytest.raises(LeadError, match=r"invalid campaign name 'a b'"):
        await store.import_csv("a b", csv_lines("2125550100,A,B"))
    with pytest.raises(LeadError, match=r"no 'number' column"):
        await store.import_csv("c1", csv_lines("2125550100", header="phone"))


async def test_concurrent_claims_hand_each_lead_to_one_node(redis_url: str) -> None:
    nums = numbers(300)
    async with (RedisLeadStore.from_url(redis_url, node_id="a") as a,
                RedisLeadStore.from_url(redis_url, node_id="b") as b):
        await import_numbers(a, "c1", nums)
        got: dict[str, list[Lead]] = {"a": [], "b": []}

        async def drain(name: str, s: RedisLeadStore, batch: int) -> None:
            while leads := await s.claim("c1", batch, time.time()):
                got[name].extend(leads)
                await asyncio.sleep(0)

        await asyncio.gather(drain("a", a, 3), drain("b", b, 5), drain("a", a, 1), drain("b", b, 2))
        ids_a = [lead.lead_id for lead in got["a"]]
        ids_b = [lead.lead_id for lead in got["b"]]
        assert ids_a and ids_b  # both really raced
        assert len(ids_a) + len(ids_b) == 300
        assert set(ids_a) | set(ids_b) == {lead_id_for("c1", n) for n in nums}
        assert not set(ids_a) & set(ids_b)
        assert all(lead.attempts == 0 and lead.lease for lead in got["a"] + got["b"])
        assert len({lead.lease for lead in got["a"] + got["b"]}) == 300  # one fencing token per claim
        counts = await a.counts("c1", time.time())
        assert (counts.due, counts.leased) == (0, 300)


async def test_expired_leases_return_to_the_hopper_and_late_completion_is_refused(redis_url: str) -> None:
    async with (RedisLeadStore.from_url(redis_url, node_id="dead", lease_s=0.3) as dead,
                RedisLeadStore.from_url(redis_url, node_id="live", lease_s=30.0) as live):
        await import_numbers(dead, "c1", numbers(3))
        lost = await dead.claim("c1", 3, time.time())
        assert await live.reap("c1") == (0, 0)  # leases still live: nothing to take
        assert await live.claim("c1", 3, time.time()) == []
        await asyncio.sleep(0.4)
        # Expired but not reaped yet: the old holder is already refused, and cannot renew.
        with pytest.raises(LeaseLostError, match=r"lease lost \(lease expired\); attempt not recorded"):
            await dead.complete(lost[0], record(lost[0], Outcome.LIVE, time.time()), retry_at=None)
        assert {lead_id for _, lead_id in await dead.renew()} == {lead.lead_id for lead in lost[1:]}
        assert await live.reap("c1") == (3, 0)
        again = await live.claim("c1", 3, time.time())
        assert {x.lead_id for x in again} == {x.lead_id for x in lost}
        assert all(x.attempts == 1 for x in again)  # the lost attempt used up number 1: no reuse
        with pytest.raises(LeaseLostError, match=r"lease lost \(lead is now leased\)"):
            await dead.complete(lost[1], record(lost[1], Outcome.LIVE, time.time()), retry_at=None)
        for x in again:
            await live.complete(x, record(x, Outcome.LIVE, time.time()), retry_at=None)
        history = await live.history("c1", lost[1].lead_id)
        assert [(r.attempt, r.outcome, r.reason) for r in history] == [
            (1, Outcome.FAILED, "lease_expired"), (2, Outcome.LIVE, "")]
        assert history[0].call_id == f"lease:{lost[1].lease}" and history[0].number == lost[1].number
        assert (await live.counts("c1", time.time())).done == 3


async def test_a_retried_claim_gets_the_same_leads(store: RedisLeadStore) -> None:
    """The client retries a claim whose reply was lost: the retry carries the same receipt key, so it
    returns the leads the first run leased (still leased to it) instead of leasing more."""
    await import_numbers(store, "c1", numbers(5))
    store._claim_seq = itertools.repeat(7)  # every claim below is a retry of the first one
    first = await store.claim("c1", 2, time.time())
    again = await store.claim("c1", 2, time.time())
    assert [(x.lead_id, x.lease, x.attempts, x.number, x.data) for x in again] == [
        (x.lead_id, x.lease, x.attempts, x.number, x.data) for x in first]
    assert (await store.counts("c1", time.time())).leased == 2
    await store.complete(first[0], record(first[0], Outcome.BUSY, time.time()), retry_at=None)
    assert [x.lead_id for x in await store.claim("c1", 2, time.time())] == [first[1].lead_id]  # still held
    store._claim_seq = itertools.count(8)
    assert len(await store.claim("c1", 5, time.time())) == 3  # a new claim takes the rest


async def test_a_retried_completion_is_recorded_once(store: RedisLeadStore) -> None:
    """The client retries a completion whose reply was lost (Redis stopped right after running it):
    the repeat is accepted and writes nothing, even once the lead is leased again."""
    await import_numbers(store, "c1", numbers(1))
    [lead] = await store.claim("c1", 1, time.time())
    rec = record(lead, Outcome.BUSY, time.time())
    await store.complete(lead, rec, retry_at=time.time() - 1)
    await store.complete(lead, rec, retry_at=time.time() - 1)  # the retry: no error, nothing written
    assert [r.outcome for r in await store.history("c1", lead.lead_id)] == [Outcome.BUSY]
    assert await store.redis.xlen("dialer:{c1}:cdr") == 1
    [again] = await store.claim("c1", 1, time.time())
    assert again.lease != lead.lease and again.attempts == 1
    await store.complete(lead, rec, retry_at=None)  # a late repeat: the new lease is untouched
    assert (await store.lead_info("c1", lead.lead_id)).state == "leased"  # type: ignore[union-attr]
    await store.complete(again, record(again, Outcome.LIVE, time.time()), retry_at=None)
    assert [r.outcome for r in await store.history("c1", lead.lead_id)] == [Outcome.BUSY, Outcome.LIVE]


async def test_maintain_renews_held_leases_and_repeated_loss_finishes_a_lead(redis_url: str) -> None:
    async with RedisLeadStore.from_url(redis_url, node_id="a", lease_s=0.3, max_lease_losses=2) as a:
        await import_numbers(a, "c1", numbers(2))
        held = await a.claim("c1", 1, time.time())
        stop = asyncio.Event()
        keeper = asyncio.create_task(a.maintain(stop, interval_s=0.05))
        await asyncio.sleep(0.8)  # well past one lease
        assert a.holds(held[0])
        assert (await a.counts("c1", time.time())).leased == 1
        await a.complete(held[0], record(held[0], Outcome.LIVE, time.time()), retry_at=None)
        stop.set()
        await keeper
        # A lead whose holder keeps vanishing is finished after max_lease_losses, not recycled forever.
        for i in range(2):
            async with RedisLeadStore.from_url(redis_url, node_id=f"crashes-{i}", lease_s=0.3) as crashing:
                [poison] = await crashing.claim("c1", 1, time.time())
            await asyncio.sleep(0.35)  # the node is gone and renews nothing
            await a.reap("c1")
        info = await a.lead_info("c1", poison.lead_id)
        assert info is not None and info.state == "done" and info.lead.attempts == 2
        assert [r.reason for r in info.history] == ["lease_expired", "lease_expired"]


async def test_retries_follow_the_campaign_rules(store: RedisLeadStore) -> None:
    campaign = CampaignConfig(name="c1", retry={Outcome.BUSY: RetryRule(max_attempts=2, delay_s=600)})
    await import_numbers(store, "c1", numbers(1))
    t0 = 1_800_000_000.0
    [lead] = await store.claim("c1", 5, t0)
    rec = record(lead, Outcome.BUSY, t0)
    retry_at = next_attempt_at(Outcome.BUSY, rec.attempt, campaign.retry, t0)
    assert retry_at == t0 + 600
    await store.complete(lead, rec, retry_at)
    counts = await store.counts("c1", t0)
    assert (counts.due, counts.scheduled) == (0, 1)
    assert await store.claim("c1", 5, t0 + 599) == []
    [lead] = await store.claim("c1", 5, t0 + 600)
    assert lead.attempts == 1
    rec = record(lead, Outcome.BUSY, t0 + 600)
    await store.complete(lead, rec, next_attempt_at(Outcome.BUSY, rec.attempt, campaign.retry, t0 + 600))
    info = await store.lead_info("c1", lead.lead_id)
    assert info is not None and info.state == "done" and info.lead.attempts == 2
    assert info.last_outcome is Outcome.BUSY
    assert [r.attempt for r in info.history] == [1, 2]
    # Recycling gives finished leads with the chosen outcomes one more pass.
    assert await store.recycle("c1", {Outcome.NO_ANSWER}, t0 + 700) == 0
    assert await store.recycle("c1", {Outcome.BUSY}, t0 + 700) == 1
    [lead] = await store.claim("c1", 5, t0 + 700)
    assert lead.attempts == 2


async def test_a_blocked_attempt_gives_its_number_back(store: RedisLeadStore) -> None:
    await import_numbers(store, "c1", numbers(1))
    [lead] = await store.claim("c1", 1, 0.0)
    rec = record(lead, Outcome.BLOCKED, 0.0)
    rec.attempt = lead.attempts  # the engine's convention for an attempt never dialled
    await store.complete(lead, rec, retry_at=10.0)
    [lead] = await store.claim("c1", 1, 10.0)
    assert lead.attempts == 0


async def test_callbacks(store: RedisLeadStore) -> None:
    await import_numbers(store, "c1", numbers(2))
    first, second = await store.claim("c1", 2, 0.0)
    # A finished lead comes back at the callback time.
    await store.complete(first, record(first, Outcome.LIVE, 0.0), retry_at=None)
    await store.schedule_callback("c1", first.lead_id, 5000.0)
    assert await store.claim("c1", 5, 4999.0) == []
    [back] = await store.claim("c1", 5, 5000.0)
    assert (back.lead_id, back.attempts) == (first.lead_id, 1)
    # A callback set during the call wins over the retry rules when the call completes.
    await store.schedule_callback("c1", second.lead_id, 9000.0)
    info = await store.lead_info("c1", second.lead_id)
    assert info is not None and info.state == "leased" and info.callback_at == 9000.0
    await store.complete(second, record(second, Outcome.LIVE, 1.0), retry_at=None)
    info = await store.lead_info("c1", second.lead_id)
    assert info is not None and (info.state, info.due_at, info.callback_at) == ("scheduled", 9000.0, None)
    with pytest.raises(LeadError, match="no lead 'missing' in campaign 'c1'"):
        await store.schedule_callback("c1", "missing", 1.0)


async def test_cdr_stream_export_round_trip(store: RedisLeadStore) -> None:
    await import_numbers(store, "c1", numbers(5))
    leads = await store.claim("c1", 5, 0.0)
    written = []
    for i, lead in enumerate(leads):
        rec = record(lead, [Outcome.LIVE, Outcome.BUSY, Outcome.MACHINE][i % 3], 100.0 + i)
        if rec.outcome is Outcome.LIVE:
            rec.agent_id, rec.disposition = "agent-7", "sale"
            rec.answer_kind, rec.answered_at = "human", 101.5
        await store.complete(lead, rec, retry_at=None)
        written.append(rec)
    buf = io.StringIO()
    assert await export_cdrs(store, "c1", "csv", buf) == 5
    parsed = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert tuple(parsed[0]) == EXPORT_COLUMNS
    assert [row["call_id"] for row in parsed] == [r.call_id for r in written]
    assert parsed[0]["disposition"] == "sale" and parsed[0]["agent_id"] == "agent-7"
    assert parsed[1]["sip_status"] == "486" and parsed[1]["outcome"] == "busy" and parsed[1]["agent_id"] == ""
    buf = io.StringIO()
    assert await export_cdrs(store, "c1", "jsonl", buf) == 5
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    for line, rec in zip(lines, written, strict=True):
        assert line.pop("cdr_id")
        assert line == json.loads(json.dumps(rec.as_dict()))
    # --since filters on when the CDR was written (the stream id).
    buf = io.StringIO()
    assert await export_cdrs(store, "c1", "jsonl", buf, since=time.time() + 60) == 0
    with pytest.raises(LeadError, match="unknown export format 'xml'"):
        await export_cdrs(store, "c1", "xml", io.StringIO())


async def test_cdr_retention_trims_the_stream(redis_url: str) -> None:
    async with RedisLeadStore.from_url(redis_url, cdr_retention=CdrRetention(max_len=100)) as s:
        await import_numbers(s, "c1", numbers(600))
        for lead in await s.claim("c1", 600, 0.0):
            await s.complete(lead, record(lead, Outcome.BUSY, 1.0), retry_at=None)
        length = await s.redis.xlen("dialer:{c1}:cdr")
        assert 100 <= length < 600  # approximate trimming keeps whole stream nodes
        assert len(await s.history("c1", lead.lead_id)) == 1  # attempt records are not trimmed
    with pytest.raises(LeadError, match="give max_len or max_age_s, not both"):
        CdrRetention(max_len=10, max_age_s=5.0)


async def test_leads_survive_a_redis_restart_with_aof(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    try:
        async with RedisLeadStore.from_url(server.url, node_id="a") as s:
            await import_numbers(s, "c1", numbers(50))
            leads = await s.claim("c1", 10, 0.0)
            for lead in leads[:4]:
                await s.complete(lead, record(lead, Outcome.NO_ANSWER, 1.0), retry_at=3600.0)
            before = await s.counts("c1", 0.0)
        server.stop()
        server.start()
        async with RedisLeadStore.from_url(server.url, node_id="b") as s:
            assert await s.counts("c1", 0.0) == before
            assert (before.leads, before.due, before.scheduled, before.leased) == (50, 40, 4, 6)
            assert [r.outcome for r in await s.history("c1", leads[0].lead_id)] == [Outcome.NO_ANSWER]
            assert len([c async for c in s.cdrs("c1")]) == 4
    finally:
        server.stop()


async def test_store_requires_decoded_responses(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        with pytest.raises(LeadError, match="decode_responses=True"):
            RedisLeadStore(client)
    finally:
        await client.aclose()


# Command line -----------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dialer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_import_status_and_export(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALER_REDIS_URL", redis_url)  # the env var is the fallback for --redis-url
    assert run_cli("leads", "import", "c1", str(SAMPLE)) == 0
    assert capsys.readouterr().out == "c1: 200 rows: 200 imported, 0 already present, 0 rejected\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("number,first_name\n2125550100,Ann\n12,Bob\n4155550100,Cy\n")
    assert run_cli("leads", "import", "c1", str(bad), "--redis-url", redis_url) == 1
    out, err = capsys.readouterr()
    assert out == "c1: 3 rows: 1 imported, 1 already present, 1 rejected\n"
    assert err == f"{bad}: line 3: number '12' is not a valid phone number (default region US)\n"
    assert run_cli("leads", "status", "c1", "--json") == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == {"campaign": "c1", "leads": 201, "due": 201, "scheduled": 0, "leased": 0, "done": 0}
    assert run_cli("leads", "status", "c1", "--number", "(212) 555-0100", "--json") == 0
    lead = json.loads(capsys.readouterr().out)
    assert (lead["number"], lead["state"]) == ("+12125550100", "scheduled")
    assert lead["zones"] == ["America/New_York"]

    async def one_attempt() -> None:
        async with RedisLeadStore.from_url(redis_url) as s:
            [x] = await s.claim("c1", 1, time.time())
            await s.complete(x, record(x, Outcome.BUSY, time.time()), retry_at=None)

    asyncio.run(one_attempt())
    out_file = tmp_path / "cdr.jsonl"
    assert run_cli("cdr", "export", "--campaign", "c1", "--format", "jsonl", "--out", str(out_file),
                   "--since", "2000-01-01T00:00:00") == 0
    assert capsys.readouterr().err == "exported 1 CDRs of c1\n"
    [line] = out_file.read_text().splitlines()
    assert json.loads(line)["outcome"] == "busy"
    assert run_cli("leads", "status", "c1") == 0
    header, values = capsys.readouterr().out.splitlines()
    assert header.split() == ["campaign", "leads", "due", "scheduled", "leased", "done"]
    assert values.split() == ["c1", "201", "200", "0", "0", "1"]
    assert run_cli("leads", "status", "c1", "--lead-id", json.loads(line)["lead_id"]) == 0
    text = capsys.readouterr().out
    assert ": done, 1 attempts," in text and "last outcome busy" in text and "  zones: America/" in text
    assert run_cli("leads", "recycle", "c1", "--outcome", "busy", "--outcome", "no_answer") == 0
    assert capsys.readouterr().out == "c1: 1 leads back in the hopper\n"


def test_cli_rejects_bad_input_clearly(redis_url: str, tmp_path: Path) -> None:
    with pytest.raises(LeadError, match=r"cannot read lead file .*missing.csv: No such file or directory"):
        run_cli("leads", "import", "c1", str(tmp_path / "missing.csv"), "--redis-url", redis_url)
    with pytest.raises(LeadError, match=r"unknown default region 'ZZ'"):
        run_cli("leads", "import", "c1", str(SAMPLE), "--region", "ZZ", "--redis-url", redis_url)
    with pytest.raises(LeadError, match=r"--since: expected an ISO 8601 time .* got 'yesterday'"):
        run_cli("cdr", "export", "--campaign", "c1", "--since", "yesterday", "--redis-url", redis_url)
    with pytest.raises(LeadError, match=r"no lead 0000000000000000 in campaign c1"):
        run_cli("leads", "status", "c1", "--lead-id", "0000000000000000", "--redis-url", redis_url)
    with pytest.raises(LeadError, match=r"--number: number 'abc' cannot be parsed"):
        run_cli("leads", "status", "c1", "--number", "abc", "--redis-url", redis_url)


def test_cli_reports_unreachable_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    url = f"redis://user:secret@127.0.0.1:{port}/0"
    assert run_cli("leads", "status", "c1", "--redis-url", url) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dialer: Redis at redis://user:***@127.0.0.1:{port}/0: ") and "secret" not in err


async def test_disposition_after_completion_reaches_history_and_export(store: RedisLeadStore) -> None:
    await import_numbers(store, "c1", numbers(2))
    first, second = await store.claim("c1", 2, 0.0)
    rec = record(first, Outcome.LIVE, 10.0)
    rec.agent_id = None
    await store.complete(first, rec, retry_at=None)
    await store.complete(second, record(second, Outcome.BUSY, 11.0), retry_at=None)
    await store.set_disposition("c1", first.lead_id, rec.call_id, "callback_requested", agent_id="agent-3")
    [hist] = await store.history("c1", first.lead_id)
    assert (hist.disposition, hist.agent_id, hist.claimed_at) == ("callback_requested", "agent-3", 10.0)
    info = await store.lead_info("c1", first.lead_id)
    assert info is not None and info.disposition == "callback_requested"
    exported = {r.call_id: r async for _, r in store.cdrs("c1")}
    assert exported[rec.call_id].disposition == "callback_requested"
    assert exported[rec.call_id].agent_id == "agent-3"
    assert exported[f"call-{second.lead_id}-1"].disposition == ""
    assert await store.redis.xlen("dialer:{c1}:cdr") == 2  # the CDR stream stays append-only
    with pytest.raises(LeadError, match=r"has no attempt with call id 'nope'"):
        await store.set_disposition("c1", first.lead_id, "nope", "sale")
