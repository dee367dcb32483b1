"""The simulator: honest against a closed form, reproducible, strict about its input files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dialer.cli import main
from dialer.errors import ConfigError
from dialer.sim import Scenario, load_scenario, run_simulation, worst_window
from dialer.sim.scenario import Mixture

SCENARIOS = Path(__file__).resolve().parent.parent / "config" / "scenarios"


def _draw(rng: np.random.Generator, mixture: Mixture, n: int) -> np.ndarray:
    weights = np.array([c.weight for c in mixture.components])
    pick = rng.choice(len(weights), size=n, p=weights / weights.sum())
    means = np.array([c.mean_s for c in mixture.components])[pick]
    sds = np.array([c.sd_s for c in mixture.components])[pick]
    return np.maximum(mixture.min_s, rng.normal(means, sds))


def progressive_closed_form(sc: Scenario, n: int = 400_000) -> float:
    """h / (h + ((1-p)/p)·D_fail + D_live), with the D's integrated from the scenario's distributions.

    Monte Carlo with numpy, independent of the simulator's own sampling code.
    """
    rng = np.random.default_rng(7)
    timeout = sc.campaign.ring_timeout_s
    o = sc.outcomes
    h = sc.talk.mean_s + sc.wrap.mean_s
    live_ring = _draw(rng, sc.ring.live, n)
    live_ok = live_ring < timeout
    p = o.live * live_ok.mean()
    decision = _draw(rng, sc.amd.human_decision_s, int(live_ok.sum()))
    d_live = (live_ring[live_ok] + decision).mean() + sc.connect_s
    machine_ring = _draw(rng, sc.ring.machine, n)
    machine_answered = machine_ring + _draw(rng, sc.amd.machine_decision_s, n)
    machine_d = np.where(machine_ring < timeout, machine_answered, timeout)
    fail_time = {
        "late_live": (o.live * (1 - live_ok.mean()), timeout),
        "machine": (o.machine, machine_d.mean()),
        "busy": (o.busy, np.minimum(_draw(rng, sc.ring.busy, n), timeout).mean()),
        "no_answer": (o.no_answer, timeout),
        "failed": (o.failed, np.minimum(_draw(rng, sc.ring.failed, n), timeout).mean()),
    }
    weight = sum(w for w, _ in fail_time.values())
    d_fail = sum(w * d for w, d in fail_time.values()) / weight
    return float(h / (h + (1 - p) / p * d_fail + d_live))


def test_progressive_occupancy_matches_the_closed_form_on_the_warm_list() -> None:
    warm = load_scenario(SCENARIOS / "warm.toml")
    # Perfect AMD: the closed form has no term for a machine reaching an agent.
    sc = warm.model_copy(update={"amd": warm.amd.model_copy(update={"false_positive": 0.0,
                                                                     "false_negative": 0.0})})
    expected = progressive_closed_form(sc)
    runs = [run_simulation(sc, "progressive", agents=20, hours=6, seed=s) for s in (1, 2, 3)]
    measured = sum(r.occupancy for r in runs) / len(runs)
    print(f"progressive occupancy: simulated {measured:.4f}, closed form {expected:.4f}")
    assert abs(measured - expected) <= 0.015
    assert all(r.abandons == 0 for r in runs)  # progressive with perfect AMD never abandons


def test_same_seed_same_day_other_seed_other_day() -> None:
    sc = load_scenario(SCENARIOS / "warm.toml")
    a = run_simulation(sc, "progressive", agents=10, hours=1, seed=5)
    b = run_simulation(sc, "progressive", agents=10, hours=1, seed=5)
    c = run_simulation(sc, "progressive", agents=10, hours=1, seed=6)
    assert a == b
    assert a.dials != c.dials or a.occupancy != c.occupancy


def test_a_large_day_runs_and_reports_consistent_counts() -> None:
    sc = load_scenario(SCENARIOS / "cold.toml")
    r = run_simulation(sc, "progressive", agents=100, hours=2, seed=1)
    assert r.dials > 10_000
    assert 0.5 < r.occupancy < 0.8
    assert r.dials_per_live == pytest.approx(r.dials / r.live_answers, rel=0.02)
    assert len(r.timeline) == 2 * 12
    assert 0 < r.talk_min_per_agent_hour < 60 * r.occupancy


def test_shifting_day_changes_the_world_at_each_phase() -> None:
    sc = load_scenario(SCENARIOS / "shifting.toml")
    assert [sc.phase_at(h)[0].live for h in (0, 2.49, 2.5, 4.9, 5.0, 8)] == [0.25, 0.25, 0.1, 0.1, 0.3, 0.3]
    assert sc.phase_at(6)[1].mean_s == 240.0


def test_worst_window_skips_thin_windows_and_slides() -> None:
    events = [(float(t), False) for t in range(100)] + [(100.0 + t, t < 5) for t in range(100)]
    # Window of 100 s: the last 100 events hold 5 abandons.
    assert worst_window(events, 100.0, 50) == pytest.approx(5 / 100)
    assert worst_window(events, 1000.0, 50) == pytest.approx(5 / 105)  # worst: just after t=104
    # No window reaches the minimum: the whole run's rate.
    assert worst_window(events[:10], 100.0, 50) == 0.0
    assert worst_window([], 10.0, 1) == 0.0


def test_worst_window_is_the_maximum_over_windows() -> None:
    events = [(float(t), 10 <= t < 20) for t in range(200)]
    assert worst_window(events, 50.0, 40) == pytest.approx(10 / 40)


def test_bad_scenario_lists_every_problem_with_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        """
name = "bad"
colour = "blue"
[outcomes]
live = 0.5
machine = 0.3
[talk]
mean_s = -180.0
[campaign]
ring_timeout_s = 10
"""
    )
    with pytest.raises(ConfigError) as info:
        load_scenario(bad)
    text = str(info.value)
    assert f"{bad}: colour: unknown key" in text
    assert f"{bad}: outcomes: Value error, probabilities must sum to 1, they sum to 0.8" in text
    assert f"{bad}: talk.mean_s: Input should be greater than 0" in text
    assert f"{bad}: campaign.ring_timeout_s: Input should be greater than or equal to 15" in text
    assert len(info.value.problems) == 4


def test_durations_replayed_from_csv_with_bad_rows_reported_by_line(tmp_path: Path) -> None:
    base = (SCENARIOS / "warm.toml").read_text()
    (tmp_path / "talk.csv").write_text("call,seconds\n1,60\n2,abc\n3,-5\n")
    scenario = tmp_path / "replay.toml"
    scenario.write_text(base.replace('distribution = "lognormal"\nmean_s = 180.0\nsd_s = 150.0',
                                     'distribution = "csv"\ncsv = "talk.csv"'))
    with pytest.raises(ConfigError) as info:
        load_scenario(scenario)
    assert info.value.problems == [
        f"{scenario}: talk.csv: {tmp_path / 'talk.csv'}:3: seconds='abc' is not a number",
        f"{scenario}: talk.csv: {tmp_path / 'talk.csv'}:4: seconds='-5' must be > 0",
    ]
    (tmp_path / "talk.csv").write_text("seconds\n60\n60\n60\n")
    sc = load_scenario(scenario)
    r = run_simulation(sc, "progressive", agents=5, hours=1, seed=1, scenario_dir=tmp_path)
    # Every person talks exactly 60 s (a machine passed as human: 8 s), so total talk minutes is the
    # connected humans, less at most one partial call per agent at the end of the hour.
    talk_minutes = r.talk_min_per_agent_hour * 5
    connected_humans = r.live_answers - r.abandons - r.amd_false_negatives
    assert connected_humans - 5 <= talk_minutes <= connected_humans + r.amd_false_negatives * 8 / 60


def test_cli_simulate_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--scenario", str(SCENARIOS / "warm.toml"), "--policy", "progressive",
                 "--agents", "5", "--hours", "0.5", "--seed", "3", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("occupancy", "talk_min_per_agent_hour", "abandon_rate", "worst_window_abandon",
                "mean_wait_s", "dials_per_live"):
        assert isinstance(out[key], float)
    assert out["agents"] == 5 and out["seed"] == 3


def test_cli_simulate_rejects_bad_arguments_all_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--scenario", str(SCENARIOS / "warm.toml"), "--policy", "nope",
                 "--agents", "0", "--hours", "-1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown policy 'nope'" in err
    assert "--agents: must be at least 1, got 0" in err
    assert "--hours: must be positive, got -1.0" in err
