"""Logging: JSON lines with context and UTC timestamps, numbers masked, credentials never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from dialer.logging import REDACTED, configure_logging, mask_number, mask_text, mask_value


class TtyBuffer(io.StringIO):
    """A capture stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """Leave structlog, contextvars and the root logger as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+15551234567", "+1********67"),
        ("+447911123456", "+44********56"),
        ("+35312345678", "+353******78"),
        ("5551234567", "********67"),
        ("+1 (555) 123-4567", "+1********67"),
        ("12", "**"),
        ("+19", "+**"),
    ],
)
def test_mask_number(number: str, masked: str) -> None:
    assert mask_number(number) == masked


def test_mask_text_finds_numbers_inside_text_and_leaves_other_figures() -> None:
    uri = "sip:+15551234567@trunk.example;user=phone"
    assert mask_text(uri) == "sip:+1********67@trunk.example;user=phone"
    assert mask_text("dialled 15551234567 twice") == "dialled *********67 twice"
    assert mask_text("call +44 20 7946 0958 now") == "call +44********58 now"
    assert mask_text("to +1 (555) 123-4567.") == "to +1********67."
    quiet = "503 after 2 attempts in 1200 ms, port 50600, 2026-11-26T04:25:18Z, 127.0.0.1, +3 s"
    assert mask_text(quiet) == quiet
    auth = "Authorization: Bearer s3cr3t-t0ken, next"
    assert mask_text(auth) == f"Authorization: Bearer {REDACTED}, next"


def test_mask_value_walks_containers_and_integers() -> None:
    value = {"to": ["+15551234567", ("5551234567",)], "n": 15551234567, "calls": 4, "ok": True,
             "auth": {"password": "pw"}}
    assert mask_value(value) == {
        "to": ["+1********67", ("********67",)],
        "n": "*********67",
        "calls": 4,
        "ok": True,
        "auth": {"password": REDACTED},
    }


def test_json_lines_carry_context_level_and_utc_timestamp() -> None:
    buf = io.StringIO()
    configure_logging("info", json=None, stream=buf)  # not a TTY: JSON
    structlog.contextvars.bind_contextvars(campaign="sales", call_id="c-17", agent="a1")
    structlog.get_logger().info("call_answered", kind="human", ring_s=4.5)
    [line] = lines(buf)
    assert line["event"] == "call_answered"
    assert (line["campaign"], line["call_id"], line["agent"]) == ("sales", "c-17", "a1")
    assert line["level"] == "info"
    assert line["kind"] == "human" and line["ring_s"] == 4.5
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


def test_numbers_and_credentials_never_reach_the_output() -> None:
    buf = io.StringIO()
    configure_logging("debug", json=True, stream=buf)
    structlog.contextvars.bind_contextvars(number="+15551234567")
    log = structlog.get_logger()
    log.info(
        "trunk_registered",
        uri="sip:+15551234567@trunk",
        password="hunter2",
        api_token="tok-123",
        headers={"Authorization": "Bearer abc.def", "X-Campaign": "sales"},
        secret_file="/etc/dialer/secret",
    )
    log.debug("dnc_checked", numbers=["+447911123456", "5551234567"])
    try:
        raise ValueError("cannot parse 15551234567")
    except ValueError:
        log.exception("lead_rejected")
    out = buf.getvalue()
    for leaked in ("5551234567", "7911123456", "hunter2", "tok-123", "abc.def", "/etc/dialer/secret"):
        assert leaked not in out, leaked
    first, second, third = lines(buf)
    assert first["number"] == "+1********67"
    assert first["uri"] == "sip:+1********67@trunk"
    assert first["password"] == first["api_token"] == first["secret_file"] == REDACTED
    assert first["headers"] == {"Authorization": REDACTED, "X-Campaign": "sales"}
    assert second["numbers"] == ["+44********56", "********67"]
    assert "ValueError: cannot parse *********67" in third["exception"]


def test_standard_library_records_are_rendered_and_masked_too() -> None:
    buf = io.StringIO()
    configure_logging("info", json=True, stream=buf)
    logging.getLogger("aiohttp.access").warning("POST /dnc/%s Authorization: Bearer zzz", "+15551234567")
    logging.getLogger("aiohttp.access").debug("below the level")
    [line] = lines(buf)
    assert line["event"] == f"POST /dnc/+1********67 Authorization: Bearer {REDACTED}"
    assert line["logger"] == "aiohttp.access"
    assert line["level"] == "warning"


def test_level_filters_and_reconfiguring_replaces_the_handler() -> None:
    buf = io.StringIO()
    configure_logging("warning", json=True, stream=buf)
    configure_logging("warning", json=True, stream=buf)  # a reload: still one handler, one line each
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    logging.getLogger("x").error("stdlib")
    assert [line["event"] for line in lines(buf)] == ["loud", "stdlib"]


def test_console_renderer_on_a_tty_masks_as_well() -> None:
    buf = TtyBuffer()
    configure_logging("info", stream=buf)  # a TTY: console renderer
    structlog.get_logger().info("call_placed", to="+15551234567", token="t0k")
    out = buf.getvalue()
    assert "call_placed" in out and "+1********67" in out
    assert "5551234567" not in out and "t0k" not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[0])


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud', expected debug, info"):
        configure_logging("loud", stream=io.StringIO())
