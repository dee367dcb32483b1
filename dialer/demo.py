"""`dialer demo`: the whole dialer on this machine, with live progress in the terminal.

It starts a local redis-server, loads the demo DNC registry copies and the sample leads, and runs a
real node (engine, compliance gate, Redis lead store, API, metrics) on the sample campaign. Calls go
into a simulated world (`--scenario`) in real time. The node's wall clock starts on a weekday
afternoon so that calling hours allow the sample leads at any hour you run it (a lab clock, refused
for real trunks). Ctrl-C drains the calls, prints a summary and exports the CDRs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis

from dialer.compliance.dnc import DncLists, OptOutSource, RegistryLoader
from dialer.daemon import Daemon, Services
from dialer.lab import RedisServer
from dialer.leads import RECORD_FIELDS
from dialer.leads_redis import RedisLeadStore
from dialer.outcomes import AgentState

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
CAMPAIGN = "demo"


def lab_start(today: datetime | None = None) -> datetime:
    """The most recent past weekday at 19:00 UTC: 14:00 in New York, 11:00 in Seattle."""
    day = (today or datetime.now(UTC)).date() - timedelta(days=1)
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    return datetime(day.year, day.month, day.day, 19, 0, tzinfo=UTC)


def register(sub: Any) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser("demo", help="run the dialer locally on a sample campaign with live progress")
    p.add_argument("--agents", type=int, default=10, help="simulated agents logged in (default 10)")
    p.add_argument("--scenario", type=Path, default=REPO_CONFIG / "scenarios" / "warm.toml",
                   help="the simulated world the calls go to")
    p.add_argument("--leads", type=Path, default=REPO_CONFIG / "leads" / "sample.csv", help="lead CSV file")
    p.add_argument("--workdir", type=Path, default=Path("run/demo"), help="where Redis data, logs, CDRs go")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--api-port", type=int, default=8080, help="HTTP API and /metrics port (0: any free)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Handler of `dialer demo`."""
    if args.agents < 1:
        print("dialer demo: --agents must be at least 1", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "redis").mkdir(parents=True)
    redis = RedisServer(workdir / "redis")
    redis.start()
    try:
        config = write_config(workdir, redis.url, args.api_port)
        return asyncio.run(run_demo(args, redis, config))
    finally:
        redis.stop()


def write_config(workdir: Path, redis_url: str, api_port: int) -> Path:
    """dialer.toml and the demo campaign (the shipped sample campaign, renamed)."""
    campaigns = workdir / "campaigns"
    campaigns.mkdir(parents=True, exist_ok=True)
    sample = (REPO_CONFIG / "campaigns" / "sample.toml").read_text()
    audio = (REPO_CONFIG / "audio").resolve()
    sample = sample.replace('name = "sample"', f'name = "{CAMPAIGN}"').replace('"config/audio/', f'"{audio}/')
    (campaigns / f"{CAMPAIGN}.toml").write_text(sample)
    path = workdir / "dialer.toml"
    path.write_text(
        'campaigns_dir = "campaigns"\ndrain_timeout_s = 10.0\n'
        f'[redis]\nurl = "{redis_url}"\nhealth_check_interval_s = 1.0\n'
        f'[api]\nport = {api_port}\n'
        '[logging]\nlevel = "warning"\njson = true\n'
    )
    return path


async def prepare(redis_url: str, leads_csv: Path, start: datetime) -> tuple[int, int]:
    """Load the demo registry copies, opt one lead out on the internal list, import the leads."""
    raw = aioredis.Redis.from_url(redis_url)
    text = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        loader = RegistryLoader(raw)
        as_of = (start - timedelta(days=1)).date()
        for name, file in (("us-national", "demo-us-national.txt"), ("ca-dncl", "demo-ca-dncl.txt")):
            await loader.load(name, [REPO_CONFIG / "dnc" / file], as_of=as_of, now=start.timestamp())
        store = RedisLeadStore(text)
        with leads_csv.open("rb") as fh:
            report = await store.import_csv(CAMPAIGN, fh)
        with leads_csv.open(newline="") as fh:
            first = next(csv.DictReader(fh))["number"]
        from dialer.compliance.numbers import normalise

        await DncLists(raw).add(normalise(first), source=OptOutSource.CLI)
        return report.imported, report.rejected
    finally:
        await raw.aclose()
        await text.aclose()


