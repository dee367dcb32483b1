"""The lead store on Redis, shared by every dialer node: import, hopper, leases, retries, callbacks, CDRs.

Keys of campaign C (the `{C}` hash tag keeps a campaign's keys in one Cluster slot):

- `dialer:{C}:lead:<id>` hash: number, zones, `d:<column>` per data column (short separate fields
  keep the hash in Redis's compact listpack encoding: half the memory of one long JSON value),
  attempts, state (scheduled|leased|done), due_at; while leased: token, node, lease_until (Redis
  server ms), claimed_at; afterwards outcome, disposition, callback_at, lease_losses, done_seq (the
  lease sequence number whose attempt was recorded last: a retried completion is not written twice).
- `dialer:{C}:hopper` sorted set: scheduled lead ids by next-attempt time (the caller's epoch clock).
- `dialer:{C}:leases` sorted set: leased lead ids by lease expiry (Redis server clock, ms).
- `dialer:{C}:done` set: finished lead ids. `dialer:{C}:meta` hash: lead count, lease sequence.
- `dialer:{C}:hist:<id>` string: the lead's attempt records, one compact JSON object per line, oldest
  first (an appended string costs about half the memory of a one-item list).
- `dialer:{C}:cdr` stream: one entry per attempt record, trimmed by the configured retention.
- `dialer:{C}:dispositions` stream: dispositions set after their attempt was recorded (an agent's
  wrap-up); exports merge them into the CDR lines, so the CDR stream itself stays append-only.
- `dialer:{C}:import:<random>` hash: lead id -> first line, for duplicates within one import; deleted
  at its end (expires after a day if the importer dies).
- `dialer:campaigns` set: campaigns that have leads (the reaper walks it).
- `dialer:{C}:claim:<store>:<n>` list: one claim's (lead id, lease sequence) pairs, kept for a lease, so a
  retried claim (its reply lost to a Redis restart) returns the same leads instead of leasing more.

Every state change is one Lua script, so a lead is in exactly one of hopper, leases or done, and a
lead is leased by one node at a time. Lease expiry is measured on the Redis server's clock, never a
node's, so nodes with skewed clocks still agree on who holds what. Due times are the caller's clock
(the engine's `now`), which in production is epoch seconds on NTP-synchronised hosts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Self, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from dialer.errors import LeadError
from dialer.leads import (
    RECORD_FIELDS,
    AttemptRecord,
    Lead,
    LeadRow,
    LeaseLostError,
    RowError,
    lead_id_for,
    read_lead_rows,
    record_from_mapping,
    record_to_fields,
)
from dialer.outcomes import Outcome

log = structlog.get_logger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
CAMPAIGN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
DATA_PREFIX = "d:"
"""Lead data columns are stored as hash fields with this prefix, apart from the store's own fields."""
IMPORT_SEEN_TTL_S = 86400
"""An import's duplicate-detection hash is deleted at the end; the TTL cleans up after a crash."""

_NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_APPEND_LINE = """
-- SET for the first line: APPEND over-allocates (it doubles the buffer), SET stores the exact size.
local function append_line(key, line)
  if redis.call('EXISTS', key) == 0 then
    redis.call('SET', key, line .. '\\n')
  else
    redis.call('APPEND', key, line .. '\\n')
  end
end
"""

_XADD = """
local function xadd(key, kind, value, now, fields)
  local args = {key}
  if kind == 'maxlen' then
    args = {key, 'MAXLEN', '~', value}
  elseif kind == 'minid' then
    args = {key, 'MINID', '~', string.format('%d', now - tonumber(value))}
  end
  args[#args + 1] = '*'
  for _, v in ipairs(fields) do args[#args + 1] = v end
  return redis.call('XADD', unpack(args))
end
"""

