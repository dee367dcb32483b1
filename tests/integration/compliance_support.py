"""Shared helpers of the compliance integration tests (gate, DNC registry, abandon ledger, CLI)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dialer.config import CampaignConfig

NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC).timestamp()
"""Wednesday 2026-11-25 17:00 UTC: 12:00 in New York, 09:00 in Los Angeles, inside every window."""
TODAY = date(2026, 11, 25)


def days_ago(n: int) -> date:
    """The date `n` days before `TODAY`."""
    return TODAY - timedelta(days=n)


def campaign(name: str = "c", **kw: Any) -> CampaignConfig:
    """A valid campaign (progressive pacing) with settings `kw`."""
    return CampaignConfig.model_validate({"name": name, "pacing": {"policy": "progressive"}, **kw})


def write_lines(path: Path, *lines: str) -> Path:
    """A registry file with one record a line."""
    path.write_text("".join(f"{line}\n" for line in lines))
    return path
