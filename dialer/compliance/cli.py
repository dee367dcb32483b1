"""`dialer dnc ...`: load registries, add/remove numbers on the internal and campaign lists, check a number.

Exit codes: 0 success (for `check`: dialable now), 1 refused (for `check`: blocked, any reason; for
`load`: malformed input, nothing loaded), 2 usage errors (the `dialer` entry point maps `DialerError`).
The Redis URL comes from `--redis-url`, else `DIALER_REDIS_URL`, else `[redis] url` of `--config`,
else redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import redis.exceptions

from dialer.compliance.checker import ComplianceGate
from dialer.compliance.dnc import (
    DncLists,
    RegistryLoader,
    RegistryLoadError,
    connect,
    registry_kind,
    registry_status,
)
from dialer.compliance.gate import Blocked, DialCandidate
from dialer.compliance.numbers import normalise
from dialer.config import CampaignConfig, PacingSettings, load_campaign, read_toml
from dialer.errors import ComplianceError, ConfigError
from dialer.logging import configure_logging

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL_ENV = "DIALER_REDIS_URL"
_CAMPAIGN_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def redis_url(explicit: str | None, config_path: Path | None) -> str:
    """The Redis URL: flag, then `DIALER_REDIS_URL` (overrides the config file), then config, then default."""
    if explicit:
        return explicit
    env = os.environ.get(REDIS_URL_ENV)
    if env:
        return env
    if config_path is not None and config_path.exists():
        data: dict[str, Any] = read_toml(config_path)
        section = data.get("redis")
        if isinstance(section, dict) and isinstance(section.get("url"), str):
            return str(section["url"])
    return DEFAULT_REDIS_URL


def campaign_settings(name: str | None, campaigns_dir: Path) -> CampaignConfig:
    """Settings of campaign `name` from `campaigns_dir/NAME.toml`, or a default US campaign."""
    if name is None:
        # Pacing is irrelevant to the gate; progressive needs no parameters.
        return CampaignConfig(name="default", pacing=PacingSettings(policy="progressive"))
    if not _CAMPAIGN_NAME.match(name):
        raise ConfigError([f"--campaign: {name!r} is not a campaign name (letters, digits, _ . -)"])
    path = campaigns_dir / f"{name}.toml"
    if not path.exists():
        raise ConfigError([f"{path}: no such campaign file"])
    return load_campaign(path)


def _logs_to_stderr() -> None:
    """Keep stdout for the command's answer (scripts parse it); warnings and errors go to stderr."""
    configure_logging("warning", stream=sys.stderr)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help=f"Redis URL (default: ${REDIS_URL_ENV}, then --config, then "
                                       f"{DEFAULT_REDIS_URL})")
    p.add_argument("--config", type=Path, default=Path("config/dialer.toml"),
                   help="daemon config whose [redis] url is used (default config/dialer.toml)")


def register(subparsers: Any) -> None:
    """Add `dnc load|add|remove|check|status` to the `dialer` command."""
    dnc = subparsers.add_parser("dnc", help="do-not-call registries and lists")
    sub = dnc.add_subparsers(dest="dnc_command", required=True, metavar="ACTION")

    load = sub.add_parser("load", help="load registry files (atomic swap; refuses malformed files)")
    load.add_argument("--registry", required=True, help="us-national | ca-dncl | state-XX | uk-tps | uk-ctps")
    load.add_argument("--as-of", type=date.fromisoformat, default=None,
                      help="date of the registry copy, YYYY-MM-DD (default: oldest file/zip entry date)")
    load.add_argument("--changes", action="store_true",
                      help="the files are change lists (each line ends ,A or ,D)")
    load.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _add_common(load)
    load.set_defaults(func=cmd_load)

    for action, helptext in (("add", "put a number on the internal (or a campaign's) list"),
                             ("remove", "take a number off the internal (or a campaign's) list")):
        p = sub.add_parser(action, help=helptext)
        p.add_argument("number", help="E.164 (+12125550123) or national US format")
        p.add_argument("--campaign", help="the campaign's own list instead of the internal list")
        _add_common(p)
        p.set_defaults(func=cmd_add if action == "add" else cmd_remove)

    check = sub.add_parser("check", help="ask the gate: exit 0 dialable now, 1 blocked")
    check.add_argument("number", help="E.164 number")
    check.add_argument("--campaign", help="campaign whose settings apply (config/campaigns/NAME.toml)")
    check.add_argument("--campaigns-dir", type=Path, default=Path("config/campaigns"))
    check.add_argument("--at", type=datetime.fromisoformat, default=None,
                       help="check at this ISO time instead of now (naive = UTC)")
    _add_common(check)
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="loaded copies of a registry: area code, as-of, records")
    status.add_argument("--registry", required=True)
    _add_common(status)
    status.set_defaults(func=cmd_status)


