"""An asyncio event loop that runs in virtual time.

When nothing is ready to run, the loop's selector would sleep until the next timer; here it advances
the virtual clock to that timer at once instead. Code under test uses `asyncio.sleep`, `call_later`,
`asyncio.timeout` and `loop.time()` as usual and cannot tell the difference, so the simulator drives
the real engine, not a copy. There is no real I/O in a simulation; a loop with nothing scheduled and
nothing ready is a deadlock and raises.
"""

from __future__ import annotations

import asyncio
import selectors


class SimulationDeadlock(RuntimeError):
    """The simulated world has nothing left to do but something is still waiting."""


class _VirtualSelector(selectors.SelectSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationDeadlock("no timer is scheduled and nothing is ready to run")
        if timeout > 0:
            self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock jumps from one scheduled timer to the next."""

    def __init__(self, start: float = 0.0) -> None:
        self._virtual_now = start
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (called by the selector in place of sleeping)."""
        self._virtual_now += seconds
