"""SIP pool benchmark against sipp on loopback: call setups per second and concurrent legs with media.

Two phases, each with its own `SipPool` and sipp peer (`sipp -sn uas`, the built-in answering
scenario) on 127.0.0.1:

1. Setups: calls are originated at a fixed offered rate (one clearance minted per call, as the gate
   does), hung up as soon as `CallAnswered` arrives, and counted when their `CallEnded` comes back.
   Steps of increasing offered rate; `setups_per_s` is the highest rate completed in full with no
   failure and no worker crash.
2. Legs: a pool of `--workers` workers (4 legs each, the pjsua2 wheel's cap) is filled with calls
   to a sipp peer echoing RTP (`-rtp_echo`), so every leg sends and receives 50 G.711 packets/s.
   The legs are held for 60 s (`--quick`: 10 s); `max_concurrent_legs` is how many were still up at
   the end. RSS and CPU (worker processes plus the pool's own process) are divided by that count.

    python -m bench.sip [--quick] [--workers N] [--out DIR]

Writes DIR/sip.json (keys `setups_per_s, max_concurrent_legs, rss_mb_per_leg, cpu_percent_per_leg,
worker_crashes, failures`, plus details) and DIR/sip.md, and prints the table. Targets (issue 4) on a
2-core machine: >= 50 setups/s sustained without a worker crash, >= 200 concurrent legs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dialer.compliance.gate import mint_clearance
from dialer.errors import DialerError
from dialer.logging import configure_logging
from dialer.telephony import CallAnswered, CallEnded, CallEvent, CallFailed, DialRequest
from sip.pool import SipPool
from sip.settings import SipSettings
from tests.support.sipp import Sipp

RESULTS = Path(__file__).resolve().parent / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    """What happened to the calls of one phase."""

    started: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def settled(self, phase: str) -> bool:
        """Every started call has answered ("answer") or finished ("end"), or failed to start."""
        done = self.answered if phase == "answer" else self.ended
        return len(done) + len(self.failed) + len(self.errors) >= len(self.started)

    async def settle(self, phase: str, timeout_s: float) -> None:
        """Wait until `settled(phase)`, at most `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while not self.settled(phase):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pass


def _settings(host: str, workers: int, **extra: Any) -> SipSettings:
    return SipSettings(
        trunk_uri=f"sip:{host}",
        workers=workers,
        reserve_agent_slot=False,
        max_concurrent_calls=4 * workers,
        bind_address="127.0.0.1",
        rtp_port_base=random.randrange(20000, 24000, 100),
        rtp_ports_per_worker=20,
        log_level=0,
        drain_timeout_s=5.0,
        **extra,
    )


def _request(call_id: str, n: int) -> DialRequest:
    return DialRequest(
        call_id=call_id,
        number=f"+1555{n % 10_000_000:07d}",
        campaign="bench",
        caller_id="+15550000000",
        ring_timeout_s=20.0,
        detect_machine=False,
    )


async def _originate(pool: SipPool, req: DialRequest, tally: Tally) -> None:
    tally.started[req.call_id] = time.monotonic()
    try:
        await pool.originate(mint_clearance(req.number, req.campaign, time.time()), req)
    except DialerError as exc:
        tally.errors.append(str(exc))
        tally.changed.set()


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _proc_kib(pid: int, key: str, file: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _Peer:
    """A sipp UAS for the benchmark: runs until stopped, no per-message trace."""

    def __init__(self, workdir: Path, *, rtp_echo: bool) -> None:
        self.sipp = Sipp("uas", workdir, calls=0, rtp_echo=rtp_echo, trace_messages=False)

    def __enter__(self) -> Sipp:
        self.sipp.start()
        return self.sipp

    def __exit__(self, *exc: object) -> None:
        self.sipp.stop()


# Phase 1: setups per second ------------------------------------------------------------------------


async def setups_step(host: str, rate: float, duration_s: float, workers: int) -> dict[str, Any]:
    """Offer `rate` calls/s for `duration_s`; each call is hung up on answer."""
    tally = Tally()
    tasks: set[asyncio.Task[None]] = set()
    settings = _settings(host, workers, trunk_cps=rate * 1.2, worker_attempts_per_s=20.0)
    async with SipPool(settings) as pool:

        def handler(event: CallEvent) -> None:
            if isinstance(event, CallAnswered):
                tally.answered[event.call_id] = time.monotonic()
                task = asyncio.create_task(pool.hangup(event.call_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif isinstance(event, CallEnded):
                tally.ended.add(event.call_id)
            elif isinstance(event, CallFailed):
                tally.failed[event.call_id] = f"{event.outcome}:{event.reason}"
            tally.changed.set()

        pool.start(handler)
        total = int(rate * duration_s)
        no_capacity = 0
        t0 = time.monotonic()
        for i in range(total):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if pool.capacity() == 0:
                no_capacity += 1
                continue
            task = asyncio.create_task(_originate(pool, _request(f"r{rate:g}-{i}", i), tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        offered_s = time.monotonic() - t0
        await tally.settle("end", 15.0)
        completed_s = time.monotonic() - t0
        crashes = pool.restarts
        await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(tally.answered[c] - tally.started[c] for c in tally.answered if c in tally.started)
    failures = (
        len(tally.failed)
        + len(tally.errors)
        + no_capacity
        + (len(tally.started) - len(tally.ended) - len(tally.failed) - len(tally.errors))
    )
    return {
        "offered_per_s": rate,
        "offered": total,
        "completed": len(tally.ended),
        "achieved_per_s": round(len(tally.ended) / completed_s, 1),
        "offered_window_s": round(offered_s, 2),
        "failures": failures,
        "no_capacity": no_capacity,
        "worker_crashes": crashes,
        "setup_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "setup_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "failure_samples": sorted(set(tally.failed.values()) | set(tally.errors))[:5],
    }


# Phase 2: concurrent legs with media -----------------------------------------------------------------


def _udp_in_datagrams() -> int:
    """UDP datagrams received on this host so far (RTP both ways on loopback lands here)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    header, values = lines[0], lines[1]
    return int(values[header.index("InDatagrams")])


def _pids(pool: SipPool) -> list[int]:
    return list(pool.worker_pids().values())


def _cpu_s(pids: list[int]) -> float:
    return sum(_proc_cpu_s(pid) for pid in pids)


async def legs_phase(host: str, workers: int, hold_s: float) -> dict[str, Any]:
    """Fill `workers` workers with calls carrying echoed RTP, hold them, measure."""
    tally = Tally()
    tasks: set[asyncio.Task[None]] = set()
    settings = _settings(host, workers, trunk_cps=100.0, worker_attempts_per_s=20.0)
    t_open = time.monotonic()
    async with SipPool(settings) as pool:
        startup_s = time.monotonic() - t_open

        def handler(event: CallEvent) -> None:
            if isinstance(event, CallAnswered):
                tally.answered[event.call_id] = time.monotonic()
            elif isinstance(event, CallEnded):
                tally.ended.add(event.call_id)
            elif isinstance(event, CallFailed):
                tally.failed[event.call_id] = f"{event.outcome}:{event.reason}"
            tally.changed.set()

        pool.start(handler)
        target = 4 * workers
        t_fill = time.monotonic()
        for i in range(target):
            if pool.capacity() == 0:
                break
            task = asyncio.create_task(_originate(pool, _request(f"leg-{i}", i), tally))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / 100)
        await tally.settle("answer", 20.0)
        fill_s = time.monotonic() - t_fill
        pids = _pids(pool)
        me = os.getpid()
        cpu0, my0, udp0, t0 = _cpu_s(pids), _proc_cpu_s(me), _udp_in_datagrams(), time.monotonic()
        up_at_start = len(tally.answered) - len(tally.ended)
        await asyncio.sleep(hold_s)
        elapsed = time.monotonic() - t0
        udp_per_s = (_udp_in_datagrams() - udp0) / elapsed
        workers_cpu = 100.0 * (_cpu_s(pids) - cpu0) / elapsed
        pool_cpu = 100.0 * (_proc_cpu_s(me) - my0) / elapsed
        rss_kib = sum(_proc_kib(pid, "VmRSS") for pid in pids)
        pss_kib = sum(_proc_kib(pid, "Pss", "smaps_rollup") for pid in pids)
        held = len([c for c in tally.answered if c not in tally.ended and c not in tally.failed])
        dropped_during_hold = up_at_start - held
        crashes = pool.restarts
        for call_id in list(tally.answered):
            if call_id not in tally.ended:
                task = asyncio.create_task(pool.hangup(call_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks, return_exceptions=True)
    legs = max(held, 1)
    return {
        "workers": workers,
        "target_legs": target,
        "legs_held": held,
        "hold_s": round(elapsed, 1),
        "dropped_during_hold": dropped_during_hold,
        "failures": len(tally.failed) + len(tally.errors) + max(dropped_during_hold, 0),
        "worker_crashes": crashes,
        "startup_s": round(startup_s, 1),
        "fill_s": round(fill_s, 1),
        # Each leg carries 50 packets/s each way: sipp echoes what the worker sends.
        "udp_datagrams_per_s": round(udp_per_s),
        "udp_datagrams_per_s_expected": 2 * 50 * held,
        "rss_mb_total": round(rss_kib / 1024, 1),
        "pss_mb_total": round(pss_kib / 1024, 1),
        "rss_mb_per_leg": round(rss_kib / 1024 / legs, 2),
        "pss_mb_per_leg": round(pss_kib / 1024 / legs, 2),
        "cpu_percent_workers": round(workers_cpu, 1),
        "cpu_percent_pool": round(pool_cpu, 1),
        "cpu_percent_per_leg": round((workers_cpu + pool_cpu) / legs, 3),
        "failure_samples": sorted(set(tally.failed.values()) | set(tally.errors))[:5],
    }


# Report ----------------------------------------------------------------------------------------------


def _rows(r: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for step in r["setup_steps"]:
        yield (
            f"setups at {step['offered_per_s']:g}/s offered",
            f"{step['achieved_per_s']:g}/s done, {step['failures']} failed, "
            f"{step['worker_crashes']} crashes, "
            f"setup p50 {step['setup_p50_ms']} ms / p99 {step['setup_p99_ms']} ms",
            "",
        )
    yield ("sustained setups", f"{r['setups_per_s']:g}/s", ">= 50/s, no worker crash")
    legs = r["legs"]
    yield (
        "concurrent legs with media",
        f"{r['max_concurrent_legs']} held {legs['hold_s']:g} s ({legs['workers']} workers, "
        f"{legs['dropped_during_hold']} dropped)",
        ">= 200",
    )
    yield (
        "media during the hold",
        f"{legs['udp_datagrams_per_s']:,} UDP datagrams/s received on loopback "
        f"(50/s each way per leg: {legs['udp_datagrams_per_s_expected']:,})",
        "",
    )
    yield ("RSS per leg", f"{r['rss_mb_per_leg']:g} MB (PSS {legs['pss_mb_per_leg']:g} MB)", "")
    yield (
        "CPU per leg",
        f"{r['cpu_percent_per_leg']:g} % (workers {legs['cpu_percent_workers']:g} % + pool "
        f"{legs['cpu_percent_pool']:g} % in all)",
        "",
    )
    yield ("worker start-up", f"{legs['startup_s']:g} s for {legs['workers']} workers", "")
    yield ("worker crashes", str(r["worker_crashes"]), "0")
    yield ("failures", str(r["failures"]), "0")


def markdown(r: dict[str, Any]) -> str:
    """The results as a markdown table for the README."""
    flag = " --quick" if r["quick"] else ""
    lines = [
        f"SIP pool benchmark (`python -m bench.sip{flag}`, {r['machine']}, Python {r['python']}, "
        f"sipp on loopback):",
        "",
        "| metric | result | target |",
        "|---|---|---|",
        *(f"| {m} | {v} | {t} |" for m, v, t in _rows(r)),
        "",
    ]
    return "\n".join(lines)


async def run(quick: bool, workers: int) -> dict[str, Any]:
    """Both phases; the summary keys of sip.json plus each phase's details."""
    rates = [50.0, 100.0] if quick else [50.0, 100.0, 150.0]
    step_s = 6.0 if quick else 20.0
    hold_s = 10.0 if quick else 60.0
    steps = []
    with tempfile.TemporaryDirectory(prefix="bench-sip-") as tmp:
        with _Peer(Path(tmp), rtp_echo=False) as peer:
            for rate in rates:
                step = await setups_step(peer.host, rate, step_s, workers=8)
                print(
                    f"setups {rate:g}/s offered: {step['achieved_per_s']}/s, failures {step['failures']}",
                    file=sys.stderr,
                )
                steps.append(step)
        with _Peer(Path(tmp), rtp_echo=True) as peer:
            legs = await legs_phase(peer.host, workers, hold_s)
    clean = [s for s in steps if s["failures"] == 0 and s["worker_crashes"] == 0]
    return {
        "setups_per_s": max((s["achieved_per_s"] for s in clean), default=0.0),
        "max_concurrent_legs": legs["legs_held"],
        "rss_mb_per_leg": legs["rss_mb_per_leg"],
        "cpu_percent_per_leg": legs["cpu_percent_per_leg"],
        "worker_crashes": sum(s["worker_crashes"] for s in steps) + legs["worker_crashes"],
        "failures": sum(s["failures"] for s in steps) + legs["failures"],
        "setup_steps": steps,
        "legs": legs,
        "quick": quick,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write DIR/sip.json and DIR/sip.md."""
    parser = argparse.ArgumentParser(prog="python -m bench.sip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short steps and a 10 s hold (about 1 min)")
    parser.add_argument("--workers", type=int, default=55, help="workers for the legs phase (4 legs each)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for sip.json and sip.md")
    args = parser.parse_args(argv)
    configure_logging("warning", stream=sys.stderr)
    result = asyncio.run(run(args.quick, args.workers))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sip.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / "sip.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
