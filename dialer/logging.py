"""Structured logging: structlog configured once, JSON in production, readable on a terminal.

`configure_logging` wires structlog and the standard library's `logging` (aiohttp, asyncio, redis
log through it) to the same processors, so every line, ours or a library's:

- carries the context bound with `structlog.contextvars.bind_contextvars` (campaign, call_id, agent);
- has an ISO-8601 UTC timestamp and a level;
- never shows a full phone number: E.164 numbers and runs of 10 or more digits in any value are
  masked to country code and last two digits (`mask_number`);
- never shows a credential: values under keys that look like one (password, secret, token,
  authorization, ...) are replaced, and ``Bearer <token>`` inside text is cut.

Masking applies at every level, not only at info and above: debug logs get shipped too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import phonenumbers
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "REDACTED",
    "configure_logging",
    "mask_credentials",
    "mask_number",
    "mask_text",
    "mask_value",
]

REDACTED = "[redacted]"

_CREDENTIAL_KEY = re.compile(
    r"pass(word|wd|phrase)?|secret|token|authori[sz]ation|api[_-]?key|credential|cookie|private[_-]?key",
    re.IGNORECASE,
)
"""Key names whose values are never logged. Deliberately broad: a false positive costs little."""

_BEARER = re.compile(r"\b(Bearer|Basic|Digest)\s+[^\s,;\"']+", re.IGNORECASE)

_E164 = re.compile(r"(?<![\w+])\+\d(?:[ \-.()]{0,2}\d){6,14}(?!\d)")
"""'+' then 7-15 digits, allowing the usual separators: "+15551234567", "+44 20 7946 0958"."""

_DIGIT_RUN = re.compile(r"(?<!\d)\d{10,}(?!\d)")
"""Ten or more digits in a row: a national number, or E.164 without its '+'."""

_MIN_BARE_DIGITS = 10
_MAX_E164_DIGITS = 15
_KEEP_LAST = 2


def _country_code(digits: str) -> str:
    """The ITU country code at the start of an E.164 number's digits ('' when none is assigned).

    Country codes form a prefix code, so the first 1-3 digit prefix that is a known code is the one.
    """
    for length in (1, 2, 3):
        prefix = digits[:length]
        if int(prefix) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return prefix
    return ""


def mask_number(number: str) -> str:
    """Mask a phone number for logs: keep '+', the country code and the last two digits.

    ``mask_number("+15551234567") == "+1********67"``; a number without '+' keeps only its last two
    digits (``"5551234567"`` -> ``"********67"``). Non-digit characters other than a leading '+' are
    dropped. Short inputs (2 digits or fewer) are masked entirely.
    """
    plus = number.strip().startswith("+")
    digits = "".join(ch for ch in number if ch.isdigit())
    if len(digits) <= _KEEP_LAST:
        return ("+" if plus else "") + "*" * len(digits)
    head = _country_code(digits) if plus else ""
    if len(head) + _KEEP_LAST >= len(digits):
        head = ""
    hidden = len(digits) - len(head) - _KEEP_LAST
    return ("+" if plus else "") + head + "*" * hidden + digits[-_KEEP_LAST:]


def mask_text(text: str) -> str:
    """Mask every phone number and every ``Bearer``/``Basic`` credential inside `text`."""
    text = _E164.sub(lambda m: mask_number(m.group(0)), text)
    text = _DIGIT_RUN.sub(lambda m: mask_number(m.group(0)), text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def mask_value(value: Any) -> Any:
    """Mask numbers and credentials anywhere inside a log value (strings, containers, integers)."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        # A number stored as an integer is still a number; ten digits also covers epoch seconds, which
        # is why timestamps are logged as ISO strings or floats.
        return mask_number(str(value)) if abs(value) >= 10**(_MIN_BARE_DIGITS - 1) else value
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_credential_key(k) else mask_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(v) for v in value]
    if isinstance(value, tuple | set | frozenset):
        return tuple(mask_value(v) for v in value)
    return value


def _is_credential_key(key: object) -> bool:
    return isinstance(key, str) and _CREDENTIAL_KEY.search(key) is not None


_UNMASKED_KEYS = frozenset({"timestamp", "level", "logger"})


def mask_credentials(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact credential-looking keys, mask phone numbers in every value."""
    for key, val in list(event_dict.items()):
        if key in _UNMASKED_KEYS:
            continue
        event_dict[key] = REDACTED if _is_credential_key(key) else mask_value(val)
    return event_dict


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}, expected debug, info, warning, error or critical")
    return number


class _CurrentStream:
    """Writes to whatever `sys.stdout` (or `sys.stderr`) is at the time of each write.

    Binding the stream object at configuration time breaks when it is replaced later (test runners
    capturing output, a command run in-process): the old object may be closed by then.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def _stream(self) -> TextIO:
        stream: TextIO = getattr(sys, self.name)
        return stream

    def write(self, text: str) -> int:
        return self._stream().write(text)

    def flush(self) -> None:
        self._stream().flush()

    def isatty(self) -> bool:
        return self._stream().isatty()


def configure_logging(
    level: str | int = "info", json: bool | None = None, *, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard library's logging to write to `stream` (stdout).

    `json` None picks by the stream: a console renderer on a TTY, JSON lines otherwise (journald,
    containers, files). May be called again (on reload or in tests) to change level or format.
    """
    out: Any
    if stream is None or stream is sys.stdout:
        out = _CurrentStream("stdout")
    elif stream is sys.stderr:
        out = _CurrentStream("stderr")
    else:
        out = stream
    as_json = not out.isatty() if json is None else json
    threshold = _level_number(level)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,  # first, so bound context is masked like the rest
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    # Tracebacks become text before masking, so numbers inside exception messages are masked too;
    # plain text also keeps local variables (which may hold secrets) out of the log.
    tail: list[Processor] = [structlog.processors.format_exc_info, mask_credentials]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        # plain_traceback: the exception is already masked text; a pretty one would bypass masking.
        else structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )

    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: module-level loggers created before configuration (imports) must pick up the
        # configuration made later at start-up, and a reload may change the level.
        cache_logger_on_first_use=False,
    )

    # Route the standard library's records (aiohttp, asyncio, redis) through the same processors.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, *tail],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("dialer")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "dialer"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)

