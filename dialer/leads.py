"""Leads: the records the engine dials, the store interface, retry rules, lead files and call detail records.

`LeadStore` is what the engine needs. `MemoryLeadStore` serves the simulator and tests; the Redis
store (`dialer.leads_redis`, scale-out) implements the same protocol with leases shared across nodes.

Everything here is pure: no Redis, no event loop beyond the protocol's coroutines. Lead files are
parsed here (`read_lead_rows`) so the rules for what a valid row is are tested without a server.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import heapq
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import phonenumbers
from phonenumbers import timezone as phone_timezone

from dialer.config import RetryRule
from dialer.errors import LeadError
from dialer.outcomes import Outcome


@dataclass(frozen=True, slots=True)
class Lead:
    """A number to call for a campaign, with how often it has been attempted.

    `attempts` counts the attempts made *before* this claim, so the attempt being placed is
    `attempts + 1`. `zones` are the callee's candidate time zones derived at import (empty when the
    store does not know them). `lease` is the fencing token of the claim that produced this value
    (empty for stores without leases); `complete` must be given the same lead back.
    """

    lead_id: str
    campaign: str
    number: str  # E.164
    attempts: int = 0
    data: Mapping[str, str] = field(default_factory=dict)
    zones: tuple[str, ...] = ()
    lease: str = ""


@dataclass(slots=True)
class AttemptRecord:
    """One dial attempt from claim to end: the lead's attempt record and the CDR line."""

    call_id: str
    lead_id: str
    campaign: str
    number: str
    attempt: int
    claimed_at: float
    dialled_at: float | None = None
    answered_at: float | None = None
    answer_kind: str | None = None
    connected_at: float | None = None
    ended_at: float | None = None
    outcome: Outcome | None = None
    agent_id: str | None = None
    sip_status: int = 0
    reason: str = ""
    disposition: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON/CSV export."""
        return asdict(self)


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AttemptRecord))
"""Attempt record field names in declaration order: the CDR stream's fields and the export columns."""

_FLOAT_FIELDS = frozenset({"claimed_at", "dialled_at", "answered_at", "connected_at", "ended_at"})
_INT_FIELDS = frozenset({"attempt", "sip_status"})
_OPTIONAL_STR_FIELDS = frozenset({"answer_kind", "agent_id"})


def record_to_fields(record: AttemptRecord) -> list[str]:
    """Flatten a record to alternating field/value strings (None becomes ""), in `RECORD_FIELDS` order."""
    out: list[str] = []
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        out.append(name)
        out.append("" if value is None else (repr(value) if isinstance(value, float) else str(value)))
    return out


def record_from_mapping(raw: Mapping[str, Any]) -> AttemptRecord:
    """Rebuild a record from stored strings or JSON values; "" and missing optional fields become None.

    Tolerant of numbers stored as strings because records written by Lua scripts carry strings only.
    """
    values: dict[str, Any] = {}
    try:
        for name in RECORD_FIELDS:
            value = raw.get(name)
            if name in _FLOAT_FIELDS:
                values[name] = None if value in (None, "") else float(value)
            elif name in _INT_FIELDS:
                values[name] = 0 if value in (None, "") else int(float(value))
            elif name == "outcome":
                values[name] = None if value in (None, "") else Outcome(value)
            elif name in _OPTIONAL_STR_FIELDS:
                values[name] = None if value in (None, "") else str(value)
            else:
                values[name] = "" if value is None else str(value)
    except ValueError as exc:
        raise LeadError(f"stored attempt record is corrupt: {exc}") from None
    if values["claimed_at"] is None:
        values["claimed_at"] = 0.0
    return AttemptRecord(**values)


def next_attempt_at(outcome: Outcome, attempts: int, rules: Mapping[Outcome, RetryRule],
                    now: float) -> float | None:
    """When to dial the lead again after `attempts` attempts ending in `outcome`, or None if done."""
    rule = rules.get(outcome)
    if rule is None or attempts >= rule.max_attempts:
        return None
    return now + rule.delay_s


class LeaseLostError(LeadError):
    """An attempt cannot be recorded: the lead's lease expired or passed to another node.

    The store already accounted for that attempt when the lease expired (as a failed attempt with
    reason `lease_expired`), and the lead may be with another node by now: recording it again would
    count one attempt twice.
    """

    def __init__(self, campaign: str, lead_id: str, why: str) -> None:
        self.campaign = campaign
        self.lead_id = lead_id
        self.why = why
        super().__init__(f"lead {lead_id} of campaign {campaign}: lease lost ({why}); attempt not recorded")


