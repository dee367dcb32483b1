"""Fixtures shared by the whole suite."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from dialer.pacing import kernels
from tests.support.servers import RedisServer


@pytest.fixture(scope="session", autouse=True)
def _pacing_kernels() -> None:
    """Compile the predictive policy's kernels before any test runs.

    On a fresh checkout that takes ~10 s, which would otherwise land inside whichever test first
    paces a campaign (a daemon start, say), against its time limits.
    """
    kernels.warm_up()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh real redis-server on a free loopback port, stopped after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of a fresh real redis-server."""
    return redis_server.url


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Each test starts and ends with structlog's defaults and no dialer log handler."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "dialer"]:
        root.removeHandler(handler)