# KEYS: hopper, meta, seen (this import's id -> first line), campaigns
# ARGV: lead key prefix, due_at, campaign, seen ttl, then per row: id, line, number, zones, n, and n
#       data field/value pairs (field names already prefixed `d:`)
_IMPORT = """
local out, created = {}, 0
local i = 5
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 4])
  if redis.call('HSETNX', KEYS[3], id, ARGV[i + 1]) == 0 then
    out[#out + 1] = 'dup:' .. redis.call('HGET', KEYS[3], id)
  else
    local key = ARGV[1] .. id
    if redis.call('EXISTS', key) == 1 then
      out[#out + 1] = 'existing'
    else
      local fields = {'number', ARGV[i + 2], 'zones', ARGV[i + 3], 'attempts', 0, 'state', 'scheduled',
                      'due_at', ARGV[2]}
      for j = i + 5, i + 4 + 2 * n do fields[#fields + 1] = ARGV[j] end
      redis.call('HSET', key, unpack(fields))
      redis.call('ZADD', KEYS[1], ARGV[2], id)
      created = created + 1
      out[#out + 1] = 'new'
    end
  end
  i = i + 5 + 2 * n
end
redis.call('EXPIRE', KEYS[3], ARGV[4])
if created > 0 then redis.call('HINCRBY', KEYS[2], 'leads', created) end
redis.call('SADD', KEYS[4], ARGV[3])
return out
"""

# KEYS: hopper, leases, meta, receipt
# ARGV: due cutoff (caller clock), count, lease ms, node, lead key prefix, claimed_at (caller clock)
# The receipt (the claim's lead id and lease sequence pairs, kept for a lease) makes the claim idempotent: a
# client retry of a claim whose reply was lost (Redis stopped right after running it) gets the same leads
# back instead of leasing more while the first ones sit unknown until their leases expire.
_CLAIM = _NOW_MS + """
local function row(id, token)
  local key = ARGV[5] .. id
  local lead = {id, token, 0, '', ''}
  local all = redis.call('HGETALL', key)
  for j = 1, #all, 2 do
    local name = all[j]
    if name == 'attempts' then lead[3] = tonumber(all[j + 1]) - 1
    elseif name == 'number' then lead[4] = all[j + 1]
    elseif name == 'zones' then lead[5] = all[j + 1]
    elseif string.sub(name, 1, 2) == 'd:' then
      lead[#lead + 1] = string.sub(name, 3)
      lead[#lead + 1] = all[j + 1]
    end
  end
  return lead
end
local out = {}
local done = redis.call('LRANGE', KEYS[4], 0, -1)
if #done > 0 then
  for i = 1, #done, 2 do
    local token = ARGV[4] .. '/' .. done[i + 1]
    local f = redis.call('HMGET', ARGV[5] .. done[i], 'state', 'token')
    if f[1] == 'leased' and f[2] == token then out[#out + 1] = row(done[i], token) end
  end
  return out
end
local lease_until = now_ms() + tonumber(ARGV[3])
local hits = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]),
                        'WITHSCORES')
for i = 1, #hits, 2 do
  local id, due = hits[i], hits[i + 1]
  local key = ARGV[5] .. id
  redis.call('ZREM', KEYS[1], id)
  if redis.call('HGET', key, 'state') == 'scheduled' then
    -- The attempt number is taken here, at claim: whatever happens to this node, the next claim of
    -- the lead gets a new number, so no attempt number is ever dialled twice.
    redis.call('HINCRBY', key, 'attempts', 1)
    local seq = redis.call('HINCRBY', KEYS[3], 'lease_seq', 1)
    local token = ARGV[4] .. '/' .. seq
    redis.call('HSET', key, 'state', 'leased', 'token', token, 'node', ARGV[4], 'lease_until', lease_until,
               'due_at', due, 'claimed_at', ARGV[6])
    redis.call('ZADD', KEYS[2], lease_until, id)
    redis.call('RPUSH', KEYS[4], id, seq)
    out[#out + 1] = row(id, token)
  end
end
if #out > 0 then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
return out
"""

