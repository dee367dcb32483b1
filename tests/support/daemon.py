"""Run real dialer daemon processes in tests: config files, a DNC registry, leads, start and stop."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dialer.lab import stop_process

REPO = Path(__file__).resolve().parents[2]
SAMPLE_LEADS = REPO / "config" / "leads" / "sample.csv"

LAB_START = datetime(2026, 3, 4, 19, 0, tzinfo=UTC)
"""A Wednesday, 14:00 in New York and 11:00 in Seattle: every sample lead is inside calling hours."""

FAST_SCENARIO = """
name = "fast"
description = "short rings and talks, for tests in real time"
connect_s = 0.05
safe_harbor_s = 1.0
[outcomes]
live = 0.5
machine = 0.1
busy = 0.2
no_answer = 0.0
failed = 0.2
[ring]
live = { components = [ { weight = 1.0, mean_s = 1.0, sd_s = 0.3 } ], min_s = 0.2 }
machine = { components = [ { weight = 1.0, mean_s = 1.0, sd_s = 0.3 } ], min_s = 0.2 }
busy = { components = [ { weight = 1.0, mean_s = 0.5, sd_s = 0.1 } ], min_s = 0.1 }
failed = { components = [ { weight = 1.0, mean_s = 0.3, sd_s = 0.1 } ], min_s = 0.1 }
[talk]
distribution = "lognormal"
mean_s = 3.0
sd_s = 1.0
[wrap]
distribution = "fixed"
mean_s = 0.5
[amd]
false_positive = 0.0
false_negative = 0.0
human_decision_s = { components = [ { weight = 1.0, mean_s = 0.2, sd_s = 0.05 } ], min_s = 0.05 }
machine_decision_s = { components = [ { weight = 1.0, mean_s = 0.5, sd_s = 0.1 } ], min_s = 0.1 }
"""


def write_node_config(directory: Path, redis_url: str, *, campaign: str = "demo", token: str | None = None,
                      drain_timeout_s: float = 5.0, campaign_extra: str = "", node_id: str | None = None,
                      pacing: str = "progressive") -> Path:
    """dialer.toml + campaigns/<campaign>.toml in `directory`; returns the dialer.toml path."""
    (directory / "campaigns").mkdir(parents=True, exist_ok=True)
    lines = [
        'campaigns_dir = "campaigns"',
        f"drain_timeout_s = {drain_timeout_s}",
    ]
    if node_id:
        lines.append(f'node_id = "{node_id}"')
    lines += ["[redis]", f'url = "{redis_url}"', "health_check_interval_s = 0.5",
              "[api]", "port = 0"]
    if token:
        lines.append(f'token = "{token}"')
    lines += ["[logging]", 'level = "info"', "json = true"]
    path = directory / "dialer.toml"
    path.write_text("\n".join(lines) + "\n")
    (directory / "campaigns" / f"{campaign}.toml").write_text(
        f'pacing = {{ policy = "{pacing}" }}\nwrap_up_s = 5.0\n{campaign_extra}\n'
    )
    (directory / "fast.toml").write_text(FAST_SCENARIO)
    return path


def sample_registry(directory: Path, leads: Path = SAMPLE_LEADS) -> dict[str, Path]:
    """Registry files covering every area code of the lead file, with none of its numbers listed.

    The gate blocks an area code whose registry copy is missing, so a test registry must hold each
    area code the leads use; it lists the 555-0199 number of each (not a lead).
    """
    from dialer.compliance.numbers import normalise

    us: set[str] = set()
    ca: set[str] = set()
    with leads.open(newline="") as fh:
        for row in csv.DictReader(fh):
            e164 = normalise(row["number"])
            npa = e164[2:5]
            (ca if npa in {"613", "416", "514", "604"} else us).add(f"{npa}5550199")
    out = {}
    for name, numbers in (("us-national", us), ("ca-dncl", ca)):
        if numbers:
            path = directory / f"{name}.txt"
            path.write_text("\n".join(sorted(numbers)) + "\n")
            out[name] = path
    return out


def dialer(*args: str, env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m dialer ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "dialer", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})}, check=False)


def prepare_campaign(directory: Path, redis_url: str, campaign: str = "demo", *,
                     lab_start: datetime = LAB_START, leads: Path = SAMPLE_LEADS) -> None:
    """Load a registry copy dated the day before `lab_start` and import the leads."""
    as_of: date = (lab_start - timedelta(days=1)).date()
    for name, path in sample_registry(directory, leads).items():
        done = dialer("dnc", "load", "--registry", name, "--as-of", as_of.isoformat(),
                      "--redis-url", redis_url, str(path))
        assert done.returncode == 0, done.stderr
    done = dialer("leads", "import", campaign, str(leads), "--redis-url", redis_url)
    assert done.returncode == 0, done.stderr


class DaemonProcess:
    """`python -m dialer run` as a child process, with its JSON log in a file."""

    def __init__(self, config: Path, *, scenario: Path | None = None, sim_agents: int = 5,
                 lab_start: datetime | None = LAB_START, seed: int = 1, log_name: str = "daemon.log") -> None:
        args = [sys.executable, "-m", "dialer", "run", "--config", str(config), "--seed", str(seed)]
        if scenario is not None:
            args += ["--simulate", str(scenario), "--sim-agents", str(sim_agents)]
        if lab_start is not None:
            args += ["--clock-start", lab_start.isoformat()]
        self.log_path = config.parent / log_name
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        self.api_port: int | None = None

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line so far."""
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def wait_for(self, event: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """The first log event named `event`, waiting for it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for e in self.events():
                if e.get("event") == event:
                    return e
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-3000:]
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{tail}")
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} within {timeout_s} s:\n{self.log_path.read_text()[-3000:]}")

    def wait_started(self, timeout_s: float = 30.0) -> int:
        """Wait for the API to listen; returns its port."""
        started = self.wait_for("daemon_started", timeout_s)
        self.api_port = int(str(started["api"]).rsplit(":", 1)[1])
        return self.api_port

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send `sig` and wait for the exit code (SIGKILL after `timeout_s`)."""
        code = stop_process(self.proc, timeout_s, sig)
        self._log.close()
        return code
