"""`dialer run`: start one dialer node."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

from dialer.daemon import Daemon


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 date-time, got {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset, e.g. {text}+00:00")
    return value


def register(sub: Any) -> None:
    """Add the `run` subcommand."""
    p = sub.add_parser("run", help="run the dialer daemon (engine, SIP pool, API)")
    p.add_argument("--config", type=Path, default=Path("config/dialer.toml"), help="dialer.toml path")
    p.add_argument("--simulate", type=Path, metavar="SCENARIO",
                   help="place calls into a simulated world (scenario TOML) in real time instead of SIP")
    p.add_argument("--sim-agents", type=int, default=0, metavar="N",
                   help="with --simulate: log in N simulated agents on the first campaign's pool")
    p.add_argument("--seed", type=int, default=1, help="with --simulate: random seed")
    p.add_argument("--clock-start", type=_instant, metavar="ISO8601",
                   help="run the wall clock from this instant (e.g. 2026-03-02T15:00:00+00:00); only with "
                        "--simulate or a trunk on loopback: calling hours move with the clock")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `dialer run`: the daemon's exit code."""
    daemon = Daemon(args.config, simulate=args.simulate, sim_agents=args.sim_agents, seed=args.seed,
                    clock_start=args.clock_start)
    return asyncio.run(daemon.run())