def status_line(svc: Services, started: float) -> str:
    """One line of live progress."""
    rt = svc.engine.campaigns[CAMPAIGN]
    s = rt.stats
    states = {state: 0 for state in AgentState}
    for agent in svc.agents:
        states[agent.state] += 1
    rate = s.abandons / s.live_answers if s.live_answers else 0.0
    elapsed = int(time.monotonic() - started)
    return (f"{elapsed // 60:02d}:{elapsed % 60:02d}  dials {s.dials:5d}  blocked {s.blocked:3d}  "
            f"live {s.live_answers:4d}  machines {s.machines:4d}  abandons {s.abandons:3d} ({rate:5.2%})  "
            f"ringing {sum(1 for c in rt.calls.values() if c.answered_at is None):3d}  "
            f"agents talking {states[AgentState.TALKING]:2d} wrap {states[AgentState.WRAP_UP]:2d} "
            f"ready {states[AgentState.READY]:2d}")


async def show_progress(daemon: Daemon, out: TextIO, stop: asyncio.Event) -> None:
    """Print the status line every second (rewritten in place on a terminal) until `stop`."""
    await daemon.started.wait()
    svc = daemon.services
    assert svc is not None
    started = time.monotonic()
    tty = out.isatty()
    last_print = 0.0
    while not stop.is_set():
        line = status_line(svc, started)
        if tty:
            out.write("\r" + line)
            out.flush()
        elif time.monotonic() - last_print >= 5:
            out.write(line + "\n")
            out.flush()
            last_print = time.monotonic()
        try:
            async with asyncio.timeout(1.0):
                await stop.wait()
        except TimeoutError:
            pass
    out.write(("\r" if tty else "") + status_line(svc, started) + "\n")


async def export_cdrs(redis_url: str, path: Path) -> int:
    """Write the demo campaign's CDRs as CSV; returns how many."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    count = 0
    try:
        store = RedisLeadStore(client)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(RECORD_FIELDS))
            writer.writeheader()
            async for _, record in store.cdrs(CAMPAIGN):
                row = record.as_dict()
                writer.writerow({k: row.get(k) for k in RECORD_FIELDS})
                count += 1
    finally:
        await client.aclose()
    return count


async def run_demo(args: argparse.Namespace, redis: RedisServer, config: Path) -> int:
    """Load the demo data, run the node until Ctrl-C (or `--duration`), summarise."""
    workdir: Path = args.workdir
    out = sys.stdout
    start = lab_start()
    imported, rejected = await prepare(redis.url, args.leads, start)
    print(f"redis-server on 127.0.0.1:{redis.port} (data in {workdir / 'redis'})", file=out)
    print(f"{imported} leads imported ({rejected} rejected); demo DNC registry copies loaded; "
          f"lab clock starts {start:%a %Y-%m-%d %H:%M} UTC", file=out)
    print(f"calls go to the simulated world {args.scenario.name}; {args.agents} simulated agents; "
          "Ctrl-C to stop", file=out)
    daemon = Daemon(config, simulate=args.scenario, sim_agents=args.agents, clock_start=start)
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run())
    progress = asyncio.create_task(show_progress(daemon, out, stop))
    if args.duration > 0:
        done, _ = await asyncio.wait({run}, timeout=args.duration)
        if not done:
            daemon.request_stop()
    code = await run
    stop.set()
    await progress
    if daemon.api_port:
        print(f"API and metrics were at http://127.0.0.1:{daemon.api_port}/metrics", file=out)
    cdr_path = (workdir / "cdrs.csv").resolve()
    count = await export_cdrs(redis.url, cdr_path)
    print(f"{count} call detail records written to {cdr_path}", file=out)
    print(f"daemon log (JSON): warnings and errors only; exit code {code}", file=out)
    return code
