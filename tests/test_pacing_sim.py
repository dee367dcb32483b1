"""`predictive` against `progressive` in a short simulated run of the shipped warm scenario."""

from __future__ import annotations

from pathlib import Path

from dialer.sim import load_scenario, run_simulation

WARM = Path(__file__).resolve().parent.parent / "config" / "scenarios" / "warm.toml"


def test_predictive_beats_progressive_on_the_warm_list_within_the_abandon_limit() -> None:
    scenario = load_scenario(WARM)
    progressive = run_simulation(scenario, policy="progressive", agents=20, hours=1.0, seed=3)
    predictive = run_simulation(scenario, policy="predictive", agents=20, hours=1.0, seed=3)
    # Progressive leaves agents idle through every ring; the model dials ahead of them.
    assert predictive.occupancy > progressive.occupancy + 0.05, (predictive.occupancy, progressive.occupancy)
    assert predictive.abandon_rate <= 0.03, predictive.abandon_rate
    assert predictive.live_answers > progressive.live_answers
