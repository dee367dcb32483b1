"""Rule packs, legal windows, registry selection and the compliance settings' validation."""

from __future__ import annotations

from datetime import time
from typing import Any

import pytest

from dialer.compliance.rules import (
    RULE_PACKS,
    WindowKind,
    abandon_policy,
    campaign_hours,
    legal_hours,
    registries_for,
    rule_pack,
)
from dialer.config import CampaignConfig
from dialer.errors import ConfigError


def campaign(**kw: Any) -> CampaignConfig:
    return CampaignConfig.model_validate({"name": "c", "pacing": {"policy": "progressive"}, **kw})


def test_us_pack_thirty_day_window_at_three_percent_without_false_positives() -> None:
    p = abandon_policy(campaign(rule_pack="us", amd_false_positive_rate=0.2))
    assert (p.kind, p.window_s, p.limit, p.amd_false_positive_rate, p.label) == (
        WindowKind.ROLLING, 30 * 86400.0, 0.03, 0.0, "30d")


def test_uk_pack_day_window_counts_amd_false_positives() -> None:
    p = abandon_policy(campaign(rule_pack="uk"))
    assert (p.kind, p.window_s, p.limit, p.label) == (WindowKind.ROLLING, 86400.0, 0.03, "24h")
    assert p.amd_false_positive_rate == RULE_PACKS["uk"].amd_false_positive_default > 0
    measured = abandon_policy(campaign(rule_pack="uk", amd_false_positive_rate=0.04))
    assert measured.amd_false_positive_rate == 0.04
    assert RULE_PACKS["uk"].abandon_protection_s == 72 * 3600


def test_ca_pack_calendar_month_at_five_percent_capped_by_the_campaign() -> None:
    p = abandon_policy(campaign(rule_pack="ca", abandon_limit=0.05, abandon_target=0.04))
    assert (p.kind, p.limit, p.label) == (WindowKind.CALENDAR_MONTH, 0.05, "month")
    assert abandon_policy(campaign(rule_pack="ca")).limit == 0.03  # the campaign's own 3 % is stricter
    assert abandon_policy(campaign(rule_pack="us", abandon_limit=0.05, abandon_target=0.02)).limit == 0.03


def test_unknown_rule_pack() -> None:
    with pytest.raises(ConfigError, match="unknown rule pack 'fr'"):
        rule_pack("fr")


def test_legal_hours_fall_back_from_state_to_country_to_default() -> None:
    assert legal_hours("US-FL").end == time(20)
    assert legal_hours("US-NY").end == time(21)
    assert legal_hours("CA-QC").weekend_end == time(18)
    assert legal_hours("FR").start == time(8)


def test_campaign_hours_override_order() -> None:
    c = campaign(hours={"end": "19:00", "overrides": {"US": {"end": "18:00"}, "US-TX": {"end": "17:00"}}})
    texas, ohio, canada = (campaign_hours(c, p) for p in ("US-TX", "US-OH", "CA-ON"))
    assert texas is not None and texas.end == time(17)
    assert ohio is not None and ohio.end == time(18)
    assert canada is not None and canada.end == time(19)
    assert campaign_hours(campaign(), "US-TX") is None  # no campaign restriction: the law alone


def test_registries_by_callee_country_with_campaign_overrides() -> None:
    c = campaign(dnc={"registries": {"US": ["us-national", "state-PA"], "001": []}})
    assert registries_for(c, "US") == ("us-national", "state-PA")
    assert registries_for(c, "CA") == ("ca-dncl",)
    assert registries_for(c, "GG") == ("uk-tps",)
    assert registries_for(c, "001") == ()
    assert registries_for(c, "FR") is None


@pytest.mark.parametrize(("dnc", "message"), [
    ({"area_codes": ["12"]}, "area code '12' is not a NANP area code"),
    ({"area_codes": ["112"]}, "area code '112' is not a NANP area code"),
    ({"registries": {"US": ["us-natoinal"]}}, "registries.US: unknown registry 'us-natoinal'"),
    ({"warn_age_days": 30, "max_age_days": 20}, "warn_age_days must not exceed max_age_days"),
    ({"max_age_days": 32}, "less than or equal to 31"),
])
def test_dnc_settings_validation(dnc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        campaign(dnc=dnc)
