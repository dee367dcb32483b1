"""`dialer demo`: the whole dialer on this machine, with live progress in the terminal.

It starts a local redis-server, loads the demo DNC registry copies and the sample leads, and runs a
real node (engine, compliance gate, Redis lead store, API, metrics) on the sample campaign. Calls go
into a simulated world (`--scenario`) in real time. The node's wall clock starts on a weekday
afternoon so that calling hours allow the sample leads at any hour you run it (a lab clock, refused
for real trunks). Ctrl-C drains the calls, prints a summary and exports the CDRs.

With `--sip` the calls are real SIP on loopback instead: the node's SIP worker pool dials a sipp
"carrier" (config/lab/carrier.xml: humans, machines, busy and no-answer by the number's last digit)
and bridges live answers to auto-answering sipp agent phones (config/lab/agent.xml).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import re
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import redis.asyncio as aioredis

from dialer.compliance.dnc import DncLists, OptOutSource, RegistryLoader
from dialer.daemon import Daemon, Services
from dialer.lab import RedisServer, SipLab
from dialer.leads import RECORD_FIELDS
from dialer.leads_redis import RedisLeadStore
from dialer.outcomes import AgentState

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
PROCESS_START = time.monotonic()
"""When this module was imported, i.e. about when `dialer demo` started: for time-to-first-answer."""
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
    p.add_argument("--agents", type=int, default=None,
                   help="agents logged in (default 10 simulated, 4 with --sip)")
    p.add_argument("--scenario", type=Path, default=REPO_CONFIG / "scenarios" / "warm.toml",
                   help="the simulated world the calls go to")
    p.add_argument("--leads", type=Path, default=REPO_CONFIG / "leads" / "sample.csv", help="lead CSV file")
    p.add_argument("--workdir", type=Path, default=Path("run/demo"), help="where Redis data, logs, CDRs go")
    p.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--api-port", type=int, default=8080, help="HTTP API and /metrics port (0: any free)")
    p.add_argument("--sip", action="store_true",
                   help="real SIP on loopback: the SIP worker pool against a sipp carrier and sipp agent "
                        "phones (needs sipp); --agents defaults to 4 then")
    p.set_defaults(func=main)


SIP_MAX_AGENTS = 20
"""Each agent is a bridged call on loopback: two legs in a worker process. Keep the lab small."""


def main(args: argparse.Namespace) -> int:
    """Handler of `dialer demo`."""
    if args.agents is None:
        args.agents = 4 if args.sip else 10
    if args.agents < 1:
        print("dialer demo: --agents must be at least 1", file=sys.stderr)
        return 2
    if args.sip and args.agents > SIP_MAX_AGENTS:
        print(f"dialer demo: --agents must be at most {SIP_MAX_AGENTS} with --sip", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "redis").mkdir(parents=True)
    redis = RedisServer(workdir / "redis")
    redis.start()
    lab: SipLab | None = None
    try:
        if args.sip:
            lab = SipLab(workdir / "lab")
            lab.start()
        config = write_config(workdir, redis.url, args.api_port)
        if lab is not None:
            add_sip_config(config, lab, args.agents)
        return asyncio.run(run_demo(args, redis, config, lab))
    finally:
        if lab is not None:
            lab.stop()
        redis.stop()


def add_sip_config(config: Path, lab: SipLab, agents: int) -> None:
    """The `[sip]` table for the lab, and the demo campaign's timers for phones nobody operates.

    A worker carries two bridged calls (customer + agent leg each); predictive pacing dials ahead of
    the agents, so the pool has room for about three lines per agent. Nobody sends a disposition
    from a sipp phone, so wrap-up ends by itself after a few seconds. pjsip's own log is off: its
    lines would interleave with the status line (the daemon's JSON log still reports failures).
    """
    workers = max(2, (3 * agents + 1) // 2)
    with config.open("a") as fh:
        fh.write(f'[sip]\ntrunk_uri = "{lab.trunk_uri}"\nbind_address = "127.0.0.1"\nworkers = {workers}\n'
                 f"max_concurrent_calls = {2 * workers}\nrtp_port_base = 31000\nlog_level = 0\n")
    campaign = config.parent / "campaigns" / f"{CAMPAIGN}.toml"
    text = campaign.read_text()
    shortened, found = re.subn(r"(?m)^wrap_up_s\s*=.*$", "wrap_up_s = 3.0", text, count=1)
    # Without the key, a first line keeps it a top-level key (the file ends inside a table).
    campaign.write_text(shortened if found else "wrap_up_s = 3.0\n" + text)


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
    first_answer = False
    while not stop.is_set():
        stats = svc.engine.campaigns[CAMPAIGN].stats
        if not first_answer and stats.live_answers + stats.machines > 0:
            first_answer = True
            out.write(("\r" if tty else "") + f"first answered call {time.monotonic() - PROCESS_START:.1f} s "
                      "after start\n")
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


def log_in_lab_agents(svc: Services, lab: SipLab, count: int) -> None:
    """Log the lab's agent phones in, ready, on the demo campaign's pool (what the API login does)."""
    pool = svc.campaigns[CAMPAIGN].agent_pool
    for i in range(1, count + 1):
        agent_id = f"agent{i:02d}"
        svc.agents.add(agent_id, lab.agent_uri(agent_id), pool)
        svc.agents.transition(agent_id, AgentState.READY)


async def run_demo(args: argparse.Namespace, redis: RedisServer, config: Path,
                   lab: SipLab | None = None) -> int:
    """Load the demo data, run the node until Ctrl-C (or `--duration`), summarise."""
    workdir: Path = args.workdir
    out = sys.stdout
    start = lab_start()
    imported, rejected = await prepare(redis.url, args.leads, start)
    print(f"redis-server on 127.0.0.1:{redis.port} (data in {workdir / 'redis'})", file=out)
    print(f"{imported} leads imported ({rejected} rejected); demo DNC registry copies loaded; "
          f"lab clock starts {start:%a %Y-%m-%d %H:%M} UTC", file=out)
    if lab is None:
        print(f"calls go to the simulated world {args.scenario.name}; {args.agents} simulated agents; "
              "Ctrl-C to stop", file=out)
        daemon = Daemon(config, simulate=args.scenario, sim_agents=args.agents, clock_start=start)
    else:
        print(f"calls go over SIP to the sipp carrier at {lab.carrier.host} (last digit of the number: "
              "0-3 human, 4-5 machine, 6-7 busy, 8 no answer, 9 human); "
              f"{args.agents} sipp agent phones at {lab.agents.host}; Ctrl-C to stop", file=out)
        daemon = Daemon(config, clock_start=start)
    stop = asyncio.Event()
    run = asyncio.create_task(daemon.run())
    if lab is not None:
        started = asyncio.create_task(daemon.started.wait())
        await asyncio.wait({run, started}, return_when=asyncio.FIRST_COMPLETED)
        if daemon.services is not None and daemon.started.is_set():
            log_in_lab_agents(daemon.services, lab, args.agents)
        started.cancel()
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
    if lab is not None:
        traces = lab.carrier.workdir.resolve()
        print(f"SIP traces of the carrier and agent phones (sipp -trace_msg) in {traces}", file=out)
    return code
