"""Unit tests of the pure lead logic: retry rules, lead file parsing, record round trips, memory store."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialer.config import DEFAULT_RETRY, RetryRule
from dialer.errors import LeadError
from dialer.leads import (
    RECORD_FIELDS,
    AttemptRecord,
    Lead,
    LeadRow,
    MemoryLeadStore,
    RowError,
    lead_id_for,
    next_attempt_at,
    normalize_number,
    read_lead_rows,
    record_from_mapping,
    record_to_fields,
)
from dialer.outcomes import Outcome

SAMPLE = Path(__file__).resolve().parents[1] / "config" / "leads" / "sample.csv"


def rows(text: str | bytes, region: str = "US") -> list[LeadRow | RowError]:
    data = text.encode() if isinstance(text, str) else text
    return list(read_lead_rows(data.splitlines(keepends=True), region))


def errors(items: list[LeadRow | RowError]) -> list[str]:
    return [str(i) for i in items if isinstance(i, RowError)]


# Retry rules ------------------------------------------------------------------------------------


def test_next_attempt_at_follows_the_outcome_rule_until_max_attempts() -> None:
    rules = {Outcome.BUSY: RetryRule(max_attempts=3, delay_s=900)}
    assert next_attempt_at(Outcome.BUSY, 1, rules, 1000.0) == 1900.0
    assert next_attempt_at(Outcome.BUSY, 2, rules, 1000.0) == 1900.0
    assert next_attempt_at(Outcome.BUSY, 3, rules, 1000.0) is None  # max_attempts counts the first


def test_next_attempt_at_finishes_outcomes_without_a_rule() -> None:
    assert next_attempt_at(Outcome.LIVE, 1, DEFAULT_RETRY, 0.0) is None
    assert next_attempt_at(Outcome.OPTED_OUT, 1, DEFAULT_RETRY, 0.0) is None
    assert next_attempt_at(Outcome.ABANDONED, 1, DEFAULT_RETRY, 0.0) == 72 * 3600  # Ofcom 72 h protection


# Numbers ----------------------------------------------------------------------------------------


def test_normalize_number_gives_e164_and_zones() -> None:
    assert normalize_number(" (212) 555-0100 ", "US") == ("+12125550100", ("America/New_York",))
    assert normalize_number("+1 206 555 0100", "GB") == ("+12065550100", ("America/Los_Angeles",))
    assert normalize_number("020 7946 0123", "GB") == ("+442079460123", ("Europe/London",))
    number, zones = normalize_number("+1 800 555 0100", "US")  # toll-free: every NANP zone is a candidate
    assert number == "+18005550100" and len(zones) > 10 and "America/New_York" in zones


@pytest.mark.parametrize(("raw", "message"), [
    ("", "number is empty"),
    ("n/a", "number 'n/a' cannot be parsed: The string supplied did not seem to be a phone number"),
    ("555-01", "number '555-01' is not a valid phone number (default region US)"),
    ("+999 123", "number '+999 123' cannot be parsed: Could not interpret numbers after plus-sign"),
])
def test_normalize_number_rejects_with_the_reason(raw: str, message: str) -> None:
    with pytest.raises(LeadError) as info:
        normalize_number(raw, "US")
    assert str(info.value) == message


def test_lead_id_is_stable_per_campaign_and_hides_the_number() -> None:
    a = lead_id_for("c1", "+12125550100")
    assert a == lead_id_for("c1", "+12125550100")
    assert a != lead_id_for("c2", "+12125550100")
    assert a != lead_id_for("c1", "+12125550101")
    assert len(a) == 16 and "2125550100" not in a


# Lead files -------------------------------------------------------------------------------------


def test_rows_keep_free_columns_as_data_with_lowercased_names() -> None:
    items = rows("Number , First_Name,last_name,Plan\n+12125550100,Ann,Lee,gold\n")
    assert items == [LeadRow(2, "+12125550100", ("America/New_York",),
                             {"first_name": "Ann", "last_name": "Lee", "plan": "gold"})]


def test_default_region_applies_to_national_numbers() -> None:
    items = rows("number\n020 7946 0123\n", region="gb")
    assert isinstance(items[0], LeadRow) and items[0].number == "+442079460123"


def test_every_bad_row_is_reported_with_its_line_number() -> None:
    text = (
        b"number,first_name\n"           # 1
        b"2125550100,Ann\n"              # 2 ok
        b'"x"y,Bob\n'                    # 3 bad quoting
        b'2125550101,"Car\nol"\n'        # 4-5 ok, quoted newline
        b"2125550102,Dan,extra\n"        # 6 too many fields
        b"\n"                            # 7 blank: skipped
        b"\xff\xfe,Eve\n"                # 8 not UTF-8
        b"n/a,Fay\n"                     # 9 unparseable
        b",Gus\n"                        # 10 empty number
        b"2125550103\n"                  # 11 too few fields
        b"2125550104,Hal\n"              # 12 ok
        b'2125550105,"unterminated\n'    # 13 quote never closed...
        b"2125550106,Ivy\n"              # 14 ...swallows this line
    )
    items = rows(text)
    assert [(i.line, i.number) for i in items if isinstance(i, LeadRow)] == [
        (2, "+12125550100"), (4, "+12125550101"), (12, "+12125550104")]
    assert errors(items) == [
        "line 3: malformed CSV: ',' expected after '\"'",
        "line 6: expected 2 fields, found 3",
        "line 8: not valid UTF-8 text",
        "line 9: number 'n/a' cannot be parsed: The string supplied did not seem to be a phone number",
        "line 10: number is empty",
        "line 11: expected 2 fields, found 1",
        "line 13: malformed CSV: unexpected end of data (the row spans lines 13-14: unbalanced quote?)",
    ]
    data_rows = [i for i in items if isinstance(i, LeadRow)]
    assert data_rows[1].data == {"first_name": "Car\nol"}


def test_byte_order_mark_and_crlf_are_accepted() -> None:
    items = rows(b"\xef\xbb\xbfnumber,first_name\r\n2125550100,Ann\r\n")
    assert items == [LeadRow(2, "+12125550100", ("America/New_York",), {"first_name": "Ann"})]


@pytest.mark.parametrize(("text", "message"), [
    (b"", "lead file is empty: expected a header line with a 'number' column"),
    (b"phone,first_name\n1,a\n", "lead file header (line 1): no 'number' column (found: phone, first_name)"),
    (b"number,Name,name\n", "lead file header (line 1): duplicate column names: name"),
    (b"number,,x\n", "lead file header (line 1): column 2 has no name"),
    (b"\xffnumber\n", "lead file header (line 1): not valid UTF-8 text"),
])
def test_unusable_header_raises(text: bytes, message: str) -> None:
    with pytest.raises(LeadError) as info:
        rows(text)
    assert str(info.value) == message


def test_unknown_default_region_raises() -> None:
    with pytest.raises(LeadError, match=r"unknown default region 'XX': expected an ISO 3166 code"):
        rows("number\n2125550100\n", region="XX")


def test_sample_file_is_all_valid_fictional_numbers() -> None:
    with SAMPLE.open("rb") as fh:
        items = list(read_lead_rows(fh))
    leads = [i for i in items if isinstance(i, LeadRow)]
    assert len(items) == len(leads) == 200
    assert len({lead.number for lead in leads}) == 200
    assert all(lead.number[5:9] == "5550" and lead.number[9] == "1" for lead in leads)  # 555-01xx only
    assert {"first_name", "last_name"} <= set(leads[0].data)


# Records ----------------------------------------------------------------------------------------


def test_record_fields_round_trip() -> None:
    rec = AttemptRecord("call-1", "L1", "c1", "+12125550100", 2, 1000.25, dialled_at=1000.5,
                        answered_at=1010.125, answer_kind="human", connected_at=1010.75, ended_at=1100.0,
                        outcome=Outcome.LIVE, agent_id="a7", sip_status=200, reason="", disposition="sale")
    flat = record_to_fields(rec)
    assert flat[0::2] == list(RECORD_FIELDS)
    assert record_from_mapping(dict(zip(flat[0::2], flat[1::2], strict=True))) == rec
    assert record_from_mapping(rec.as_dict()) == rec
    empty = AttemptRecord("c", "L", "x", "+1", 1, 5.0)
    flat = record_to_fields(empty)
    assert record_from_mapping(dict(zip(flat[0::2], flat[1::2], strict=True))) == empty


def test_corrupt_record_raises() -> None:
    with pytest.raises(LeadError, match="stored attempt record is corrupt"):
        record_from_mapping({"attempt": "two", "claimed_at": "1"})


# Memory store -----------------------------------------------------------------------------------


async def test_memory_store_claims_due_leads_in_order_and_reschedules() -> None:
    store = MemoryLeadStore()
    a, b, c = (Lead(f"L{i}", "c1", f"+1212555010{i}") for i in range(3))
    store.add(b, at=20.0)
    store.add(a, at=10.0)
    store.add(c, at=100.0)
    assert await store.claim("c1", 5, 5.0) == []
    assert [x.lead_id for x in await store.claim("c1", 5, 50.0)] == ["L0", "L1"]
    rec = AttemptRecord("call", "L0", "c1", a.number, 1, 50.0, outcome=Outcome.BUSY)
    await store.complete(a, rec, retry_at=60.0)
    assert store.records == [rec]
    again = await store.claim("c1", 5, 60.0)
    assert [(x.lead_id, x.attempts) for x in again] == [("L0", 1)]
    await store.complete(b, AttemptRecord("call2", "L1", "c1", b.number, 1, 50.0), retry_at=None)
    assert store.pending("c1") == 1  # only c, due at 100


async def test_memory_store_callback_and_unknown_lead() -> None:
    store = MemoryLeadStore()
    lead = Lead("L0", "c1", "+12125550100")
    store.add(lead)
    [claimed] = await store.claim("c1", 1, 0.0)
    await store.complete(claimed, AttemptRecord("x", "L0", "c1", lead.number, 1, 0.0), retry_at=None)
    await store.schedule_callback("c1", "L0", 500.0)
    assert await store.claim("c1", 1, 499.0) == []
    assert [x.attempts for x in await store.claim("c1", 1, 500.0)] == [1]
    with pytest.raises(LeadError, match="no lead 'nope' in campaign 'c1'"):
        await store.schedule_callback("c1", "nope", 1.0)


async def test_memory_store_generator_refills() -> None:
    store = MemoryLeadStore(generator=lambda campaign, n: Lead(f"g{n}", campaign, f"+1212555{n:04d}"))
    assert [x.lead_id for x in await store.claim("c1", 3, 0.0)] == ["g0", "g1", "g2"]


async def test_memory_store_disposition_after_completion() -> None:
    store = MemoryLeadStore()
    lead = Lead("L0", "c1", "+12125550100")
    store.add(lead)
    [claimed] = await store.claim("c1", 1, 0.0)
    await store.complete(claimed, AttemptRecord("call-1", "L0", "c1", lead.number, 1, 0.0), retry_at=None)
    await store.set_disposition("c1", "L0", "call-1", "sale", agent_id="a1")
    assert (store.records[0].disposition, store.records[0].agent_id) == ("sale", "a1")
    with pytest.raises(LeadError, match="has no attempt with call id 'call-2'"):
        await store.set_disposition("c1", "L0", "call-2", "sale")
