"""The gate every dial passes through immediately before the INVITE.

Only code in `dialer.compliance` can mint a `Clearance`; `Telephony.originate` refuses a missing,
mismatched or stale one (invariant 1 in ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from dialer.errors import ClearanceError

CLEARANCE_MAX_AGE_S = 0.5
"""A clearance older than this is stale: the gate must be asked again."""

_MINT_KEY = object()


class BlockReason(StrEnum):
    """Why the gate refused a dial. Bounded set: used as a metric label and as the lead disposition."""

    DNC_NATIONAL = "dnc_national"
    DNC_STATE = "dnc_state"
    DNC_INTERNAL = "dnc_internal"
    DNC_CAMPAIGN = "dnc_campaign"
    REGISTRY_MISSING = "registry_missing"  # no loaded copy (no sentinel bit) for the area code
    REGISTRY_STALE = "registry_stale"  # loaded copy older than 31 days
    NOT_SUBSCRIBED = "not_subscribed"  # area code not in the campaign's registry subscription
    OUTSIDE_HOURS = "outside_hours"
    HOLIDAY = "holiday"
    UNPARSEABLE_NUMBER = "unparseable_number"
    UNKNOWN_ZONE = "unknown_zone"
    ABANDON_PROTECTED = "abandon_protected"  # Ofcom 72 h: abandoned recently, no guaranteed agent
    STORE_UNAVAILABLE = "store_unavailable"  # Redis unreachable or erroring
    GATE_ERROR = "gate_error"  # any other failure inside the gate: fail closed


@dataclass(frozen=True, slots=True)
class Clearance:
    """Permission to dial one number for one campaign, valid for `CLEARANCE_MAX_AGE_S` seconds."""

    number: str
    campaign: str
    issued_at: float
    _key: object = field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self._key is not _MINT_KEY:
            raise ClearanceError("a Clearance can only be minted by the compliance gate")

    def verify(self, number: str, campaign: str, now: float) -> None:
        """Raise `ClearanceError` unless this clearance covers `number` for `campaign` at `now`."""
        if number != self.number or campaign != self.campaign:
            raise ClearanceError("clearance does not match the number or campaign being dialled")
        age = now - self.issued_at
        if age > CLEARANCE_MAX_AGE_S or age < -CLEARANCE_MAX_AGE_S:
            raise ClearanceError(f"clearance is stale ({age:.3f} s old, limit {CLEARANCE_MAX_AGE_S} s)")


def mint_clearance(number: str, campaign: str, now: float) -> Clearance:
    """Create a clearance. For gate implementations in `dialer.compliance` only."""
    return Clearance(number, campaign, now, _MINT_KEY)


@dataclass(frozen=True, slots=True)
class Blocked:
    """The gate's refusal: a reason code and a human-readable detail (never a full number)."""

    reason: BlockReason
    detail: str = ""


Verdict = Clearance | Blocked


@dataclass(frozen=True, slots=True)
class DialCandidate:
    """What the engine asks the gate about: an E.164 number for a campaign."""

    number: str
    campaign: str
    lead_id: str = ""


class Gate(Protocol):
    """The single compliance gate. Any internal error must come back as `Blocked`, never raise."""

    async def check(self, candidate: DialCandidate, now: float) -> Verdict:
        """Decide whether `candidate` may be dialled at epoch time `now`."""
        ...


class PermissiveGate:
    """A gate that clears every number. For the simulator and tests of the engine only."""

    async def check(self, candidate: DialCandidate, now: float) -> Verdict:
        return mint_clearance(candidate.number, candidate.campaign, now)


# `ComplianceGate`, the real gate, lives in `dialer.compliance.checker`: it needs settings, rules and
# Redis, and `dialer.config` -> `dialer.telephony` -> this module must stay importable without them.
# It is importable from here all the same, resolved on first use (PEP 562).
if TYPE_CHECKING:
    from dialer.compliance.checker import ComplianceGate as ComplianceGate
    from dialer.compliance.checker import GateMetrics as GateMetrics


def __getattr__(name: str) -> object:
    if name in ("ComplianceGate", "GateMetrics"):
        from dialer.compliance import checker

        return getattr(checker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