# KEYS: lead, hopper, leases, done, hist, cdr
# ARGV: id, token, retry_at ('' = finished), outcome, disposition, record json, trim kind, trim value,
#       record's attempt number, then the CDR's field/value pairs
_COMPLETE = _NOW_MS + _XADD + _APPEND_LINE + """
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'state', 'token', 'lease_until', 'callback_at', 'attempts',
                     'done_seq')
-- A client retry of a completion whose reply was lost (Redis stopped after running it): already recorded.
-- A token is '<node>/<campaign lease sequence>', so the sequence number alone identifies the lease.
local seq = string.match(ARGV[2], '/(%d+)$')
if seq and f[6] == seq then return {'ok', 'repeat'} end
if f[1] ~= 'leased' or f[2] ~= ARGV[2] then return {'lost', f[1] or 'missing'} end
if tonumber(f[3]) < now then return {'lost', 'expired'} end
redis.call('ZREM', KEYS[3], ARGV[1])
append_line(KEYS[5], ARGV[6])
local cdr = {}
for i = 10, #ARGV do cdr[#cdr + 1] = ARGV[i] end
xadd(KEYS[6], ARGV[7], ARGV[8], now, cdr)
-- An attempt that was never dialled (the gate blocked it) gives its number back.
if tonumber(ARGV[9]) < tonumber(f[5]) then redis.call('HSET', KEYS[1], 'attempts', ARGV[9]) end
local nxt = ARGV[3]
if f[4] then
  nxt = f[4]  -- a callback set during the call wins over the retry rules
  redis.call('HDEL', KEYS[1], 'callback_at')
end
redis.call('HDEL', KEYS[1], 'token', 'node', 'lease_until', 'claimed_at')
redis.call('HSET', KEYS[1], 'outcome', ARGV[4], 'disposition', ARGV[5], 'done_seq', seq or '')
if nxt ~= '' then
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'due_at', nxt)
  redis.call('ZADD', KEYS[2], nxt, ARGV[1])
else
  redis.call('HSET', KEYS[1], 'state', 'done')
  redis.call('HDEL', KEYS[1], 'due_at')
  redis.call('SADD', KEYS[4], ARGV[1])
end
return {'ok', nxt}
"""

