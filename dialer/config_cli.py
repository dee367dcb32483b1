"""`dialer check-config PATH`: validate configuration without starting anything.

PATH is `dialer.toml` (checked together with every campaign file of its `campaigns_dir`), a
directory holding `dialer.toml`, or a single campaign file. Exit status 0 when everything is valid,
1 when anything is not, with every problem on its own line as "file: key.path: what was expected".
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dialer.config import CampaignConfig, DaemonConfig, load_all, load_campaign_file, read_toml
from dialer.errors import ConfigError

EXIT_VALID = 0
EXIT_INVALID = 1

DAEMON_FILE = "dialer.toml"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `check-config` subcommand."""
    parser = subparsers.add_parser(
        "check-config",
        help="validate dialer.toml and its campaign files (or one campaign file) and list every problem",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "path", type=Path, metavar="PATH", help="dialer.toml, its directory, or a campaign file"
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--campaign", action="store_true", help="PATH is a campaign file")
    kind.add_argument("--daemon", action="store_true", help="PATH is a dialer.toml")
    parser.set_defaults(func=run)


def is_campaign_file(path: Path, data: dict[str, Any]) -> bool:
    """Guess whether a TOML file is a campaign: it sits in a `campaigns` directory, or it has a
    campaign-only key and no daemon-only key."""
    if path.name == DAEMON_FILE:
        return False
    if path.parent.name == "campaigns":
        return True
    daemon_keys = set(DaemonConfig.model_fields) - set(CampaignConfig.model_fields)
    campaign_keys = set(CampaignConfig.model_fields) - set(DaemonConfig.model_fields)
    return bool(campaign_keys & data.keys()) and not (daemon_keys & data.keys())


def check(path: Path, *, campaign: bool | None = None) -> str:
    """Validate; return a one-line summary, or raise `ConfigError` listing every problem."""
    if path.is_dir():
        path = path / DAEMON_FILE
    if campaign is None:
        campaign = is_campaign_file(path, read_toml(path))
    if campaign:
        config = load_campaign_file(path)
        return f"{path}: valid campaign {config.name!r} (pacing {config.pacing.policy})"
    daemon, campaigns = load_all(path, os.environ)
    names = ", ".join(sorted(campaigns)) or "none"
    return f"{path}: valid; campaigns from {daemon.campaigns_dir}: {names}"


def run(args: argparse.Namespace) -> int:
    """Handler of `dialer check-config`."""
    forced = True if args.campaign else False if args.daemon else None
    try:
        summary = check(args.path, campaign=forced)
    except ConfigError as exc:
        print(f"{args.path}: invalid configuration, {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_INVALID
    print(summary)
    return EXIT_VALID
