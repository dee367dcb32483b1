"""The daemon's shutdown diagnostics: a shutdown that stalls says where it waits."""

from __future__ import annotations

import asyncio

import structlog

from dialer.daemon import log_stalled_shutdown


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
