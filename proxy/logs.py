"""Logging: structlog configured once; field names and redaction helpers in one place.

Nothing that identifies a person or grants access reaches a log line: no auth header, token,
message body or full phone number. Phone numbers appear masked (`+1555*****21`) and, for
correlation across lines, as a keyed hash that is stable within one process.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys
from typing import Any

import structlog

# Canonical event names (STYLE: one line per request, other events only for state changes).
REQUEST_FINISHED = "request_finished"
RECORD_MARKED_UNKNOWN = "record_marked_unknown"
CLAIM_LOST = "claim_lost"
STORE_ERROR = "store_error"
WOULD_BLOCK = "would_block"  # a guard in report mode let through what it would have blocked

_CORRELATION_KEY = secrets.token_bytes(16)


def mask_phone(value: str) -> str:
    """Keep the channel, country-ish prefix and last two digits: enough to eyeball, not to dial."""
    if not value:
        return ""
    channel, sep, address = value.rpartition(":")
    if len(address) <= 6:
        masked = "*" * len(address)
    else:
        masked = address[:4] + "*" * (len(address) - 6) + address[-2:]
    return f"{channel}{sep}{masked}"


# Standalone digit runs only: digits inside a SID (AC0123456789abcdef...) are not a number.
PHONE_IN_TEXT_RE = re.compile(r"(?<![A-Za-z0-9])(?:\+|%2[bB])?\d{7,}(?![A-Za-z0-9])")


def mask_phones_in(text: str) -> str:
    """Every phone-number-like digit run in free text (paths, error messages) masked."""
    return PHONE_IN_TEXT_RE.sub(lambda m: mask_phone(m.group()), text)


def correlation_hash(value: str) -> str:
    return hmac.new(_CORRELATION_KEY, value.encode(), hashlib.sha256).hexdigest()[:12]


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
