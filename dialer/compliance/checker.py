"""`ComplianceGate`: the real gate every dial passes through, combining every check.

Importable as `dialer.compliance.gate.ComplianceGate` too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from dialer.compliance.dnc import (
    DncKeys,
    RegistryKind,
    day_date,
    registry_kind,
)
from dialer.compliance.gate import (
    Blocked,
    BlockReason,
    DialCandidate,
    Verdict,
    mint_clearance,
)
from dialer.compliance.hours import check_hours
from dialer.compliance.numbers import NumberError, NumberInfo, classify
from dialer.compliance.rules import NANP_REGIONS, registries_for, rule_pack
from dialer.errors import ComplianceError
from dialer.logging import mask_number

if TYPE_CHECKING:
    from dialer.config import CampaignConfig

_log = structlog.get_logger("dialer.compliance.gate")

LOOKUP_SCRIPT: Final = """#!lua flags=no-writes
-- KEYS[i] pairs with ARGV[2i-1] (op) and ARGV[2i] (argument). Replies are flattened, in order:
-- B (registry bitmap): sentinel bit, as-of day (u32 at bit 32), the number's bit -- one BITFIELD_RO,
--   so presence, freshness and membership come from the same version of the key;
-- S: SISMEMBER; C: SCARD; H: HGET as integer (0 if absent); G: GET as integer (0 if absent).
local out = {}
for i = 1, #KEYS do
  local op, arg, key = ARGV[2 * i - 1], ARGV[2 * i], KEYS[i]
  if op == 'B' then
    local r = redis.call('BITFIELD_RO', key, 'GET', 'u1', 0, 'GET', 'u32', 32, 'GET', 'u1', arg)
    out[#out + 1] = r[1]; out[#out + 1] = r[2]; out[#out + 1] = r[3]
  elseif op == 'S' then
    out[#out + 1] = redis.call('SISMEMBER', key, arg)
  elseif op == 'C' then
    out[#out + 1] = redis.call('SCARD', key)
  elseif op == 'H' then
    out[#out + 1] = math.floor(tonumber(redis.call('HGET', key, arg) or '0') or 0)
  else
    out[#out + 1] = math.floor(tonumber(redis.call('GET', key) or '0') or 0)
  end
end
return out
"""

_REPLY_WIDTH: Final = {"B": 3, "S": 1, "C": 1, "H": 1, "G": 1}
BATCH_LIMIT: Final = 2000
"""Candidates per script call: bounds how long one lookup holds Redis (a few ms)."""


class GateMetrics(Protocol):
    """What the gate reports to (`dialer.metrics.DialerMetrics` implements it)."""

    def record_gate(self, campaign: str, reason: BlockReason | None) -> None:
        """Count one check, and its block when `reason` is given."""
        ...


class _Plan:
    """The lookups one candidate needs, and where their replies start in the flat reply."""

    __slots__ = ("campaign", "candidate", "info", "registries", "start")

    def __init__(self, candidate: DialCandidate, campaign: CampaignConfig, info: NumberInfo,
                 registries: tuple[str, ...]) -> None:
        self.candidate = candidate
        self.campaign = campaign
        self.info = info
        self.registries = registries
        self.start = 0


class ComplianceGate:
    """The gate: DNC (internal, campaign, national/state registries), freshness, subscription, calling
    hours, Ofcom protection. Every failure, of the data or of the gate itself, comes back as `Blocked`.

    Lookups for a batch of candidates go to Redis as one Lua script call that reads each registry
    bitmap with one `BITFIELD_RO` (sentinel, as-of date, number), so each verdict is taken on one
    consistent version of every key it reads, even while a reload swaps keys.
    """

    def __init__(self, redis: aioredis.Redis, campaigns: Mapping[str, CampaignConfig], *,
                 keys: DncKeys | None = None, metrics: GateMetrics | None = None,
                 timeout_s: float = 1.0) -> None:
        self.redis = redis
        self.keys = keys or DncKeys()
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._campaigns: dict[str, CampaignConfig] = {}
        self._script = redis.register_script(LOOKUP_SCRIPT)
        self._warned: set[tuple[str, int, int]] = set()
        self.set_campaigns(campaigns)

    def set_campaigns(self, campaigns: Mapping[str, CampaignConfig]) -> None:
        """Replace the campaign settings (on reload)."""
        for c in campaigns.values():
            rule_pack(c.rule_pack)
        self._campaigns = dict(campaigns)

    async def check(self, candidate: DialCandidate, now: float, *,
                    guaranteed_agent: bool = False) -> Verdict:
        """Decide whether `candidate` may be dialled at epoch `now`.

        `guaranteed_agent`: a live agent is reserved for this call (lifts Ofcom's 72-hour protection).
        """
        return (await self.check_many([candidate], now, guaranteed_agent=guaranteed_agent))[0]

    async def check_many(self, candidates: Sequence[DialCandidate], now: float, *,
                         guaranteed_agent: bool = False) -> list[Verdict]:
        """Verdicts for many candidates at once, in order, with one Redis round trip per 2000."""
        verdicts: list[Verdict] = []
        for i in range(0, len(candidates), BATCH_LIMIT):
            verdicts.extend(await self._check_batch(candidates[i : i + BATCH_LIMIT], now, guaranteed_agent))
        return verdicts

    async def _check_batch(self, candidates: Sequence[DialCandidate], now: float,
                           guaranteed_agent: bool) -> list[Verdict]:
        results: list[Blocked | _Plan] = []
        keys: list[str] = []
        argv: list[str | int] = []
        width = 0
        for cand in candidates:
            try:
                item = self._plan(cand, now)
                if isinstance(item, _Plan):
                    item.start = width
                    width += self._ops(item, keys, argv)
                results.append(item)
            except Exception as exc:
                results.append(self._internal_error(cand, exc))
        reply: list[int] = []
        if keys:
            try:
                async with asyncio.timeout(self.timeout_s):
                    raw = await self._script(keys=keys, args=argv)
                reply = [int(x) for x in raw]
                if len(reply) != width:
                    raise ComplianceError(f"lookup returned {len(reply)} values, expected {width}")
            except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
                return self._fail_all(results, BlockReason.STORE_UNAVAILABLE,
                                      f"redis: {type(exc).__name__}: {exc}")
            except Exception as exc:
                return self._fail_all(results, BlockReason.GATE_ERROR, f"{type(exc).__name__}: {exc}")
        verdicts: list[Verdict] = []
        for item in results:
            if not isinstance(item, _Plan):
                verdicts.append(item)
                continue
            try:
                verdicts.append(self._decide(item, reply, now, guaranteed_agent))
            except Exception as exc:
                verdicts.append(self._internal_error(item.candidate, exc))
        return verdicts

    # Planning: everything that needs no Redis -------------------------------------------------

    def _plan(self, cand: DialCandidate, now: float) -> _Plan | Blocked:
        campaign = self._campaigns.get(cand.campaign)
        if campaign is None:
            return self._blocked(cand, BlockReason.GATE_ERROR, "unknown campaign")
        try:
            info = classify(cand.number)
        except NumberError as exc:
            return self._blocked(cand, BlockReason.UNPARSEABLE_NUMBER, str(exc))
        registries = registries_for(campaign, info.region)
        if registries is None:
            return self._blocked(cand, BlockReason.REGISTRY_MISSING,
                                 f"no do-not-call registry known for region {info.region or '?'}; "
                                 f"set dnc.registries.{info.region or 'XX'} (an empty list if none applies)")
        nanp = info.region in NANP_REGIONS
        for reg in registries:
            kind = registry_kind(reg)
            if nanp == (kind is RegistryKind.INTL):
                return self._blocked(cand, BlockReason.GATE_ERROR,
                                     f"registry {reg} cannot hold {info.region} numbers")
        if nanp and registries and "*" not in campaign.dnc.area_codes \
                and f"{info.npa:03d}" not in campaign.dnc.area_codes:
            return self._blocked(cand, BlockReason.NOT_SUBSCRIBED,
                                 f"area code {info.npa} is not in the campaign's registry subscription")
        hours = check_hours(campaign, info, now)
        if hours.reason is not None:
            return self._blocked(cand, hours.reason, hours.detail)
        return _Plan(cand, campaign, info, registries)

    def _ops(self, plan: _Plan, keys: list[str], argv: list[str | int]) -> int:
        """Append the plan's lookups; return the number of reply values they produce."""
        k = self.keys
        info = plan.info
        ops: list[tuple[str, str, str | int]] = [
            ("S", k.internal, info.e164),
            ("S", k.campaign(plan.campaign.name), info.e164),
        ]
        for reg in plan.registries:
            kind = registry_kind(reg)
            if kind is RegistryKind.INTL:
                digits = info.e164[1:]
                prefix, suffix = digits[:-5], int(digits[-5:])
                ops += [("B", k.block(reg, prefix), 64 + suffix), ("S", k.blocks(reg), prefix),
                        ("H", k.meta(reg, "all"), "as_of_day")]
            else:
                assert info.npa is not None and info.local is not None
                ops.append(("B", k.registry(reg, info.npa), info.local))
                if kind is RegistryKind.STATE:
                    ops += [("S", k.npas(reg), info.npa), ("C", k.npas(reg), 0)]
        if rule_pack(plan.campaign.rule_pack).abandon_protection_s > 0:
            ops.append(("G", k.protect(info.e164), 0))
        width = 0
        for op, key, arg in ops:
            keys.append(key)
            argv += (op, arg)
            width += _REPLY_WIDTH[op]
        return width

    # Deciding: replies in, verdict out ----------------------------------------------------------

    def _decide(self, plan: _Plan, reply: list[int], now: float, guaranteed_agent: bool) -> Verdict:
        cand, campaign, info = plan.candidate, plan.campaign, plan.info
        i = plan.start
        if reply[i]:
            return self._blocked(cand, BlockReason.DNC_INTERNAL, "on the internal do-not-call list")
        if reply[i + 1]:
            return self._blocked(cand, BlockReason.DNC_CAMPAIGN, "on the campaign's do-not-call list")
        i += 2
        today = int(now // 86400)
        max_age, warn_age = campaign.dnc.max_age_days, campaign.dnc.warn_age_days
        for reg in plan.registries:
            kind = registry_kind(reg)
            if kind is RegistryKind.INTL:
                sentinel, as_of_block, bit, catalogued, as_of = reply[i : i + 5]
                i += 5
                if as_of == 0:
                    return self._blocked(cand, BlockReason.REGISTRY_MISSING, f"{reg}: no loaded copy")
                if not sentinel and catalogued:
                    return self._blocked(cand, BlockReason.REGISTRY_MISSING,
                                         f"{reg}: a block of the loaded copy is missing")
                if sentinel and as_of_block != as_of:
                    return self._blocked(cand, BlockReason.REGISTRY_MISSING,
                                         f"{reg}: block and registry dates disagree (reload in progress?)")
                unit = 0
            else:
                sentinel, as_of, bit = reply[i : i + 3]
                i += 3
                unit = info.npa or 0
                if kind is RegistryKind.STATE:
                    covered, catalogue = reply[i : i + 2]
                    i += 2
                    if catalogue == 0:
                        return self._blocked(cand, BlockReason.REGISTRY_MISSING, f"{reg}: no loaded copy")
                    if not covered:
                        continue  # the state list does not cover this area code
                if not sentinel:
                    return self._blocked(cand, BlockReason.REGISTRY_MISSING,
                                         f"{reg}: no loaded copy for area code {unit}")
            age = today - as_of
            if age > max_age:
                return self._blocked(cand, BlockReason.REGISTRY_STALE,
                                     f"{reg}: copy as of {day_date(as_of).isoformat()} is {age} days old "
                                     f"(limit {max_age})")
            if age >= warn_age and (reg, unit, today) not in self._warned:
                self._warned.add((reg, unit, today))
                _log.warning("dnc_registry_aging", registry=reg, area_code=unit, age_days=age,
                             limit_days=max_age)
            if bit:
                reason = BlockReason.DNC_STATE if kind is RegistryKind.STATE else BlockReason.DNC_NATIONAL
                return self._blocked(cand, reason, f"on the {reg} registry")
        if rule_pack(campaign.rule_pack).abandon_protection_s > 0:
            until = reply[i]
            if until > now and not guaranteed_agent:
                return self._blocked(cand, BlockReason.ABANDON_PROTECTED,
                                     f"abandoned call: protected for {int(until - now)} s more "
                                     f"unless an agent is guaranteed")
        if self.metrics is not None:
            self.metrics.record_gate(cand.campaign, None)
        return mint_clearance(cand.number, cand.campaign, now)

    # Refusals --------------------------------------------------------------------------------------

    def _blocked(self, cand: DialCandidate, reason: BlockReason, detail: str) -> Blocked:
        if self.metrics is not None:
            self.metrics.record_gate(cand.campaign, reason)
        _log.info("dial_blocked", campaign=cand.campaign, reason=reason.value, lead_id=cand.lead_id,
                  number=mask_number(cand.number), detail=detail)
        return Blocked(reason, detail)

    def _internal_error(self, cand: DialCandidate, exc: Exception) -> Blocked:
        _log.error("gate_error", campaign=cand.campaign, error=f"{type(exc).__name__}: {exc}")
        return self._blocked(cand, BlockReason.GATE_ERROR, f"{type(exc).__name__}: {exc}")

    def _fail_all(self, results: Sequence[Blocked | _Plan], reason: BlockReason,
                  detail: str) -> list[Verdict]:
        _log.error("gate_store_error", reason=reason.value, error=detail)
        return [r if isinstance(r, Blocked) else self._blocked(r.candidate, reason, detail) for r in results]
