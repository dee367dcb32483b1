"""`dialer leads import|status|recycle` and `dialer cdr export`: the lead store from the command line.

The Redis URL comes from `--redis-url`, else `DIALER_REDIS_URL`, else `redis://127.0.0.1:6379/0`.
Exit codes: 0 success; 1 partial success (rows rejected) or Redis unreachable; 2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import RedisError

from dialer.errors import LeadError
from dialer.leads import RECORD_FIELDS, RowError, check_region, lead_id_for, normalize_number
from dialer.leads_redis import DEFAULT_REDIS_URL, CampaignCounts, LeadInfo, RedisLeadStore
from dialer.logging import configure_logging
from dialer.outcomes import Outcome

REDIS_URL_ENV = "DIALER_REDIS_URL"

def redis_url(args: argparse.Namespace) -> str:
    """The Redis URL: `--redis-url`, else `$DIALER_REDIS_URL`, else the local default."""
    url: str | None = args.redis_url or os.environ.get(REDIS_URL_ENV)
    return url or DEFAULT_REDIS_URL


def safe_url(url: str) -> str:
    """The URL without its password, fit for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def parse_time(text: str, option: str) -> float:
    """An ISO 8601 time (naive means UTC) or `now`, as epoch seconds."""
    if text == "now":
        return time.time()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise LeadError(f"{option}: expected an ISO 8601 time such as 2026-01-31T09:00:00Z or 'now', "
                        f"got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _add_redis(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", help=f"Redis URL (default: ${REDIS_URL_ENV}, else {DEFAULT_REDIS_URL})")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `leads` and `cdr` subcommands."""
    leads = sub.add_parser("leads", help="import lead files and inspect a campaign's leads")
    leads_sub = leads.add_subparsers(dest="leads_command", required=True, metavar="ACTION")

    imp = leads_sub.add_parser(
        "import", help="import a CSV lead file into a campaign (idempotent)",
        description="Import a CSV lead file. Columns: number (required), first_name, last_name and any "
                    "others (kept as lead data); see config/leads/README.md. Rejected rows are listed "
                    "on stderr with their line numbers. Exit 0 if every row was accepted, 1 if some "
                    "were rejected, 2 if the file cannot be used at all.")
    imp.add_argument("campaign", help="campaign name")
    imp.add_argument("file", type=Path, help="CSV file (UTF-8, header line first)")
    imp.add_argument("--region", default="US",
                     help="region for numbers written without +country code (ISO 3166, default US)")
    imp.add_argument("--due", default=None, metavar="ISO|now",
                     help="when new leads become due (default: immediately)")
    _add_redis(imp)
    imp.set_defaults(func=run_import)

    status = leads_sub.add_parser("status", help="lead counts of a campaign, or one lead and its history")
    status.add_argument("campaign", help="campaign name")
    which = status.add_mutually_exclusive_group()
    which.add_argument("--lead-id", help="show this lead and its attempt history")
    which.add_argument("--number", help="show the lead with this number and its attempt history")
    status.add_argument("--region", default="US", help="region for --number without +country code")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_redis(status)
    status.set_defaults(func=run_status)

    recycle = leads_sub.add_parser("recycle",
                                   help="put finished leads with given outcomes back in the hopper")
    recycle.add_argument("campaign", help="campaign name")
    recycle.add_argument("--outcome", action="append", required=True, choices=[o.value for o in Outcome],
                         help="last outcome to recycle (repeatable)")
    recycle.add_argument("--at", default="now", metavar="ISO|now", help="when they become due (default now)")
    _add_redis(recycle)
    recycle.set_defaults(func=run_recycle)

    cdr = sub.add_parser("cdr", help="call detail records")
    cdr_sub = cdr.add_subparsers(dest="cdr_command", required=True, metavar="ACTION")
    export = cdr_sub.add_parser("export", help="export a campaign's CDR stream as CSV or JSON lines")
    export.add_argument("--campaign", required=True, help="campaign name")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                        help="output format (default csv)")
    export.add_argument("--since", metavar="ISO", help="only records written at or after this time")
    export.add_argument("--out", type=Path, help="output file (default stdout)")
    _add_redis(export)
    export.set_defaults(func=run_export)


def _with_store(args: argparse.Namespace, body: Callable[[RedisLeadStore], Awaitable[int]]) -> int:
    # stdout carries the command's output (an export may go there): logs go to stderr, warnings only,
    # since the summary lines say what info-level events would.
    configure_logging("warning", stream=sys.stderr)
    url = redis_url(args)

    async def main() -> int:
        async with RedisLeadStore.from_url(url) as store:
            return await body(store)

    try:
        return asyncio.run(main())
    except RedisError as exc:
        print(f"dialer: Redis at {safe_url(url)}: {exc}", file=sys.stderr)
        return 1


# leads import -------------------------------------------------------------------------------------


def run_import(args: argparse.Namespace) -> int:
    """Handler of `dialer leads import`."""
    region = check_region(args.region)
    due_at = 0.0 if args.due is None else parse_time(args.due, "--due")
    path: Path = args.file
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise LeadError(f"cannot read lead file {path}: {exc.strerror}") from None

    def report_row(error: RowError) -> None:
        print(f"{path}: {error}", file=sys.stderr)

    async def body(store: RedisLeadStore) -> int:
        with fh:
            report = await store.import_csv(args.campaign, fh, default_region=region, due_at=due_at,
                                            on_error=report_row)
        print(f"{args.campaign}: {report.rows} rows: {report.imported} imported, {report.existing} already "
              f"present, {report.rejected} rejected")
        return 1 if report.rejected else 0

    return _with_store(args, body)


# leads status -------------------------------------------------------------------------------------


def _counts_dict(counts: CampaignCounts) -> dict[str, int | str]:
    return {"campaign": counts.campaign, "leads": counts.leads, "due": counts.due,
            "scheduled": counts.scheduled, "leased": counts.leased, "done": counts.done}


def _info_dict(info: LeadInfo) -> dict[str, object]:
    return {"lead_id": info.lead.lead_id, "campaign": info.lead.campaign, "number": info.lead.number,
            "attempts": info.lead.attempts, "state": info.state, "due_at": info.due_at,
            "lease_node": info.lease_node,
            "last_outcome": info.last_outcome.value if info.last_outcome else None,
            "disposition": info.disposition, "callback_at": info.callback_at, "zones": list(info.lead.zones),
            "data": dict(info.lead.data), "history": [r.as_dict() for r in info.history]}


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def run_status(args: argparse.Namespace) -> int:
    """Handler of `dialer leads status`."""
    lead_id: str | None = args.lead_id
    if args.number is not None:
        try:
            number, _ = normalize_number(args.number, check_region(args.region))
        except LeadError as exc:
            raise LeadError(f"--number: {exc}") from None
        lead_id = lead_id_for(args.campaign, number)

    async def body(store: RedisLeadStore) -> int:
        if lead_id is None:
            counts = await store.counts(args.campaign, time.time())
            if args.json:
                print(json.dumps(_counts_dict(counts)))
            else:
                print(f"{'campaign':<20} {'leads':>9} {'due':>9} {'scheduled':>9} {'leased':>9} {'done':>9}")
                print(f"{counts.campaign:<20} {counts.leads:>9} {counts.due:>9} {counts.scheduled:>9} "
                      f"{counts.leased:>9} {counts.done:>9}")
            return 0
        info = await store.lead_info(args.campaign, lead_id)
        if info is None:
            raise LeadError(f"no lead {lead_id} in campaign {args.campaign}")
        if args.json:
            print(json.dumps(_info_dict(info)))
            return 0
        lead = info.lead
        print(f"lead {lead.lead_id} ({lead.number}) in {lead.campaign}: {info.state}, "
              f"{lead.attempts} attempts, due {_when(info.due_at)}, last outcome {info.last_outcome or '-'}"
              + (f", leased by {info.lease_node}" if info.lease_node else "")
              + (f", callback {_when(info.callback_at)}" if info.callback_at else ""))
        print(f"  zones: {', '.join(lead.zones)}")
        print(f"  data: {json.dumps(dict(lead.data), ensure_ascii=False)}")
        print(f"  {'attempt':>7}  {'claimed':<25} {'ended':<25} {'outcome':<15} {'sip':>3}  "
              "reason / disposition")
        for rec in info.history:
            print(f"  {rec.attempt:>7}  {_when(rec.claimed_at):<25} {_when(rec.ended_at):<25} "
                  f"{rec.outcome or '-':<15} {rec.sip_status:>3}  {rec.reason} {rec.disposition}".rstrip())
        return 0

    return _with_store(args, body)


# leads recycle ------------------------------------------------------------------------------------


def run_recycle(args: argparse.Namespace) -> int:
    """Handler of `dialer leads recycle`."""
    at = parse_time(args.at, "--at")
    outcomes = {Outcome(o) for o in args.outcome}

    async def body(store: RedisLeadStore) -> int:
        moved = await store.recycle(args.campaign, outcomes, at)
        print(f"{args.campaign}: {moved} leads back in the hopper")
        return 0

    return _with_store(args, body)


# cdr export ---------------------------------------------------------------------------------------


EXPORT_COLUMNS = ("cdr_id", *RECORD_FIELDS)
"""CSV columns of an export: the stream entry id (write time in ms), then the attempt record."""


async def export_cdrs(store: RedisLeadStore, campaign: str, fmt: str, out: TextIO,
                      since: float | None = None) -> int:
    """Write the campaign's CDRs (from epoch `since`) to `out` as CSV or JSON lines; returns the count."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        async for entry_id, rec in store.cdrs(campaign, since):
            row = rec.as_dict()
            writer.writerow([entry_id, *("" if row[f] is None else row[f] for f in RECORD_FIELDS)])
            n += 1
    elif fmt == "jsonl":
        async for entry_id, rec in store.cdrs(campaign, since):
            out.write(json.dumps({"cdr_id": entry_id, **rec.as_dict()}, ensure_ascii=False) + "\n")
            n += 1
    else:
        raise LeadError(f"unknown export format {fmt!r}: expected csv or jsonl")
    return n


def run_export(args: argparse.Namespace) -> int:
    """Handler of `dialer cdr export`."""
    since = None if args.since is None else parse_time(args.since, "--since")
    out_path: Path | None = args.out
    if out_path is not None and not out_path.parent.is_dir():
        raise LeadError(f"--out: directory {out_path.parent} does not exist")

    async def body(store: RedisLeadStore) -> int:
        target: AbstractContextManager[TextIO] = (
            nullcontext(sys.stdout) if out_path is None else out_path.open("w", encoding="utf-8", newline=""))
        with target as out:
            n = await export_cdrs(store, args.campaign, args.format, out, since)
        print(f"exported {n} CDRs of {args.campaign}", file=sys.stderr)
        return 0

    return _with_store(args, body)
