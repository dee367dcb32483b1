"""`dialer simulate`: run the engine and a policy against a scenario in virtual time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dialer.errors import ConfigError
from dialer.logging import configure_logging
from dialer.pacing import make_policy
from dialer.sim.report import plot_timeline, table
from dialer.sim.run import run_simulation
from dialer.sim.scenario import load_scenario


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `simulate` subcommand."""
    p = sub.add_parser("simulate", help="simulate a campaign in virtual time and report pacing quality")
    p.add_argument("--scenario", type=Path, required=True, help="scenario TOML (see config/scenarios/)")
    p.add_argument("--policy", default="predictive",
                   help="progressive, ratio, vicidial_adaptive, issabel or predictive")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="a policy parameter (repeatable), e.g. --param dial_level=2.5")
    p.add_argument("--agents", type=int, default=50, help="agents logged in throughout (default 50)")
    p.add_argument("--hours", type=float, default=8.0, help="simulated hours (default 8)")
    p.add_argument("--seed", type=int, action="append", help="random seed (repeatable; default 1)")
    p.add_argument("--json", action="store_true", help="print results as JSON instead of a table")
    p.add_argument("--plot", type=Path, help="write a PNG of busy agents and window abandon over time")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `dialer simulate`."""
    configure_logging("warning", None)  # per-call events of a simulated day are noise here
    problems: list[str] = []
    params = dict(args.param)
    try:
        make_policy(args.policy, params, where="--policy/--param")
    except ConfigError as exc:
        problems.extend(exc.problems)
    if args.agents < 1:
        problems.append(f"--agents: must be at least 1, got {args.agents}")
    if not args.hours > 0:
        problems.append(f"--hours: must be positive, got {args.hours}")
    if problems:
        raise ConfigError(problems)
    scenario = load_scenario(args.scenario)
    results = [
        run_simulation(scenario, args.policy, params, agents=args.agents, hours=args.hours, seed=seed,
                       scenario_dir=args.scenario.parent)
        for seed in (args.seed or [1])
    ]
    if args.json:
        out = [{k: v for k, v in r.as_dict().items() if k != "timeline"} for r in results]
        json.dump(out if len(out) > 1 else out[0], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"scenario {scenario.name}: {scenario.description}")
        print(table(results))
    if args.plot:
        plot_timeline(results, args.plot, scenario.campaign.abandon_limit)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
