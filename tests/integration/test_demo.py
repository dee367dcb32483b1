"""`dialer demo` (what `make run` runs): a real node on the sample campaign, answered calls, CDRs."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_demo_answers_calls_and_writes_every_record(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "dialer", "demo", "--duration", "20", "--agents", "20", "--api-port", "0",
         "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=100, cwd=REPO, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "200 leads imported (0 rejected)" in done.stdout
    final = [line for line in done.stdout.splitlines() if re.match(r"^\d\d:\d\d  dials", line)][-1]
    numbers = dict(re.findall(r"(dials|blocked|live|abandons)\s+(\d+)", final))
    assert int(numbers["live"]) >= 1, final
    with (workdir / "cdrs.csv").open(newline="") as fh:
        records = list(csv.DictReader(fh))
    # Every call placed and every number the gate refused has its record, after the drain.
    assert len(records) == int(numbers["dials"]) + int(numbers["blocked"]), final
    outcomes = {r["outcome"] for r in records}
    assert "live" in outcomes
    blocked = [r for r in records if r["outcome"] == "blocked"]
    assert all(r["reason"] in {"dnc_national", "dnc_internal"} for r in blocked), blocked
