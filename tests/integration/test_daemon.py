"""`dialer run` as a real process on a real Redis, placing simulated calls in real time.

SIGTERM during live calls drains them and records every one; SIGHUP applies a valid configuration
change from the next tick and rejects an invalid one with the old configuration still running;
an invalid configuration at start exits 78 (EX_CONFIG).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dialer.daemon import EXIT_CONFIG
from dialer.leads_redis import RedisLeadStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WARM = REPO / "config" / "scenarios" / "warm.toml"
TOKEN = "daemon-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# Number blocks per time zone (prefix + 4 digits): some zone is always inside its legal window.
ZONE_PREFIXES = ("+1212456", "+1808956", "+1310234", "+44207946", "+8131234", "+91222612", "+6129212",
                 "+551191234")

RINGING_SCENARIO = """
name = "ringing"
description = "nobody ever answers: every line rings until the ring timeout"
[outcomes]
live = 0.0
no_answer = 1.0
"""


def write_config(root: Path, redis_url: str, campaign: str, *, drain_s: float = 2.0,
                 ring_s: float = 15.0) -> Path:
    """dialer.toml (port 0, JSON logs at info) and one campaign file `c.toml` with `campaign` appended."""
    (root / "campaigns").mkdir(exist_ok=True)
    (root / "dialer.toml").write_text(f"""
campaigns_dir = "campaigns"
drain_timeout_s = {drain_s}
[redis]
url = "{redis_url}"
health_check_interval_s = 0.5
[api]
port = 0
token = "{TOKEN}"
[logging]
level = "info"
json = true
""")
    write_campaign(root, campaign, ring_s=ring_s)
    return root / "dialer.toml"


def write_campaign(root: Path, body: str, *, ring_s: float = 15.0) -> None:
    """The campaign `c`: wide hours, no registry subscription needed, fast ticks, then `body`."""
    (root / "campaigns" / "c.toml").write_text(f"""
name = "c"
tick_interval_s = 0.2
ring_timeout_s = {ring_s}
{body}
[hours]
start = 00:00:00
end = 23:59:59
[dnc]
registries = {{ US = [], GB = [], JP = [], IN = [], AU = [], BR = [] }}
""")


class DaemonProcess:
    """`python -m dialer run` with its JSON log lines collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.port = 0

    @classmethod
    async def start(cls, config: Path, scenario: Path, sim_agents: int) -> DaemonProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dialer", "run", "--config", str(config), "--simulate", str(scenario),
            "--sim-agents", str(sim_agents), cwd=REPO, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            text = line.decode(errors="replace").rstrip()
            self.raw.append(text)
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                self._new.set()

    async def event(self, name: str, timeout_s: float = 15.0, after: int = 0) -> dict[str, Any]:
        """The first log event called `name` (from index `after`), waiting for it if need be."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events[after:]:
                if event.get("event") == name:
                    return event
            if self.proc.returncode is not None and self._reader.done():
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {name}:\n" + self.log())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {name} event within {timeout_s} s:\n" + self.log())
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass

    def log(self) -> str:
        return "\n".join(self.raw[-40:])

    async def started(self) -> int:
        event = await self.event("daemon_started")
        self.port = int(event["api"].rsplit(":", 1)[1])
        return self.port

    async def stop(self) -> None:
        """Kill the process if a test left it running (never hides a failure: it only cleans up)."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._reader


@pytest.fixture
async def processes() -> AsyncIterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    try:
        yield started
    finally:
        for p in started:
            await p.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition `text` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = ",".join(sorted(p for p in re.findall(r'\w+="[^"]*"', m.group(2) or "")))
        if got == want:
            return float(m.group(3))
    return 0.0


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str,
                     daemon: DaemonProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{daemon.log()}" if daemon else ""))
        await asyncio.sleep(0.1)


