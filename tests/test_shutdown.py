"""The daemon's shutdown: a shutdown that stalls says where it waits; its loops end when asked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import structlog
from prometheus_client import CollectorRegistry

from dialer.daemon import Daemon, Services, log_stalled_shutdown
from dialer.metrics import DialerMetrics


async def test_a_stalled_shutdown_names_each_waiting_task_and_its_line() -> None:
    release = asyncio.Event()

    async def waits_for_release() -> None:
        await release.wait()

    async def outer() -> None:
        await waits_for_release()

    task = asyncio.create_task(outer(), name="stuck-one")
    await asyncio.sleep(0)
    with structlog.testing.capture_logs() as logs:
        log_stalled_shutdown(asyncio.get_running_loop(), 8.0)
    release.set()
    await task
    [entry] = [e for e in logs if e["event"] == "shutdown_stalled"]
    assert entry["log_level"] == "error" and entry["waited_s"] == 8.0
    stuck = next(t for t in entry["tasks"] if t["task"] == "stuck-one")
    # The whole await chain, outermost first, each with file and line.
    assert [w.split()[-1] for w in stuck["at"]] == ["outer", "waits_for_release", "wait"]
    assert all(w.startswith("test_shutdown.py:") for w in stuck["at"][:2])
    assert stuck["at"][2].startswith("locks.py:")  # asyncio.Event.wait


class _CancelSwallowingRedis:
    """Redis whose PING, like redis-py on Python 3.11 when a cancel lands as its socket write
    completes (asyncio.wait_for), swallows the cancellation and returns normally."""

    def __init__(self) -> None:
        self.pinging = asyncio.Event()

    async def ping(self) -> bool:
        self.pinging.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.05)
        return True

    async def smembers(self, key: str) -> set[bytes]:
        return set()


async def test_the_health_loop_ends_on_the_stop_event_even_when_a_cancel_is_swallowed() -> None:
    registry = CollectorRegistry()
    svc = SimpleNamespace(
        config=SimpleNamespace(redis=SimpleNamespace(health_check_interval_s=0.05)),
        redis=_CancelSwallowingRedis(), redis_ok=True, telephony=None, campaigns={},
        metrics=DialerMetrics(registry, clock=time.time),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(Path("unused.toml"))._health(cast(Services, svc), stop))
    await svc.redis.pinging.wait()
    task.cancel()  # lost inside the ping: cancelling alone would leave the loop running for good
    await asyncio.sleep(0.2)
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 2.0)
    assert registry.get_sample_value("dialer_redis_up") == 1
