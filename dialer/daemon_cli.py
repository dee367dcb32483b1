"""`dialer run`: start one dialer node."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from dialer.daemon import Daemon


def register(sub: Any) -> None:
    """Add the `run` subcommand."""
    p = sub.add_parser("run", help="run the dialer daemon (engine, SIP pool, API)")
    p.add_argument("--config", type=Path, default=Path("config/dialer.toml"), help="dialer.toml path")
    p.add_argument("--simulate", type=Path, metavar="SCENARIO",
                   help="place calls into a simulated world (scenario TOML) in real time instead of SIP")
    p.add_argument("--sim-agents", type=int, default=0, metavar="N",
                   help="with --simulate: log in N simulated agents on the first campaign's pool")
    p.add_argument("--seed", type=int, default=1, help="with --simulate: random seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `dialer run`: the daemon's exit code."""
    daemon = Daemon(args.config, simulate=args.simulate, sim_agents=args.sim_agents, seed=args.seed)
    return asyncio.run(daemon.run())
