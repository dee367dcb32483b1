"""Calling hours: every candidate zone inside the window, DST, split zones, state/country rules, holidays."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

import pytest

from dialer.compliance.gate import BlockReason
from dialer.compliance.hours import check_hours, effective_window
from dialer.compliance.numbers import NumberInfo, classify
from dialer.config import CampaignConfig


def campaign(**kw: Any) -> CampaignConfig:
    return CampaignConfig.model_validate({"name": "c", "pacing": {"policy": "progressive"}, **kw})


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


NY = "+12125550123"  # America/New_York
IDAHO = "+12085551234"  # 208: America/Boise (Mountain) and America/Los_Angeles (Pacific)
MIAMI = "+13055550123"
TORONTO = "+14165550123"


def reason(number: str, at: float, c: CampaignConfig | None = None) -> BlockReason | None:
    return check_hours(c or campaign(), classify(number), at).reason


def test_new_york_inside_and_outside_default_window() -> None:
    # 2026-11-25 is a Wednesday; EST = UTC-5.
    assert reason(NY, utc(2026, 11, 25, 12, 59)) is BlockReason.OUTSIDE_HOURS  # 07:59
    assert reason(NY, utc(2026, 11, 25, 13, 0)) is None  # 08:00 opens
    assert reason(NY, utc(2026, 11, 26, 1, 59)) is None  # 20:59
    assert reason(NY, utc(2026, 11, 26, 2, 0)) is BlockReason.OUTSIDE_HOURS  # 21:00 is closed


def test_spring_forward_shifts_the_utc_opening_by_one_hour() -> None:
    # US DST starts 2026-03-08 02:00 local. The same UTC time 12:30 is 07:30 EST the day before
    # and 08:30 EDT that day: a fixed-offset implementation gets one of the two wrong.
    assert reason(NY, utc(2026, 3, 7, 12, 30)) is BlockReason.OUTSIDE_HOURS
    assert reason(NY, utc(2026, 3, 8, 12, 30)) is None


def test_fall_back_shifts_the_utc_closing_by_one_hour() -> None:
    # DST ends 2026-11-01 02:00 local. 01:30 UTC is 21:30 EDT on Oct 31 (closed) and 20:30 EST on
    # Nov 1... the evening of Nov 1 is Nov 2 01:30 UTC.
    assert reason(NY, utc(2026, 11, 1, 1, 30)) is BlockReason.OUTSIDE_HOURS  # Oct 31 21:30 EDT
    assert reason(NY, utc(2026, 11, 2, 1, 30)) is None  # Nov 1 20:30 EST


def test_split_zone_area_code_needs_every_zone_inside() -> None:
    info = classify(IDAHO)
    assert set(info.zones) == {"America/Boise", "America/Los_Angeles"}
    # 15:30 UTC in winter: 08:30 in Boise (MST) but 07:30 in Los Angeles (PST): blocked.
    v = check_hours(campaign(), info, utc(2026, 11, 25, 15, 30))
    assert v.reason is BlockReason.OUTSIDE_HOURS
    assert "America/Los_Angeles" in v.detail and "07:30" in v.detail
    assert reason(IDAHO, utc(2026, 11, 25, 16, 0)) is None  # 09:00 MST, 08:00 PST
    # 04:30 UTC: 20:30 PST is inside, 21:30 MST is not: the earliest closing wins.
    assert reason(IDAHO, utc(2026, 11, 26, 4, 30)) is BlockReason.OUTSIDE_HOURS
    assert reason(IDAHO, utc(2026, 11, 26, 3, 59)) is None


def test_split_zone_across_dst_in_summer() -> None:
    # Summer: MDT = UTC-6, PDT = UTC-7. 14:30 UTC is 08:30 MDT, 07:30 PDT.
    assert reason(IDAHO, utc(2026, 7, 15, 14, 30)) is BlockReason.OUTSIDE_HOURS
    assert reason(IDAHO, utc(2026, 7, 15, 15, 0)) is None


def test_florida_closes_at_eight_pm() -> None:
    assert classify(MIAMI).place == "US-FL"
    assert reason(MIAMI, utc(2026, 11, 26, 0, 59)) is None  # 19:59 EST
    v = check_hours(campaign(), classify(MIAMI), utc(2026, 11, 26, 1, 0))  # 20:00 EST
    assert v.reason is BlockReason.OUTSIDE_HOURS and "20:00" in v.detail and "US-FL" in v.detail
    assert reason(NY, utc(2026, 11, 26, 1, 0)) is None  # New York still open


def test_canada_weekday_and_weekend_windows() -> None:
    assert classify(TORONTO).region == "CA"
    # Wednesday: 09:00-21:30.
    assert reason(TORONTO, utc(2026, 11, 25, 13, 30)) is BlockReason.OUTSIDE_HOURS  # 08:30
    assert reason(TORONTO, utc(2026, 11, 25, 14, 0)) is None  # 09:00
    assert reason(TORONTO, utc(2026, 11, 26, 2, 29)) is None  # 21:29
    assert reason(TORONTO, utc(2026, 11, 26, 2, 30)) is BlockReason.OUTSIDE_HOURS  # 21:30
    # Saturday 2026-11-28: 10:00-18:00.
    assert reason(TORONTO, utc(2026, 11, 28, 14, 30)) is BlockReason.OUTSIDE_HOURS  # 09:30
    assert reason(TORONTO, utc(2026, 11, 28, 15, 0)) is None  # 10:00
    assert reason(TORONTO, utc(2026, 11, 28, 23, 0)) is BlockReason.OUTSIDE_HOURS  # 18:00


def test_campaign_window_narrows_but_never_widens_the_legal_one() -> None:
    wide = campaign(hours={"start": "06:00", "end": "23:00"})
    assert reason(NY, utc(2026, 11, 25, 12, 0), wide) is BlockReason.OUTSIDE_HOURS  # 07:00 < legal 08:00
    narrow = campaign(hours={"start": "10:00", "end": "17:00"})
    assert reason(NY, utc(2026, 11, 25, 14, 0), narrow) is BlockReason.OUTSIDE_HOURS  # 09:00
    assert reason(NY, utc(2026, 11, 25, 15, 0), narrow) is None
    assert effective_window(narrow, "US-FL", 2) == (time(10), time(17))


def test_campaign_override_per_place_and_no_sunday() -> None:
    c = campaign(hours={"overrides": {"US-NY": {"start": "12:00", "end": "13:00", "sunday": False}}})
    assert reason(NY, utc(2026, 11, 25, 16, 0), c) is BlockReason.OUTSIDE_HOURS  # 11:00
    assert reason(NY, utc(2026, 11, 25, 17, 30), c) is None  # 12:30
    v = check_hours(c, classify(NY), utc(2026, 11, 29, 17, 30))  # Sunday 12:30
    assert v.reason is BlockReason.OUTSIDE_HOURS and "Sunday" in v.detail
    assert reason(MIAMI, utc(2026, 11, 25, 14, 0), c) is None  # Florida not overridden


def test_holiday_in_the_callee_local_date() -> None:
    c = campaign(hours={"holidays": ["2026-12-25"]})
    # 2026-12-25 15:00 UTC: 10:00 in New York on Christmas Day.
    v = check_hours(c, classify(NY), utc(2026, 12, 25, 15, 0))
    assert v.reason is BlockReason.HOLIDAY and "2026-12-25" in v.detail
    # 2026-12-26 02:30 UTC is still 21:30 Dec 25 in Los Angeles but already Dec 26 in UTC.
    v = check_hours(c, classify("+13105550123"), utc(2026, 12, 26, 2, 30))
    assert v.reason is BlockReason.HOLIDAY
    assert reason(NY, utc(2026, 12, 24, 15, 0), c) is None


def test_unknown_zone_blocks() -> None:
    info = classify("+881612345678")  # Iridium satellite: valid, no time zone
    assert info.zones == ()
    v = check_hours(campaign(), info, utc(2026, 11, 25, 16, 0))
    assert v.reason is BlockReason.UNKNOWN_ZONE
    bogus = NumberInfo("+12125550123", "US", "NY", ("Mars/Olympus_Mons",), 212, 5550123)
    v = check_hours(campaign(), bogus, utc(2026, 11, 25, 16, 0))
    assert v.reason is BlockReason.UNKNOWN_ZONE and "Mars/Olympus_Mons" in v.detail


@pytest.mark.parametrize("bad", [{"start": "21:00", "end": "08:00"},
                                 {"overrides": {"CA": {"weekend_start": "18:00", "weekend_end": "10:00"}}}])
def test_inverted_window_is_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be before"):
        campaign(hours=bad)


def test_holidays_parse_as_dates() -> None:
    assert campaign(hours={"holidays": ["2026-07-04"]}).hours.holidays == (date(2026, 7, 4),)