class LeadStore(Protocol):
    """Claims leads for dialing and records what became of each attempt."""

    async def claim(self, campaign: str, count: int, now: float) -> list[Lead]:
        """Lease up to `count` leads due at `now`; each is claimed by this node alone."""
        ...

    async def complete(self, lead: Lead, record: AttemptRecord, retry_at: float | None) -> None:
        """Record the attempt, release the lease, and reschedule the lead at `retry_at` (or finish it).

        A store with leases refuses (raises `LeaseLostError`) when the lead's lease has expired or
        passed to another node: the attempt was already accounted for by the lease's expiry and must
        not be recorded twice.
        """
        ...

    async def schedule_callback(self, campaign: str, lead_id: str, at: float) -> None:
        """Dial the lead again at epoch `at` (an agent-set callback)."""
        ...


class MemoryLeadStore:
    """An in-process hopper: a schedule of due leads, optionally refilled by a generator."""

    def __init__(self, generator: Callable[[str, int], Lead] | None = None) -> None:
        self._due: dict[str, list[tuple[float, int, Lead]]] = {}
        self._leads: dict[str, Lead] = {}
        self._claimed: set[str] = set()
        self._seq = itertools.count()
        self._generator = generator
        self._generated: dict[str, int] = {}
        self.records: list[AttemptRecord] = []

    def add(self, lead: Lead, at: float = 0.0) -> None:
        """Put a lead in the hopper, due at `at`."""
        self._leads[lead.lead_id] = lead
        heapq.heappush(self._due.setdefault(lead.campaign, []), (at, next(self._seq), lead))

    async def claim(self, campaign: str, count: int, now: float) -> list[Lead]:
        out: list[Lead] = []
        due = self._due.setdefault(campaign, [])
        while len(out) < count and due and due[0][0] <= now:
            _, _, lead = heapq.heappop(due)
            self._claimed.add(lead.lead_id)
            out.append(lead)
        while len(out) < count and self._generator is not None:
            n = self._generated.get(campaign, 0)
            self._generated[campaign] = n + 1
            lead = self._generator(campaign, n)
            self._leads[lead.lead_id] = lead
            self._claimed.add(lead.lead_id)
            out.append(lead)
        return out

    async def complete(self, lead: Lead, record: AttemptRecord, retry_at: float | None) -> None:
        self._claimed.discard(lead.lead_id)
        self.records.append(record)
        updated = dataclasses.replace(lead, attempts=record.attempt)
        self._leads[lead.lead_id] = updated
        if retry_at is not None:
            heapq.heappush(self._due.setdefault(lead.campaign, []), (retry_at, next(self._seq), updated))

    async def schedule_callback(self, campaign: str, lead_id: str, at: float) -> None:
        lead = self._leads.get(lead_id)
        if lead is None or lead.campaign != campaign:
            raise LeadError(f"no lead {lead_id!r} in campaign {campaign!r}")
        heapq.heappush(self._due.setdefault(campaign, []), (at, next(self._seq), lead))

    async def set_disposition(self, campaign: str, lead_id: str, call_id: str, disposition: str, *,
                              agent_id: str | None = None) -> None:
        """Record a disposition given after the attempt was completed (e.g. at the end of wrap-up)."""
        for record in reversed(self.records):
            if record.call_id == call_id and record.lead_id == lead_id and record.campaign == campaign:
                record.disposition = disposition
                record.agent_id = record.agent_id or agent_id
                return
        raise LeadError(f"lead {lead_id} of campaign {campaign} has no attempt with call id {call_id!r}")

    def pending(self, campaign: str) -> int:
        """Leads waiting in the hopper (due or not), excluding claimed ones."""
        return len(self._due.get(campaign, ()))


# Lead files ---------------------------------------------------------------------------------------

NUMBER_COLUMN = "number"
"""The one required column of a lead file; every other column is kept as lead data."""

UNKNOWN_ZONE = "Etc/Unknown"


def lead_id_for(campaign: str, number_e164: str) -> str:
    """The lead id of a number in a campaign: stable, so re-importing a file finds the same leads.

    A hash rather than the number itself so that ids can appear in logs without exposing numbers.
    """
    digest = hashlib.blake2b(f"{campaign}\0{number_e164}".encode(), digest_size=8)
    return digest.hexdigest()


