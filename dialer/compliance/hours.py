"""Calling hours in the callee's local time. Pure logic: no Redis, no event loop.

A number may sit in several time zones (split-zone area codes such as 208 Idaho: Mountain and
Pacific; a mobile carried away from home). The call is allowed only when *every* candidate zone's
local time is inside the window, so the earliest zone opens the day and the latest one closes it.
The window for a place is the intersection of the legal window (`rules.LEGAL_HOURS`) and the
campaign's own (`CampaignConfig.hours`), evaluated per local day, so weekends, Sundays and DST
transitions come out of `zoneinfo` rather than fixed UTC offsets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dialer.compliance.gate import BlockReason
from dialer.compliance.numbers import NumberInfo
from dialer.compliance.rules import campaign_hours, legal_hours
from dialer.config import CampaignConfig, HoursWindow

_SATURDAY = 5
_SUNDAY = 6


@dataclass(frozen=True, slots=True)
class HoursVerdict:
    """Outcome of an hours check: None `reason` means inside the window in every zone."""

    reason: BlockReason | None
    detail: str = ""


ALLOWED = HoursVerdict(None)


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def day_window(window: HoursWindow, weekday: int) -> tuple[time, time] | None:
    """[start, end) of `window` on a day (`weekday` 0 = Monday), or None when no call is allowed."""
    if weekday == _SUNDAY and not window.sunday:
        return None
    if weekday in (_SATURDAY, _SUNDAY):
        return (window.weekend_start or window.start, window.weekend_end or window.end)
    return (window.start, window.end)


def effective_window(campaign: CampaignConfig, place: str, weekday: int) -> tuple[time, time] | None:
    """The legal and the campaign window intersected, for the callee place on a local weekday."""
    legal = day_window(legal_hours(place), weekday)
    if legal is None:
        return None
    own_window = campaign_hours(campaign, place)
    if own_window is None:
        return legal
    own = day_window(own_window, weekday)
    if own is None:
        return None
    start, end = max(legal[0], own[0]), min(legal[1], own[1])
    return (start, end) if start < end else None


def check_hours(campaign: CampaignConfig, info: NumberInfo, now: float) -> HoursVerdict:
    """Whether `info` may be called at epoch `now` under `campaign`'s hours, in every candidate zone."""
    if not info.zones:
        return HoursVerdict(BlockReason.UNKNOWN_ZONE, f"no time zone known for this {info.region} number")
    holidays: frozenset[date] = frozenset(campaign.hours.holidays)
    for name in info.zones:
        try:
            zone = _zone(name)
        except (ZoneInfoNotFoundError, ValueError):
            return HoursVerdict(BlockReason.UNKNOWN_ZONE, f"time zone {name!r} is not in the tz database")
        local = datetime.fromtimestamp(now, zone)
        if local.date() in holidays:
            return HoursVerdict(BlockReason.HOLIDAY, f"{local.date().isoformat()} is a holiday in {name}")
        window = effective_window(campaign, info.place, local.weekday())
        clock = local.time().replace(tzinfo=None)
        if window is None:
            return HoursVerdict(
                BlockReason.OUTSIDE_HOURS, f"no calls on {local.strftime('%A')} for {info.place} ({name})"
            )
        if not (window[0] <= clock < window[1]):
            return HoursVerdict(
                BlockReason.OUTSIDE_HOURS,
                f"{clock.strftime('%H:%M')} in {name} is outside "
                f"{window[0].strftime('%H:%M')}-{window[1].strftime('%H:%M')} for {info.place}",
            )
    return ALLOWED