# KEYS: leases; ARGV: lease ms, lead key prefix, then (id, token) pairs. Returns the ids not renewed.
_RENEW = _NOW_MS + """
local now = now_ms()
local lease_until = now + tonumber(ARGV[1])
local lost = {}
for i = 3, #ARGV, 2 do
  local key = ARGV[2] .. ARGV[i]
  local f = redis.call('HMGET', key, 'state', 'token', 'lease_until')
  if f[1] == 'leased' and f[2] == ARGV[i + 1] and tonumber(f[3]) >= now then
    redis.call('HSET', key, 'lease_until', lease_until)
    redis.call('ZADD', KEYS[1], lease_until, ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# KEYS: leases, hopper, done, cdr
# ARGV: lead key prefix, hist key prefix, max lease losses, campaign, trim kind, trim value, limit,
#       then the record field names in order
_REAP = _NOW_MS + _XADD + _APPEND_LINE + """
local now = now_ms()
local ids = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[7]))
local requeued, finished = 0, 0
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  local f = redis.call('HMGET', key, 'state', 'token', 'lease_until', 'attempts', 'due_at', 'number',
                       'claimed_at', 'callback_at')
  if f[1] == 'leased' and tonumber(f[3]) <= now then
    local losses = redis.call('HINCRBY', key, 'lease_losses', 1)
    -- The holder vanished: its attempt is recorded as failed so attempt records and CDRs still
    -- account for every attempt number handed out.
    local rec = {call_id = 'lease:' .. f[2], lead_id = id, campaign = ARGV[4], number = f[6], attempt = f[4],
                 claimed_at = f[7] or '', ended_at = string.format('%.3f', now / 1000), outcome = 'failed',
                 sip_status = '0', reason = 'lease_expired'}
    local obj, cdr = {}, {}
    for i = 8, #ARGV do
      local name, v = ARGV[i], rec[ARGV[i]] or ''
      if v ~= '' and name ~= 'lead_id' and name ~= 'campaign' and name ~= 'number' then obj[name] = v end
      cdr[#cdr + 1] = name
      cdr[#cdr + 1] = v
    end
    append_line(ARGV[2] .. id, cjson.encode(obj))
    xadd(KEYS[4], ARGV[5], ARGV[6], now, cdr)
    redis.call('HDEL', key, 'token', 'node', 'lease_until', 'claimed_at', 'callback_at')
    redis.call('HSET', key, 'outcome', 'failed', 'disposition', '')
    local nxt = f[8] or f[5]
    if losses >= tonumber(ARGV[3]) or not nxt then
      redis.call('HSET', key, 'state', 'done')
      redis.call('HDEL', key, 'due_at')
      redis.call('SADD', KEYS[3], id)
      finished = finished + 1
    else
      redis.call('HSET', key, 'state', 'scheduled', 'due_at', nxt)
      redis.call('ZADD', KEYS[2], nxt, id)
      requeued = requeued + 1
    end
  end
end
return {requeued, finished}
"""

# KEYS: lead, hopper, done; ARGV: id, at
_CALLBACK = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'leased' then
  redis.call('HSET', KEYS[1], 'callback_at', ARGV[2])
  return 'pending'
end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'scheduled', 'due_at', ARGV[2])
return 'scheduled'
"""

# KEYS: hopper, done; ARGV: lead key prefix, at, ',outcome,outcome,', then ids
_RECYCLE = """
local n = 0
for i = 4, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  local f = redis.call('HMGET', key, 'state', 'outcome')
  if f[1] == 'done' and string.find(ARGV[3], ',' .. (f[2] or '') .. ',', 1, true) then
    redis.call('SREM', KEYS[2], ARGV[i])
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    redis.call('HSET', key, 'state', 'scheduled', 'due_at', ARGV[2])
    redis.call('HDEL', key, 'lease_losses')
    n = n + 1
  end
end
return n
"""


@dataclass(frozen=True, slots=True)
class CdrRetention:
    """How much of the CDR stream Redis keeps: at most `max_len` entries, or `max_age_s` seconds.

    Trimming is approximate (`~`), which keeps XADD O(1). Default: keep everything. Dispositions must
    be kept for years (FTC: 5), so trim only what has been exported elsewhere.
    """

    max_len: int | None = None
    max_age_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_age_s is not None:
            raise LeadError("CDR retention: give max_len or max_age_s, not both")
        if self.max_len is not None and self.max_len < 1:
            raise LeadError(f"CDR retention: max_len must be at least 1, got {self.max_len}")
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise LeadError(f"CDR retention: max_age_s must be positive, got {self.max_age_s}")

    def trim_args(self) -> tuple[str, str]:
        """The (kind, value) pair the Lua scripts pass to XADD."""
        if self.max_len is not None:
            return "maxlen", str(self.max_len)
        if self.max_age_s is not None:
            return "minid", str(round(self.max_age_s * 1000))
        return "none", ""


@dataclass(slots=True)
class ImportReport:
    """What an import did. Every data row is counted in exactly one of imported, existing, rejected."""

    campaign: str
    rows: int = 0
    imported: int = 0
    existing: int = 0  # already in the campaign from an earlier import: left as they are
    rejected: int = 0
    errors: list[RowError] = field(default_factory=list)  # filled when no `on_error` callback is given


@dataclass(frozen=True, slots=True)
class CampaignCounts:
    """Where a campaign's leads are: due now, scheduled later, leased by a node, or done."""

    campaign: str
    leads: int
    due: int
    scheduled: int
    leased: int
    done: int


LeadState = Literal["scheduled", "leased", "done"]


@dataclass(frozen=True, slots=True)
class LeadInfo:
    """A lead's current state and its attempt history."""

    lead: Lead
    state: LeadState
    due_at: float | None
    lease_node: str | None
    last_outcome: Outcome | None
    disposition: str
    callback_at: float | None
    history: list[AttemptRecord]


_IMPLIED_BY_KEY = frozenset({"lead_id", "campaign", "number"})


def _history_json(record: AttemptRecord) -> str:
    """A history entry: the record without what its key implies and without empty fields (memory)."""
    compact = {k: v for k, v in record.as_dict().items() if k not in _IMPLIED_BY_KEY and v not in (None, "")}
    return json.dumps(compact, separators=(",", ":"))


def _check_campaign(campaign: str) -> str:
    if not CAMPAIGN_NAME.match(campaign):
        raise LeadError(f"invalid campaign name {campaign!r}: letters, digits, '_', '.', '-' only")
    return campaign


def _default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class RedisLeadStore:
    """`LeadStore` on Redis: any number of nodes claim from one hopper, each lead by one node at a time.

    A claim leases the lead for `lease_s` seconds; `maintain()` (run it in the daemon's TaskGroup)
    renews the leases this node holds and returns expired leases of any node to the hopper. A node
    that dies stops renewing, so its leads come back after at most `lease_s`. `complete` is fenced
    by the lease token: a node whose lease expired cannot record the attempt (`LeaseLostError`).
    A lead whose lease expires `max_lease_losses` times is finished rather than handed out forever.
    """

    def __init__(self, client: aioredis.Redis, *, node_id: str | None = None, lease_s: float = 60.0,
                 cdr_retention: CdrRetention | None = None, max_lease_losses: int = 3,
                 prefix: str = "dialer", owns_client: bool = False) -> None:
        if not client.connection_pool.connection_kwargs.get("decode_responses"):
            raise LeadError("RedisLeadStore needs a client created with decode_responses=True")
        if lease_s <= 0:
            raise LeadError(f"lease_s must be positive, got {lease_s}")
        if max_lease_losses < 1:
            raise LeadError(f"max_lease_losses must be at least 1, got {max_lease_losses}")
        self.redis = client
        self.node_id = node_id or _default_node_id()
        self.lease_s = lease_s
        self.cdr_retention = cdr_retention or CdrRetention()
        self.max_lease_losses = max_lease_losses
        self.prefix = prefix
        self._owns_client = owns_client
        self._closed = False
        self._held: defaultdict[str, dict[str, str]] = defaultdict(dict)
        # Claim receipts are this store's alone: a restarted node with the same id never reads old ones.
        self._claim_id = secrets.token_hex(8)
        self._claim_seq: Iterator[int] = itertools.count(1)
        self._import = client.register_script(_IMPORT)
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._renew = client.register_script(_RENEW)
        self._reap = client.register_script(_REAP)
        self._callback = client.register_script(_CALLBACK)
        self._recycle = client.register_script(_RECYCLE)

    @classmethod
    def from_url(cls, url: str = DEFAULT_REDIS_URL, **kwargs: Any) -> Self:
        """A store with its own connection pool to `url` (closed by `close()`)."""
        client = aioredis.Redis.from_url(url, decode_responses=True)
        return cls(client, owns_client=True, **kwargs)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool if this store created it (idempotent). Held leases simply expire."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self.redis.aclose()

    # Keys ---------------------------------------------------------------------------------------

    def _key(self, campaign: str, name: str) -> str:
        return f"{self.prefix}:{{{campaign}}}:{name}"

    def _lead_prefix(self, campaign: str) -> str:
        return self._key(campaign, "lead:")

    def _hist_prefix(self, campaign: str) -> str:
        return self._key(campaign, "hist:")

    # Import -------------------------------------------------------------------------------------

    async def import_csv(self, campaign: str, source: Iterable[bytes], *, default_region: str = "US",
                         due_at: float = 0.0, on_error: Callable[[RowError], None] | None = None,
                         batch_size: int = 500) -> ImportReport:
        """Stream a CSV lead file into the campaign; see `dialer.leads.read_lead_rows` for the format.

        New numbers become leads due at `due_at`; numbers already in the campaign are left as they
        are (re-importing a file changes nothing); a number seen twice in one file is rejected as a
        duplicate of its first line. Every rejected row goes to `on_error` (or `report.errors`).
        """
        _check_campaign(campaign)
        report = ImportReport(campaign)
        import_id = secrets.token_hex(8)
        seen_key = self._key(campaign, f"import:{import_id}")

        def reject(error: RowError) -> None:
            report.rejected += 1
            if on_error is None:
                report.errors.append(error)
            else:
                on_error(error)

        batch: list[LeadRow] = []

        async def flush() -> None:
            if not batch:
                return
            args: list[str | int | float] = [self._lead_prefix(campaign), due_at, campaign, IMPORT_SEEN_TTL_S]
            for row in batch:
                args += [lead_id_for(campaign, row.number), row.line, row.number, ",".join(row.zones),
                         len(row.data)]
                for name, value in row.data.items():
                    args += [DATA_PREFIX + name, value]
            keys = [self._key(campaign, "hopper"), self._key(campaign, "meta"), seen_key,
                    f"{self.prefix}:campaigns"]
            results: list[str] = await self._import(keys=keys, args=args)
            for row, result in zip(batch, results, strict=True):
                if result == "new":
                    report.imported += 1
                elif result == "existing":
                    report.existing += 1
                else:
                    first = result.removeprefix("dup:")
                    reject(RowError(row.line, f"duplicate: number {row.number} already on line {first}"))
            batch.clear()

        try:
            for item in read_lead_rows(source, default_region):
                report.rows += 1
                if isinstance(item, RowError):
                    reject(item)
                    continue
                batch.append(item)
                if len(batch) >= batch_size:
                    await flush()
            await flush()
        finally:
            await self.redis.delete(seen_key)
        report.errors.sort(key=lambda e: e.line)  # duplicates are found a batch late
        log.info("leads_imported", campaign=campaign, rows=report.rows, imported=report.imported,
                 existing=report.existing, rejected=report.rejected)
        return report

    # Claim and complete -------------------------------------------------------------------------

    async def claim(self, campaign: str, count: int, now: float) -> list[Lead]:
        """Lease up to `count` leads due at `now` (oldest due first) to this node."""
        if count <= 0:
            return []
        receipt = self._key(campaign, f"claim:{self._claim_id}:{next(self._claim_seq)}")
        keys = [self._key(campaign, "hopper"), self._key(campaign, "leases"), self._key(campaign, "meta"),
                receipt]
        args: list[str | int | float] = [now, count, round(self.lease_s * 1000), self.node_id,
                                         self._lead_prefix(campaign), now]
        rows: list[list[Any]] = await self._claim(keys=keys, args=args)
        leads = []
        held = self._held[campaign]
        for lead_id, token, attempts, number, zones, *data in rows:
            held[lead_id] = token
            leads.append(Lead(lead_id=lead_id, campaign=campaign, number=number, attempts=int(attempts),
                              data=dict(zip(data[0::2], data[1::2], strict=True)),
                              zones=tuple(zones.split(",")) if zones else (), lease=token))
        return leads

    async def complete(self, lead: Lead, record: AttemptRecord, retry_at: float | None) -> None:
        """Record the attempt (history + CDR), release the lease, and reschedule or finish the lead.

        A callback set while the lead was leased overrides `retry_at`. Raises `LeaseLostError` if
        the lease is no longer this claim's: nothing is written then.
        """
        campaign = lead.campaign
        self._held[campaign].pop(lead.lead_id, None)
        if not lead.lease:
            raise LeaseLostError(campaign, lead.lead_id, "the lead carries no lease: not claimed from Redis")
        kind, value = self.cdr_retention.trim_args()
        keys = [self._lead_prefix(campaign) + lead.lead_id, self._key(campaign, "hopper"),
                self._key(campaign, "leases"), self._key(campaign, "done"),
                self._hist_prefix(campaign) + lead.lead_id, self._key(campaign, "cdr")]
        record_json = _history_json(record)
        retry = "" if retry_at is None else repr(float(retry_at))
        outcome = record.outcome.value if record.outcome is not None else ""
        args: list[str | int | float] = [lead.lead_id, lead.lease, retry, outcome, record.disposition,
                                         record_json, kind, value, record.attempt, *record_to_fields(record)]
        status, detail = await self._complete(keys=keys, args=args)
        if status != "ok":
            why = "lease expired" if detail == "expired" else f"lead is now {detail}"
            log.warning("lead_complete_refused", campaign=campaign, lead=lead.lead_id, reason=why)
            raise LeaseLostError(campaign, lead.lead_id, why)

    async def schedule_callback(self, campaign: str, lead_id: str, at: float) -> None:
        """Dial the lead again at `at`: now if it is scheduled or done, after its call if it is leased."""
        keys = [self._lead_prefix(campaign) + lead_id, self._key(campaign, "hopper"),
                self._key(campaign, "done")]
        result = await self._callback(keys=keys, args=[lead_id, repr(float(at))])
        if result == "missing":
            raise LeadError(f"no lead {lead_id!r} in campaign {campaign!r}")
        log.info("callback_scheduled", campaign=campaign, lead=lead_id, at=at, when=result)

    # Leases -------------------------------------------------------------------------------------

    def holds(self, lead: Lead) -> bool:
        """True while this store still holds the lease on `lead` (it has not been found lost)."""
        return self._held.get(lead.campaign, {}).get(lead.lead_id) == lead.lease != ""

    async def renew(self) -> list[tuple[str, str]]:
        """Extend every lease this node holds by `lease_s`; returns the (campaign, lead_id) pairs lost."""
        lost: list[tuple[str, str]] = []
        for campaign, held in list(self._held.items()):
            if not held:
                continue
            snapshot = list(held.items())
            args: list[str | int] = [round(self.lease_s * 1000), self._lead_prefix(campaign)]
            for lead_id, token in snapshot:
                args += [lead_id, token]
            gone: list[str] = await self._renew(keys=[self._key(campaign, "leases")], args=args)
            tokens = dict(snapshot)
            for lead_id in gone:
                # A lead completed (or re-claimed) while the renewal was in flight was not lost.
                if held.get(lead_id) != tokens[lead_id]:
                    continue
                del held[lead_id]
                lost.append((campaign, lead_id))
                log.warning("lease_lost", campaign=campaign, lead=lead_id, node=self.node_id)
        return lost

    async def reap(self, campaign: str, limit: int = 1000) -> tuple[int, int]:
        """Return expired leases of `campaign` (any node's) to the hopper; (requeued, finished)."""
        kind, value = self.cdr_retention.trim_args()
        keys = [self._key(campaign, "leases"), self._key(campaign, "hopper"), self._key(campaign, "done"),
                self._key(campaign, "cdr")]
        args: list[str | int | float] = [self._lead_prefix(campaign), self._hist_prefix(campaign),
                                         self.max_lease_losses, campaign, kind, value, limit, *RECORD_FIELDS]
        requeued, finished = await self._reap(keys=keys, args=args)
        if requeued or finished:
            log.info("leases_reaped", campaign=campaign, requeued=requeued, finished=finished)
        return int(requeued), int(finished)

    async def maintain(self, stop: asyncio.Event, interval_s: float | None = None) -> None:
        """Renew this node's leases and reap expired ones until `stop` is set.

        Runs every `interval_s` (default a third of the lease, so two renewals can fail before a
        lease is lost). Redis errors are logged and retried on the next round: while Redis is away
        nothing can be claimed anyway, and leases that lapse meanwhile are reaped when it is back.
        """
        interval = interval_s if interval_s is not None else self.lease_s / 3
        while not stop.is_set():
            try:
                await self.renew()
                for campaign in await self.campaigns():
                    while sum(await self.reap(campaign)) >= 1000:
                        pass  # a full batch: more may be waiting
            except RedisError as exc:
                log.warning("lead_maintenance_failed", error=str(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass

    # Recycling ------------------------------------------------------------------------------------

    async def recycle(self, campaign: str, outcomes: Collection[Outcome], at: float,
                      batch_size: int = 500) -> int:
        """Put finished leads whose last outcome is one of `outcomes` back in the hopper, due at `at`.

        Attempt counts are kept, so each recycled lead gets one more pass under the retry rules.
        """
        if not outcomes:
            return 0
        wanted = "," + ",".join(o.value for o in outcomes) + ","
        done_key = self._key(campaign, "done")
        members: list[str] = [m async for m in self.redis.sscan_iter(done_key, count=batch_size)]
        moved = 0
        for i in range(0, len(members), batch_size):
            chunk = members[i:i + batch_size]
            n: int = await self._recycle(keys=[self._key(campaign, "hopper"), done_key],
                                         args=[self._lead_prefix(campaign), repr(float(at)), wanted, *chunk])
            moved += n
        log.info("leads_recycled", campaign=campaign, outcomes=sorted(o.value for o in outcomes), count=moved)
        return moved

    # Status -------------------------------------------------------------------------------------

    async def campaigns(self) -> list[str]:
        """Campaigns that have had leads imported."""
        names = await self.redis.smembers(f"{self.prefix}:campaigns")
        return sorted(str(n) for n in names)

    async def counts(self, campaign: str, now: float) -> CampaignCounts:
        """How many of the campaign's leads are due at `now`, scheduled later, leased, done."""
        async with self.redis.pipeline(transaction=True) as pipe:
            hopper = self._key(campaign, "hopper")
            pipe.hget(self._key(campaign, "meta"), "leads")
            pipe.zcount(hopper, "-inf", now)
            pipe.zcard(hopper)
            pipe.zcard(self._key(campaign, "leases"))
            pipe.scard(self._key(campaign, "done"))
            leads, due, in_hopper, leased, done = await pipe.execute()
        return CampaignCounts(campaign, int(leads or 0), due, in_hopper - due, leased, done)

    async def lead_info(self, campaign: str, lead_id: str) -> LeadInfo | None:
        """The lead's state and attempt history, or None if the campaign has no such lead."""
        # decode_responses=True (checked in __init__): every key and value is a str.
        raw = cast(dict[str, str], await self.redis.hgetall(self._lead_prefix(campaign) + lead_id))
        if not raw:
            return None
        lead = Lead(lead_id=lead_id, campaign=campaign, number=raw["number"], attempts=int(raw["attempts"]),
                    data={k.removeprefix(DATA_PREFIX): v for k, v in raw.items()
                          if k.startswith(DATA_PREFIX)},
                    zones=tuple(raw["zones"].split(",")) if raw.get("zones") else ())
        state = raw["state"]
        if state not in ("scheduled", "leased", "done"):
            raise LeadError(f"lead {lead_id} of {campaign} has an unknown state {state!r}")
        return LeadInfo(
            lead=lead, state=cast(LeadState, state),
            due_at=float(raw["due_at"]) if raw.get("due_at") else None,
            lease_node=raw.get("node"), last_outcome=Outcome(raw["outcome"]) if raw.get("outcome") else None,
            disposition=raw.get("disposition", ""),
            callback_at=float(raw["callback_at"]) if raw.get("callback_at") else None,
            history=await self.history(campaign, lead_id),
        )

    async def history(self, campaign: str, lead_id: str) -> list[AttemptRecord]:
        """The lead's attempt records, oldest first."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hget(self._lead_prefix(campaign) + lead_id, "number")
            pipe.get(self._hist_prefix(campaign) + lead_id)
            number, text = cast(tuple[str | None, str | None], await pipe.execute())
        common = {"lead_id": lead_id, "campaign": campaign, "number": number or ""}
        return [record_from_mapping({**json.loads(line), **common}) for line in (text or "").splitlines()]

    async def _stream(self, key: str, since: float | None,
                      page: int) -> AsyncIterator[tuple[str, dict[str, str]]]:
        start = "-" if since is None else str(max(0, int(since * 1000)))
        while True:
            reply = await self.redis.xrange(key, min=start, count=page)
            entries = cast(list[tuple[str, dict[str, str]]], reply)
            for entry in entries:
                yield entry
            if len(entries) < page:
                return
            start = "(" + entries[-1][0]

    async def cdrs(self, campaign: str, since: float | None = None,
                   page: int = 1000) -> AsyncIterator[tuple[str, AttemptRecord]]:
        """The campaign's CDRs from epoch `since` (when the entry was written), as (entry id, record).

        Dispositions set after an attempt was recorded are merged into its record.
        """
        late: dict[str, dict[str, str]] = {}
        async for _, fields in self._stream(self._key(campaign, "dispositions"), since, page):
            late[fields["call_id"]] = fields
        async for entry_id, fields in self._stream(self._key(campaign, "cdr"), since, page):
            record = record_from_mapping(fields)
            extra = late.get(record.call_id)
            if extra is not None:
                record.disposition = extra["disposition"]
                record.agent_id = record.agent_id or extra.get("agent_id") or None
            yield entry_id, record

    async def set_disposition(self, campaign: str, lead_id: str, call_id: str, disposition: str, *,
                              agent_id: str | None = None) -> None:
        """Record a disposition given after the attempt was completed (e.g. at the end of wrap-up).

        Updates the attempt in the lead's history (and the lead's current disposition if it is the
        latest attempt) and appends to the dispositions stream that exports merge into the CDRs.
        """
        if not disposition:
            raise LeadError("a disposition must not be empty")
        hist_key = self._hist_prefix(campaign) + lead_id
        lead_key = self._lead_prefix(campaign) + lead_id
        kind, value = self.cdr_retention.trim_args()

        async def update(pipe: Any) -> None:
            text = cast(str | None, await pipe.get(hist_key))
            lines = (text or "").splitlines()
            for i in range(len(lines) - 1, -1, -1):
                entry = json.loads(lines[i])
                if entry.get("call_id") == call_id:
                    break
            else:
                raise LeadError(f"lead {lead_id} of campaign {campaign} has no attempt with call id "
                                f"{call_id!r}")
            entry["disposition"] = disposition
            if agent_id and not entry.get("agent_id"):
                entry["agent_id"] = agent_id
            lines[i] = json.dumps(entry, separators=(",", ":"))
            pipe.multi()
            pipe.set(hist_key, "\n".join(lines) + "\n")
            if i == len(lines) - 1:
                pipe.hset(lead_key, "disposition", disposition)
            fields = {"call_id": call_id, "lead_id": lead_id, "disposition": disposition,
                      "agent_id": agent_id or "", "at": repr(time.time())}
            if kind == "maxlen":
                pipe.xadd(self._key(campaign, "dispositions"), fields, maxlen=int(value), approximate=True)
            elif kind == "minid":
                minid = str(int(time.time() * 1000) - int(value))
                pipe.xadd(self._key(campaign, "dispositions"), fields, minid=minid, approximate=True)
            else:
                pipe.xadd(self._key(campaign, "dispositions"), fields)

        # WATCH the history: a concurrent attempt completing in between makes the transaction retry.
        await self.redis.transaction(update, hist_key)
        log.info("disposition_set", campaign=campaign, lead=lead_id, call_id=call_id, disposition=disposition)