def check_region(region: str) -> str:
    """Validate an ISO 3166 region code for parsing national numbers (upper-cased)."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise LeadError(f"unknown default region {region!r}: expected an ISO 3166 code such as US, GB, CA")
    return code


def normalize_number(raw: str, default_region: str) -> tuple[str, tuple[str, ...]]:
    """Parse a dialable number to E.164 and its candidate time zones.

    Raises `LeadError` with the reason a row is rejected: empty, unparseable, not a valid number, or
    no known time zone (the calling-hours check could never clear such a number).
    """
    text = raw.strip()
    if not text:
        raise LeadError("number is empty")
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        why = re.sub(r"^\(\d+\)\s*", "", str(exc)).rstrip(".")  # drop the "(1) " error-type prefix
        raise LeadError(f"number {text!r} cannot be parsed: {why}") from None
    if not phonenumbers.is_valid_number(parsed):
        raise LeadError(f"number {text!r} is not a valid phone number (default region {default_region})")
    zones = tuple(z for z in phone_timezone.time_zones_for_number(parsed) if z != UNKNOWN_ZONE)
    if not zones:
        raise LeadError(f"number {text!r} has no known time zone, so calling hours cannot be checked")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), zones


@dataclass(frozen=True, slots=True)
class LeadRow:
    """One valid row of a lead file."""

    line: int
    number: str  # E.164
    zones: tuple[str, ...]
    data: dict[str, str]


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row of a lead file: the physical line it starts on and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class _Lines:
    """Decodes a byte stream line by line, counting lines and noting those that are not UTF-8.

    Decoding per line (not the whole stream) lets one bad line become one rejected row instead of
    aborting the import.
    """

    def __init__(self, source: Iterable[bytes]) -> None:
        self._source = iter(source)
        self.count = 0
        self.bad: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = next(self._source)
        self.count += 1
        if self.count == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark
            raw = raw[3:]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad.add(self.count)
            return raw.decode("utf-8", errors="replace")


def _header(fields: list[str]) -> list[str]:
    names = [f.strip().lower() for f in fields]
    problems = []
    for i, name in enumerate(names, start=1):
        if not name:
            problems.append(f"column {i} has no name")
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        problems.append("duplicate column names: " + ", ".join(dupes))
    if NUMBER_COLUMN not in names:
        problems.append(f"no {NUMBER_COLUMN!r} column (found: {', '.join(n for n in names if n) or 'none'})")
    if problems:
        raise LeadError("lead file header (line 1): " + "; ".join(problems))
    return names


def read_lead_rows(source: Iterable[bytes], default_region: str = "US") -> Iterator[LeadRow | RowError]:
    """Stream the rows of a CSV lead file: each valid row as `LeadRow`, each bad one as `RowError`.

    The first line is the header; column names are trimmed and lower-cased, `number` is required,
    every other column is kept as lead data. Blank lines are skipped. Rows are never dropped
    silently: each yields a row or an error with its starting line number. A bad header raises
    `LeadError` (nothing can be imported). Duplicates are not detected here (the store does it,
    so re-imports and concurrent imports agree); `source` is read lazily, line by line.
    """
    region = check_region(default_region)
    lines = _Lines(source)
    reader = csv.reader(lines, strict=True)
    try:
        first = next(reader)
    except StopIteration:
        raise LeadError("lead file is empty: expected a header line with a 'number' column") from None
    except csv.Error as exc:
        raise LeadError(f"lead file header (line 1): malformed CSV: {exc}") from None
    if 1 in lines.bad:
        raise LeadError("lead file header (line 1): not valid UTF-8 text")
    names = _header(first)
    number_index = names.index(NUMBER_COLUMN)
    while True:
        start = lines.count + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = lines.count
            span = f" (the row spans lines {start}-{end}: unbalanced quote?)" if end > start else ""
            yield RowError(start, f"malformed CSV: {exc}{span}")
            continue
        end = lines.count
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # a blank line carries no lead
        if any(start <= n <= end for n in lines.bad):
            yield RowError(start, "not valid UTF-8 text")
            continue
        if len(fields) != len(names):
            span = f" (the row spans lines {start}-{end}: unbalanced quote?)" if end > start else ""
            yield RowError(start, f"expected {len(names)} fields, found {len(fields)}{span}")
            continue
        try:
            number, zones = normalize_number(fields[number_index], region)
        except LeadError as exc:
            yield RowError(start, str(exc))
            continue
        data = {name: value for i, (name, value) in enumerate(zip(names, fields, strict=True))
                if i != number_index}
        yield LeadRow(start, number, zones, data)
