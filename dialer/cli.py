"""The `dialer` command. Each domain registers its own subcommands in its `cli` module."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dialer.errors import DialerError

COMMAND_MODULES = (
    "dialer.sim.cli",
    "dialer.leads_cli",
    "dialer.config_cli",
    "dialer.compliance.cli",
    "dialer.daemon_cli",
    "dialer.demo",
)
"""Modules with `register(subparsers)`; each subcommand sets `func(args) -> int` as its handler."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="dialer", description="Asynchronous predictive dialer")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (2 for usage errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except DialerError as exc:
        print(f"dialer: {exc}", file=sys.stderr)
        return 2
    return code
