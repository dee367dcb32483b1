"""The pacing benchmark's verdict: the paired margin over the hindsight-tuned ratio."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.pacing import Job, Row, Runner, _verdict, paired_margin


def _runs(occupancies: dict[int, float]) -> list[dict[str, Any]]:
    return [{"seed": seed, "occupancy": occ, "live_answers": 1000, "abandons": 10, "abandon_rate": 0.01,
             "worst_window_abandon": 0.02, "talk_min_per_agent_hour": 45.0}
            for seed, occ in occupancies.items()]


def test_paired_margin_pairs_runs_by_seed() -> None:
    # Listed in different orders and with a seed only one side ran: pairs are made by seed.
    pred = Row("warm", 10, "predictive", "default", _runs({1: 0.82, 2: 0.80, 3: 0.84, 9: 0.5}))
    ratio = Row("warm", 10, "ratio", "dial_level=2", _runs({3: 0.81, 1: 0.80, 2: 0.79}))
    mean, se = paired_margin(pred, ratio)  # type: ignore[misc]
    diffs = [0.02, 0.01, 0.03]
    assert mean == pytest.approx(0.02)
    sd = math.sqrt(sum((d - 0.02) ** 2 for d in diffs) / 2)
    assert se == pytest.approx(sd / math.sqrt(3))
    assert paired_margin(pred, Row("warm", 10, "ratio", "-", _runs({1: 0.8}))) is None


def test_verdict_reports_the_margin_and_judges_the_mean() -> None:
    pred = Row("warm", 10, "predictive", "default", _runs({1: 0.83, 2: 0.80}))
    ratio = Row("warm", 10, "ratio", "dial_level=2", _runs({1: 0.80, 2: 0.80}))
    [line] = _verdict([pred, ratio])
    # 81.5 % against 80 % + 2 pts misses, whatever the spread; the spread is shown beside it.
    assert "MISSES: occupancy >= hindsight ratio +2 pts (needs 82.0%)" in line
    assert "(+1.50 +- 1.50 pts over hindsight ratio, per-seed mean +- s.e.)" in line
    ratio = Row("warm", 10, "ratio", "dial_level=2", _runs({1: 0.79, 2: 0.78}))
    [line] = _verdict([pred, ratio])
    assert "meets all (+3.00 +- 1.00 pts" in line


def test_run_log_keeps_only_runs_of_todays_code(tmp_path: Path) -> None:
    current = Job("warm", "ratio", (("dial_level", 2.0),), 10, 8.0, 1)
    stale_key = json.loads(current.key())
    stale_key[-1] = "0" * 16  # made with other policy code
    gone_key = ["nowhere", "ratio", [], 10, 8.0, 1, False, "0" * 16]  # a scenario file since removed
    log = tmp_path / "runs.jsonl"
    log.write_text("".join(json.dumps({"key": k, "occupancy": 0.8}) + "\n"
                           for k in (current.key(), json.dumps(stale_key), json.dumps(gone_key))))
    runner = Runner(log, workers=1)
    assert list(runner.done) == [current.key()]
    assert [json.loads(line)["key"] for line in log.read_text().splitlines()] == [current.key()]
