"""Request models of the HTTP API: unknown keys refused, messages that name the field."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from dialer.api import (
    AgentLogin,
    AgentPause,
    ApiError,
    DncAdd,
    WrapUpDone,
    required_registries,
    validation_error,
)
from dialer.config import CampaignConfig


def message(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return validation_error(exc.value, "body").message


def test_login_defaults_and_bounds() -> None:
    login = AgentLogin.model_validate({"uri": "sip:a@127.0.0.1"})
    assert (login.pool, login.state, login.priority, login.skills) == ("default", "ready", 0, [])
    with pytest.raises(ValidationError) as exc:
        AgentLogin.model_validate({"uri": "sip:a@127.0.0.1", "priority": 5000, "pool": "a b"})
    text = message(exc)
    assert "body.priority: Input should be less than or equal to 1000" in text
    assert "body.pool: String should match pattern" in text
    with pytest.raises(ValidationError) as exc:
        AgentLogin.model_validate({"uri": "sip:a@127.0.0.1", "state": "talking"})
    assert "body.state: Input should be 'ready' or 'paused'" in message(exc)


def test_unknown_keys_are_refused_by_name() -> None:
    with pytest.raises(ValidationError) as exc:
        AgentPause.model_validate({"reason": "lunch", "minutes": 30})
    err = validation_error(exc.value, "body")
    assert isinstance(err, ApiError) and err.status == 400 and err.error_id == "invalid-request"
    assert err.message == "body.minutes: Extra inputs are not permitted"
    assert err.details == {"in": "body", "errors": [
        {"field": "minutes", "message": "Extra inputs are not permitted", "type": "extra_forbidden"}]}


def test_wrap_up_callback_needs_an_aware_time_and_only_with_callback() -> None:
    at = datetime(2030, 1, 2, 9, 30, tzinfo=UTC)
    done = WrapUpDone.model_validate({"disposition": "callback", "callback_at": at.isoformat()})
    assert done.callback_at == at
    assert WrapUpDone.model_validate({"disposition": "dnc"}).callback_at is None
    with pytest.raises(ValidationError) as exc:
        WrapUpDone.model_validate({"disposition": "callback"})
    assert "callback_at is required for the callback disposition" in message(exc)
    with pytest.raises(ValidationError) as exc:
        WrapUpDone.model_validate({"disposition": "sale", "callback_at": at.isoformat()})
    assert "callback_at is only allowed with the callback disposition, not 'sale'" in message(exc)
    with pytest.raises(ValidationError) as exc:
        WrapUpDone.model_validate({"disposition": "Sale!"})
    assert "body.disposition: String should match pattern" in message(exc)


def test_dnc_add_region_is_an_iso_code() -> None:
    assert DncAdd.model_validate({"number": "+12125550100"}).region == "US"
    with pytest.raises(ValidationError) as exc:
        DncAdd.model_validate({"number": "+12125550100", "region": "gb"})
    assert "body.region: String should match pattern '^[A-Z]{2}$'" in message(exc)


def test_required_registries_follow_rule_packs_and_campaign_lists() -> None:
    us = CampaignConfig.model_validate({"name": "us1"})
    uk = CampaignConfig.model_validate({"name": "uk1", "rule_pack": "uk", "dnc": {
        "registries": {"GB": ["uk-tps", "uk-ctps"]}, "max_age_days": 28}})
    pa = CampaignConfig.model_validate({"name": "pa", "dnc": {
        "registries": {"US": ["us-national", "state-PA"]}, "max_age_days": 20, "warn_age_days": 15}})
    none = CampaignConfig.model_validate({"name": "none", "dnc": {"registries": {"US": []}}})
    assert required_registries({"us1": us}) == {"us-national": 31}
    assert required_registries({"uk1": uk, "none": none}) == {"uk-tps": 28, "uk-ctps": 28}
    assert required_registries({"us1": us, "pa": pa}) == {"us-national": 20, "state-PA": 20}
    assert required_registries({"none": none}) == {}