def cmd_load(args: argparse.Namespace) -> int:
    """`dnc load`."""
    _logs_to_stderr()
    registry_kind(args.registry)
    for path in args.files:
        if not path.is_file():
            raise ComplianceError(f"{path}: no such file")

    async def run() -> int:
        client = connect(redis_url(args.redis_url, args.config))
        try:
            report = await RegistryLoader(client).load(args.registry, args.files, as_of=args.as_of,
                                                       changes=args.changes)
        except RegistryLoadError as exc:
            print(f"dialer dnc load: {exc}", file=sys.stderr)
            return 1
        finally:
            await client.aclose()
        print(f"{report.registry}: loaded {report.lines} records as of {report.as_of.isoformat()} into "
              f"{len(report.units)} area code(s) in {report.seconds:.2f} s")
        for unit, records in sorted(report.units.items()):
            print(f"  {unit}: {records} numbers")
        return 0

    return asyncio.run(run())


def _list_change(args: argparse.Namespace, add: bool) -> int:
    _logs_to_stderr()
    number = normalise(args.number)

    async def run() -> int:
        client = connect(redis_url(args.redis_url, args.config))
        try:
            lists = DncLists(client)
            if add:
                changed = await lists.add(number, campaign=args.campaign)
            else:
                changed = await lists.remove(number, campaign=args.campaign)
        finally:
            await client.aclose()
        where = f"campaign {args.campaign}" if args.campaign else "internal"
        verb = ("added to" if changed else "already on") if add else ("removed from" if changed else "not on")
        print(f"{number} {verb} the {where} do-not-call list")
        return 0

    try:
        return asyncio.run(run())
    except redis.exceptions.RedisError as exc:
        print(f"dialer dnc: redis: {exc}", file=sys.stderr)
        return 1


def cmd_add(args: argparse.Namespace) -> int:
    """`dnc add`."""
    return _list_change(args, add=True)


def cmd_remove(args: argparse.Namespace) -> int:
    """`dnc remove`."""
    return _list_change(args, add=False)


def cmd_check(args: argparse.Namespace) -> int:
    """`dnc check`: prints `dialable ...` (exit 0) or `blocked: <reason>: <detail>` (exit 1)."""
    _logs_to_stderr()
    campaign = campaign_settings(args.campaign, args.campaigns_dir)
    at: datetime | None = args.at
    now = time.time() if at is None else (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()

    async def run() -> int:
        client = connect(redis_url(args.redis_url, args.config), timeout_s=1.0)
        try:
            gate = ComplianceGate(client, {campaign.name: campaign})
            verdict = await gate.check(DialCandidate(args.number, campaign.name), now)
        finally:
            await client.aclose()
        if isinstance(verdict, Blocked):
            print(f"blocked: {verdict.reason.value}: {verdict.detail}")
            return 1
        print(f"dialable: {args.number} for campaign {campaign.name}")
        return 0

    return asyncio.run(run())


def cmd_status(args: argparse.Namespace) -> int:
    """`dnc status`."""
    _logs_to_stderr()
    registry_kind(args.registry)

    async def run() -> int:
        client = connect(redis_url(args.redis_url, args.config))
        try:
            copies = await registry_status(client, args.registry)
        finally:
            await client.aclose()
        if not copies:
            print(f"{args.registry}: no loaded copy")
            return 1
        today = datetime.now(UTC).date()
        for c in copies:
            print(f"{c.registry} {c.unit}: as of {c.as_of.isoformat()} ({(today - c.as_of).days} days), "
                  f"{c.records} numbers, sha256 {c.sha256[:16]}...")
        return 0

    try:
        return asyncio.run(run())
    except redis.exceptions.RedisError as exc:
        print(f"dialer dnc: redis: {exc}", file=sys.stderr)
        return 1
