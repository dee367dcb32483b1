"""Run real sipp peers for SIP tests: on 127.0.0.1, free ports, a temp working dir, always stopped."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from dialer.lab import SippPeer
from dialer.telephony import CallEnded, CallEvent, CallFailed

E = TypeVar("E", bound=CallEvent)

SCENARIOS = Path(__file__).resolve().parent.parent / "sipp"


class Sipp(SippPeer):
    """One sipp UAS process playing `scenario` for `calls` calls (0 = until stopped).

    `scenario` is a file in tests/sipp/ (`uas_*.xml`) or the name of a scenario built into sipp
    (`uas`).
    """

    def __init__(
        self,
        scenario: str,
        workdir: Path,
        *,
        calls: int = 1,
        keys: Mapping[str, str] | None = None,
        rtp_echo: bool = False,
        trace_messages: bool = True,
    ) -> None:
        where: Path | str = SCENARIOS / scenario if scenario.endswith(".xml") else scenario
        super().__init__(where, workdir, rtp_echo=rtp_echo, calls=calls, keys=keys,
                         trace_messages=trace_messages, unique_files=True)

    def wait(self, timeout_s: float = 10.0) -> int:
        """Wait for sipp to finish its calls; its exit code (0 = every call followed the scenario)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"sipp {self.scenario.name} did not finish in {timeout_s} s") from None

    async def finished(self, timeout_s: float = 10.0) -> int:
        """`wait` without blocking the event loop (the pool under test keeps serving its workers)."""
        return await asyncio.to_thread(self.wait, timeout_s)

    def logged_ticks(self, name: str) -> list[int]:
        """Values of `<log message="NAME [clock_tick]"/>` lines, in ms of sipp's clock."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return [int(v) for v in re.findall(rf"^{re.escape(name)} (\d+)", text, re.MULTILINE)]

    def logged(self, name: str) -> list[str]:
        """Values of `<log message="NAME value"/>` lines."""
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return re.findall(rf"^{re.escape(name)} (.*)$", text, re.MULTILINE)


@contextlib.contextmanager
def running_sipp(
    scenario: str,
    workdir: Path,
    *,
    calls: int = 1,
    keys: Mapping[str, str] | None = None,
    rtp_echo: bool = False,
) -> Iterator[Sipp]:
    """A started sipp peer, stopped when the block exits whatever happens."""
    sipp = Sipp(scenario, workdir, calls=calls, keys=keys, rtp_echo=rtp_echo)
    sipp.start()
    try:
        yield sipp
    finally:
        sipp.stop()


class EventRecorder:
    """A `Telephony` event handler for tests: records (epoch, event) and lets a test await one."""

    def __init__(self) -> None:
        self.events: list[tuple[float, CallEvent]] = []
        self._changed = asyncio.Event()

    def __call__(self, event: CallEvent) -> None:
        self.events.append((time.time(), event))
        self._changed.set()

    def of(self, call_id: str) -> list[CallEvent]:
        """Events of one call, in order."""
        return [e for _, e in self.events if e.call_id == call_id]

    def at(self, event: CallEvent) -> float:
        """When `event` was delivered (epoch)."""
        return next(t for t, e in self.events if e is event)

    async def wait_for(self, call_id: str, kind: type[E], timeout_s: float = 10.0) -> E:
        """The first event of type `kind` for `call_id`, waiting up to `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while True:
                for _, event in self.events:
                    if event.call_id == call_id and isinstance(event, kind):
                        return event
                self._changed.clear()
                await self._changed.wait()

    async def wait_count(self, call_id: str, kind: type[E], count: int, timeout_s: float = 10.0) -> list[E]:
        """The first `count` events of type `kind` for `call_id`, waiting up to `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while True:
                found: list[E] = [e for _, e in self.events if e.call_id == call_id and isinstance(e, kind)]
                if len(found) >= count:
                    return found[:count]
                self._changed.clear()
                await self._changed.wait()

    async def wait_terminal(self, call_id: str, timeout_s: float = 10.0) -> CallFailed | CallEnded:
        """The call's terminal event."""
        async with asyncio.timeout(timeout_s):
            while True:
                for _, event in self.events:
                    if event.call_id == call_id and isinstance(event, CallFailed | CallEnded):
                        return event
                self._changed.clear()
                await self._changed.wait()