async def import_dialable_leads(http: aiohttp.ClientSession, count: int) -> str:
    """Import `count` leads from a zone the gate clears right now; returns the zone's prefix."""
    for prefix in ZONE_PREFIXES:
        async with http.get(f"/dnc/{prefix}0000?campaign=c", headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
            if (await resp.json())["verdicts"][0]["allowed"]:
                break
    else:
        raise AssertionError("no zone of the test is inside its calling window")
    csv = "number\n" + "".join(f"{prefix}{i:04d}\n" for i in range(count))
    async with http.post("/campaigns/c/leads", data=csv.encode(), headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["imported"] == count
    return prefix


async def scrape(http: aiohttp.ClientSession) -> str:
    async with http.get("/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_sigterm_during_live_calls_drains_and_records_every_call(
    tmp_path: Path, redis_url: str, processes: list[DaemonProcess]
) -> None:
    drain_s = 2.0
    # Progressive pacing: over-dialling policies fall back to it anyway until the abandon window has
    # enough live answers. Forty agents put forty lines up, so people answer within seconds.
    config = write_config(tmp_path, redis_url, '[pacing]\npolicy = "progressive"', drain_s=drain_s)
    daemon = await DaemonProcess.start(config, WARM, sim_agents=40)
    processes.append(daemon)
    port = await daemon.started()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        await import_dialable_leads(http, 400)

        async def talking() -> bool:  # live calls connected to agents (warm: talk ~180 s)
            return metric(await scrape(http), "dialer_agents", campaign="c", state="talking") >= 3

        await wait_until(talking, 20, "three agents talking", daemon)
        # Stop placing calls so the count of originations is final, then wait out a tick in progress.
        async with http.post("/campaigns/c/pause", headers=AUTH) as resp:
            assert resp.status == 200
        previous = -1.0
        while True:
            await asyncio.sleep(0.4)
            text = await scrape(http)
            originated = metric(text, "dialer_originations_total", campaign="c")
            if originated == previous:
                break
            previous = originated
        assert metric(text, "dialer_agents", campaign="c", state="talking") >= 3  # still live

    sent = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(daemon.proc.wait(), drain_s + 15)
    elapsed = time.monotonic() - sent
    assert code == 0, daemon.log()
    assert elapsed < drain_s + 5, f"took {elapsed:.1f} s to exit with drain_timeout_s {drain_s}"
    draining = await daemon.event("daemon_draining")
    assert draining["calls"] >= 3
    drained = await daemon.event("daemon_drained")
    assert drained["hung_up"] >= 3  # the talking calls outlived the drain time and were hung up
    await daemon.event("daemon_stopped")

    async with RedisLeadStore.from_url(redis_url) as store:
        cdrs = [rec async for _, rec in store.cdrs("c")]
        counts = await store.counts("c", time.time())
    assert originated >= 10
    assert len(cdrs) == originated, (len(cdrs), originated)
    assert len({rec.call_id for rec in cdrs}) == len(cdrs)
    assert all(rec.outcome is not None and rec.ended_at for rec in cdrs)
    assert sum(1 for rec in cdrs if rec.connected_at) >= 3
    assert counts.leased == 0  # nothing left claimed by the stopped node


async def test_sighup_applies_a_valid_change_and_rejects_an_invalid_one(
    tmp_path: Path, redis_url: str, processes: list[DaemonProcess]
) -> None:
    # Lines ring for 60 s, longer than the test: the count of lines in flight is the pacing's alone.
    config = write_config(tmp_path, redis_url, 'max_lines = 1\n[pacing]\npolicy = "progressive"',
                          ring_s=60.0)
    (tmp_path / "ringing.toml").write_text(RINGING_SCENARIO)
    daemon = await DaemonProcess.start(config, tmp_path / "ringing.toml", sim_agents=2)
    processes.append(daemon)
    port = await daemon.started()
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        await import_dialable_leads(http, 200)

        def lines(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return metric(await scrape(http), "dialer_lines_in_flight", campaign="c") == n
            return check

        # Two ready agents, but max_lines = 1: one line rings (nobody answers).
        await wait_until(lines(1), 10, "one line ringing", daemon)
        await asyncio.sleep(0.5)
        assert metric(await scrape(http), "dialer_lines_in_flight", campaign="c") == 1

        # A valid change: another pacing policy and two lines, applied on the next tick. (Ratio pacing
        # dials like progressive until the abandon window holds enough live answers: two lines.)
        write_campaign(tmp_path, 'max_lines = 2\n[pacing]\npolicy = "ratio"\nparams = { dial_level = 3.0 }',
                       ring_s=60.0)
        mark = len(daemon.events)
        daemon.proc.send_signal(signal.SIGHUP)
        reloaded = await daemon.event("config_reloaded", after=mark)
        assert reloaded["campaigns"] == ["c"]
        await wait_until(lines(2), 3, "two lines ringing after the reload", daemon)
        text = await scrape(http)
        assert metric(text, "dialer_config_reloads_total", result="success") == 1
        assert metric(text, "dialer_config_reloads_total", result="failure") == 0
        assert metric(text, "dialer_campaign_info", campaign="c", policy="ratio", rule_pack="us",
                      mode="agent") == 1

        # An invalid change (a ring timeout under the legal 15 s, and back to progressive): rejected,
        # logged with the file and key, counted; ratio pacing keeps running.
        write_campaign(tmp_path, 'max_lines = 1\n[pacing]\npolicy = "progressive"\n', ring_s=5.0)
        mark = len(daemon.events)
        daemon.proc.send_signal(signal.SIGHUP)
        rejected = await daemon.event("config_reload_rejected", after=mark)
        assert rejected["level"] == "error"
        assert any("c.toml" in p and "ring_timeout_s" in p for p in rejected["problems"]), rejected
        async with http.get("/campaigns/c", headers=AUTH) as resp:
            before = await resp.json()
        await asyncio.sleep(0.6)  # a few ticks under the old configuration
        async with http.get("/campaigns/c", headers=AUTH) as resp:
            after = await resp.json()
        assert after["policy"] == "ratio" and after["dialing"]
        assert after["stats"]["ticks"] > before["stats"]["ticks"]
        text = await scrape(http)
        assert metric(text, "dialer_config_reloads_total", result="success") == 1
        assert metric(text, "dialer_config_reloads_total", result="failure") == 1
        assert metric(text, "dialer_config_last_reload_successful") == 0
        assert metric(text, "dialer_lines_in_flight", campaign="c") == 2
        assert not any(e.get("event") == "config_reloaded" for e in daemon.events[mark:])

    daemon.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.proc.wait(), 20) == 0, daemon.log()


async def test_invalid_configuration_at_start_exits_78(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, redis_url, "max_lines = 0\nbogus_key = 1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dialer", "run", "--config", str(config), "--simulate", str(WARM), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == EXIT_CONFIG == 78
    text = out.decode()
    assert "config_invalid" in text
    assert "max_lines" in text and "bogus_key" in text  # every problem, in one report
