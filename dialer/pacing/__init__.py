"""Pacing policies behind one interface, and the registry that builds them from config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from dialer.errors import ConfigError
from dialer.pacing.base import PacingPolicy, PacingSnapshot
from dialer.pacing.issabel import IssabelPolicy
from dialer.pacing.predictive import PredictivePolicy
from dialer.pacing.progressive import ProgressivePolicy
from dialer.pacing.ratio import RatioPolicy
from dialer.pacing.vicidial import VicidialAdaptivePolicy

POLICIES: dict[str, type[PacingPolicy]] = {
    cls.name: cls
    for cls in (
        ProgressivePolicy,
        RatioPolicy,
        VicidialAdaptivePolicy,
        IssabelPolicy,
        PredictivePolicy,
    )
}


def make_policy(name: str, params: Mapping[str, Any] | None = None, *, where: str = "pacing") -> PacingPolicy:
    """Build policy `name` with validated `params`; raise `ConfigError` listing every problem."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ConfigError([f"{where}.policy: unknown policy {name!r}, expected one of {sorted(POLICIES)}"])
    try:
        validated = cls.Params.model_validate(dict(params or {}))
    except ValidationError as exc:
        raise ConfigError(
            [
                f"{where}.params{''.join('.' + str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            ]
        ) from None
    return cls(params=validated)


__all__ = ["POLICIES", "PacingPolicy", "PacingSnapshot", "make_policy"]
