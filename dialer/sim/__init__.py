"""The what-if simulator: the real engine and policies in a virtual-time world."""

from dialer.sim.run import SimResult, run_simulation, worst_window
from dialer.sim.scenario import Scenario, load_scenario

__all__ = ["Scenario", "SimResult", "load_scenario", "run_simulation", "worst_window"]
