"""`dialer demo --sip`: the demo on real SIP, from start to CDRs, with what it started stopped."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain `text` (sipp and redis-server name their dirs)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if text in args:
            found.append(args)
    return found


def test_demo_over_sip_bridges_answers_to_agent_phones_and_records_every_call(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "dialer", "demo", "--sip", "--duration", "8", "--agents", "2",
         "--api-port", "0", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    first = re.search(r"first answered call (\d+\.\d) s after start", done.stdout)
    assert first is not None, out
    final = [line for line in done.stdout.splitlines() if re.match(r"^\d\d:\d\d  dials", line)][-1]
    numbers = {k: int(v) for k, v in re.findall(r"(dials|blocked|live)\s+(\d+)", final)}
    assert numbers["live"] >= 1, final
    with (workdir / "cdrs.csv").open(newline="") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == numbers["dials"] + numbers["blocked"], final
    # Calls really went over SIP: the carrier saw each dial, the agent phones each bridged answer.
    lab = workdir / "lab"
    carrier = (lab / "carrier_messages.log").read_text(errors="replace")
    agents = (lab / "agent_messages.log").read_text(errors="replace")
    invited = set(re.findall(r"^INVITE sip:(\+\d+)@", carrier, re.MULTILINE))
    assert invited == {r["number"] for r in records if r["outcome"] != "blocked"}
    bridged = [r for r in records if r["agent_id"]]
    assert bridged and len(re.findall(r"^INVITE sip:agent\d+@", agents, re.MULTILINE)) == len(bridged)
    assert {r["agent_id"] for r in bridged} <= {"agent01", "agent02"}
    # Redis and both sipp peers were stopped (they run in sessions of their own, so nothing else would).
    assert processes_mentioning(str(workdir)) == []
