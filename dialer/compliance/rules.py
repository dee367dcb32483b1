"""Rule packs `us`, `uk`, `ca` and the legal calling windows of the callee's place. Pure data and logic.

A campaign's rule pack is the regulator the *caller* answers to: it sets the abandonment budget (window,
limit, whether AMD false positives count) and whether Ofcom's 72-hour protection applies. The calling
hours and the national do-not-call registry follow the *callee*: a US campaign calling Toronto keeps
CRTC hours and consults the Canadian DNCL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from enum import StrEnum
from typing import Final

from dialer.config import CampaignConfig, HoursWindow
from dialer.errors import ConfigError


class WindowKind(StrEnum):
    """How an abandonment window is measured."""

    ROLLING = "rolling"  # the last `window_s` seconds, whatever the calendar
    CALENDAR_MONTH = "calendar_month"  # the current calendar month (UTC)


@dataclass(frozen=True, slots=True)
class AbandonPolicy:
    """The abandonment budget of one campaign."""

    kind: WindowKind
    window_s: float  # for ROLLING; ignored for CALENDAR_MONTH
    limit: float  # abandons / live answers the window must stay at or under
    amd_false_positive_rate: float  # share of AMD "machine" verdicts counted as live and abandoned
    label: str  # metric `window` label: "30d", "24h", "month"


@dataclass(frozen=True, slots=True)
class RulePack:
    """What a regulator asks of a campaign that is not about the callee's place."""

    name: str
    abandon_kind: WindowKind
    abandon_window_s: float
    abandon_limit: float
    amd_false_positive_default: float  # > 0 only where AMD false positives count (Ofcom)
    abandon_protection_s: float  # 0: no protection; Ofcom: 72 h without a guaranteed agent
    window_label: str


RULE_PACKS: Final = {
    # FTC TSR 16 CFR 310.4(b)(4)(i) / FCC 47 CFR 64.1200(a)(7): 3 % of live answers per campaign over
    # a 30-day period; AMD false positives are not part of the US calculation.
    "us": RulePack("us", WindowKind.ROLLING, 30 * 86400.0, 0.03, 0.0, 0.0, "30d"),
    # Ofcom persistent-misuse policy (2016): 3 % over 24 hours per campaign, including a reasoned
    # estimate of live calls AMD wrongly took for machines. Without a measured rate we assume 10 %,
    # deliberately pessimistic; campaigns should configure their measured `amd_false_positive_rate`.
    # An abandoned number must not be called again within 72 hours without a guaranteed live agent.
    "uk": RulePack("uk", WindowKind.ROLLING, 86400.0, 0.03, 0.10, 72 * 3600.0, "24h"),
    # CRTC Unsolicited Telecommunications Rules, Part IV: 5 % of live answers per campaign per
    # calendar month.
    "ca": RulePack("ca", WindowKind.CALENDAR_MONTH, 0.0, 0.05, 0.0, 0.0, "month"),
}


def rule_pack(name: str) -> RulePack:
    """The rule pack called `name`, or `ConfigError`."""
    try:
        return RULE_PACKS[name]
    except KeyError:
        raise ConfigError([f"rule_pack: unknown rule pack {name!r}, expected one of {sorted(RULE_PACKS)}"]) \
            from None


def abandon_policy(campaign: CampaignConfig) -> AbandonPolicy:
    """The campaign's budget: its pack's window, the stricter of its own and the legal limit."""
    pack = rule_pack(campaign.rule_pack)
    fp = 0.0
    if pack.amd_false_positive_default > 0:  # only Ofcom counts AMD false positives
        configured = campaign.amd_false_positive_rate
        fp = pack.amd_false_positive_default if configured is None else configured
    return AbandonPolicy(
        kind=pack.abandon_kind,
        window_s=pack.abandon_window_s,
        limit=min(campaign.abandon_limit, pack.abandon_limit),
        amd_false_positive_rate=fp,
        label=pack.window_label,
    )


# Calling hours ---------------------------------------------------------------------------------

LEGAL_HOURS: Final = {
    # TCPA, 47 CFR 64.1200(c)(1): not before 8 a.m. or after 9 p.m. at the called party's location.
    "US": HoursWindow(start=time(8), end=time(21)),
    # Florida Telephone Solicitation Act, Fla. Stat. 501.059(4) (2021): 8 a.m. to 8 p.m.
    "US-FL": HoursWindow(start=time(8), end=time(20)),
    # Oklahoma Telephone Solicitation Act, 15 O.S. 775C.4 (2022): 8 a.m. to 8 p.m.
    "US-OK": HoursWindow(start=time(8), end=time(20)),
    # Maryland Stop the Spam Calls Act (2023): 8 a.m. to 8 p.m.
    "US-MD": HoursWindow(start=time(8), end=time(20)),
    # Washington RCW 80.36.390: 8 a.m. to 8 p.m.
    "US-WA": HoursWindow(start=time(8), end=time(20)),
    # CRTC Telemarketing Rules, Part II s. 5: weekdays 9:00-21:30, weekends 10:00-18:00.
    "CA": HoursWindow(start=time(9), end=time(21, 30), weekend_start=time(10), weekend_end=time(18)),
    # No statutory hours in the UK; the DMA Code's accepted practice is 08:00-21:00.
    "GB": HoursWindow(start=time(8), end=time(21)),
}
"""Legal windows by callee place. A place not listed falls back to its country, then to 08:00-21:00."""

DEFAULT_LEGAL_HOURS: Final = HoursWindow(start=time(8), end=time(21))

# Do-not-call registries ------------------------------------------------------------------------

DEFAULT_REGISTRIES: Final[dict[str, tuple[str, ...]]] = {
    "US": ("us-national",),
    "CA": ("ca-dncl",),
    # TPS covers the UK's numbering plan, shared by the Crown dependencies.
    "GB": ("uk-tps",),
    "GG": ("uk-tps",),
    "JE": ("uk-tps",),
    "IM": ("uk-tps",),
}
"""National registry of each callee country. A country absent here has no registry we can consult."""

NANP_REGIONS: Final = frozenset({"US", "CA"})


def registries_for(campaign: CampaignConfig, region: str) -> tuple[str, ...] | None:
    """Registries the campaign must consult for a callee in `region`; None when none is known.

    None means "we cannot tell whether this number may be called" and the gate blocks it; an empty
    tuple, configured explicitly, means the country has no registry that applies.
    """
    if region in campaign.dnc.registries:
        return campaign.dnc.registries[region]
    return DEFAULT_REGISTRIES.get(region)


def legal_hours(place: str) -> HoursWindow:
    """The legal window for a callee place such as `US-FL` (falls back to `US`, then the default)."""
    if place in LEGAL_HOURS:
        return LEGAL_HOURS[place]
    country = place.split("-", 1)[0]
    return LEGAL_HOURS.get(country, DEFAULT_LEGAL_HOURS)


def campaign_hours(campaign: CampaignConfig, place: str) -> HoursWindow | None:
    """The campaign's own window for a callee place (override by place, then country, then its
    campaign-wide window); None when the campaign sets none and the legal window applies alone."""
    overrides = campaign.hours.overrides
    if place in overrides:
        return overrides[place]
    country = place.split("-", 1)[0]
    if country in overrides:
        return overrides[country]
    return campaign.hours.window()
