"""Simulator speed: wall time of a simulated 8-hour day of 100 agents, per pacing policy.

The issue's target is "well under a minute" for that day. Each policy runs the real engine in virtual
time against the warm scenario; the baseline in the same run is `progressive` (the cheapest policy),
so the table shows what a policy's own computation costs on top of the engine and world. Before
timing, a short `predictive` run loads its compiled kernels (compiling them on a fresh checkout,
once): that one-off cost is reported apart, as `kernels_warm_up_s`.

    python -m bench.sim [--quick] [--out DIR]

Writes DIR/sim.json (default bench/results/) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from dialer.logging import configure_logging
from dialer.pacing import POLICIES
from dialer.sim import load_scenario, run_simulation

SCENARIO = Path(__file__).resolve().parent.parent / "config" / "scenarios" / "warm.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 simulated hours instead of 8")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--agents", type=int, default=100)
    args = parser.parse_args()
    configure_logging("warning", None)
    hours = 2.0 if args.quick else 8.0
    scenario = load_scenario(SCENARIO)
    started = time.perf_counter()
    run_simulation(scenario, "predictive", agents=10, hours=0.5, seed=1)  # past its warm-up: kernels used
    warm_up = time.perf_counter() - started
    print(f"predictive kernels loaded (or compiled) by a 30-minute 10-agent run: {warm_up:.2f} s")
    rows: list[dict[str, object]] = []
    print(f"{'policy':>18}  {'agents':>6}  {'sim hours':>9}  {'wall s':>7}  {'x progressive':>13}  "
          f"{'dials':>6}  {'dials/s wall':>12}")
    base: float | None = None
    for name in ["progressive", *sorted(p for p in POLICIES if p != "progressive")]:
        started = time.perf_counter()
        result = run_simulation(scenario, name, agents=args.agents, hours=hours, seed=1)
        wall = time.perf_counter() - started
        base = base or wall
        rows.append({"policy": name, "agents": args.agents, "hours": hours, "wall_s": round(wall, 3),
                     "relative_to_progressive": round(wall / base, 2), "dials": result.dials,
                     "occupancy": round(result.occupancy, 4)})
        print(f"{name:>18}  {args.agents:>6}  {hours:>9.1f}  {wall:>7.2f}  {wall / base:>13.2f}  "
              f"{result.dials:>6}  {result.dials / wall:>12.0f}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
           "scenario": "warm", "kernels_warm_up_s": round(warm_up, 3), "rows": rows}
    (args.out / "sim.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.out / 'sim.json'}")


if __name__ == "__main__":
    main()
