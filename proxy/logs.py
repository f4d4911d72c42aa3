"""Logging: structlog configured once; field names and redaction helpers in one place.

Nothing that identifies a person or grants access reaches a log line: no auth header, token,
message body or full phone number. Phone numbers appear masked (`+1555*****21`) and, for
correlation across lines, as a keyed hash that is stable within one process.

Every line goes through one pipeline, `configure_logging()`: sendguard's own structlog events
and the records of every stdlib logger (aiohttp.server, aiohttp.web, aiohttp.client, asyncio,
redis, py.warnings…), rendered by the same processors into the same JSON. The last processor
before rendering, `redact`, scrubs every string value: credentials after `Basic`/`Bearer` or an
`Authorization` header name, and phone numbers in any spelling (`+15550100000`,
`+1 (555) 010-0000`, `%2B1%20%28555%29…`), in field values and free text alike (a kill-switch
reason, an error message). A stdlib record's exception is reduced to its type, a cleaned first
line and where it was raised, never a traceback: aiohttp's parser errors quote the offending
request line or header, which may be the Authorization header itself. Those parser errors (a
client's malformed request, answered 400) become `client_request_malformed` at info level.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import traceback
from collections.abc import MutableMapping
from types import TracebackType
from typing import Any

import orjson
import structlog
from structlog.stdlib import ProcessorFormatter

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


# A phone number in free text: 7+ digits, optionally after `+` (or `%2B`), with the separators
# people and URL encoders put between them (space, `-`, `.`, parentheses, `%20`, `%28`, `%29`,
# `+` for a form-encoded space), at most 3 in a row. Standalone only: digits inside a SID
# (AC0123456789abcdef...) or a hex id are not a number.
_SEPARATOR = r"(?:[ \-.()\u00a0]|%20|%28|%29|%2[dD]|\+)"
# A timestamp (`2026-12-01T10:38:25.423+00:00`) is matched first and kept as it is: its digits
# with `.`, `+` and `-` between them would otherwise read as a number.
_ISO_DATETIME = (
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?(?!\d)"
)
PHONE_IN_TEXT_RE = re.compile(
    rf"(?P<iso>{_ISO_DATETIME})"
    rf"|(?<![A-Za-z0-9])(?:\+|%2[bB])?\(?\d(?:{_SEPARATOR}{{0,3}}\d){{6,}}(?![A-Za-z0-9])"
)
# Digit runs of that shape that are not phone numbers, left alone.
_NOT_A_PHONE = re.compile(
    r"\d{1,3}(?:\.\d{1,3}){3}"  # an IPv4 address
    r"|\d{4}-\d{2}-\d{2}"  # a date
    r"|\d+\.\d+"  # a decimal number
)
_DIGIT = re.compile(r"\d")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _mask_match(match: re.Match[str]) -> str:
    text = match.group()
    if match.group("iso") or _NOT_A_PHONE.fullmatch(text):
        return text
    digits = "".join(_DIGIT.findall(_PERCENT_ESCAPE.sub("", text)))
    plus = "+" if text.startswith(("+", "%2B", "%2b")) else ""
    return mask_phone(plus + digits)


def mask_phones_in(text: str) -> str:
    """Every phone-number-like run in free text (paths, reasons, error messages) masked, in
    any of its spellings (`+15550100000`, `+1 (555) 010-0000`, URL-encoded)."""
    return PHONE_IN_TEXT_RE.sub(_mask_match, text)


# A credential after its scheme, and the value after an auth header's name and colon (aiohttp
# quotes a malformed header line whole).
_CREDENTIAL_RE = re.compile(r"\b(Basic|Bearer)(\s+)[A-Za-z0-9+/=._~\-]{8,}", re.I)
_AUTH_HEADER_RE = re.compile(
    r"\b(authorization|proxy-authorization|x-twilio-signature|cookie|set-cookie)\s*[:=][^\r\n'\"]*",
    re.I,
)
# Field names whose value is a secret whatever it looks like.
_SECRET_FIELDS = frozenset(
    {"authorization", "auth", "password", "token", "auth_token", "admin_token", "secret",
     "callback_secret", "cookie", "credentials", "signature"}
)  # fmt: skip


_CREDENTIAL_HINTS = ("authorization", "bearer", "basic", "cookie", "signature")
# Fields whose values sendguard makes itself or has validated (ids, hashes, SIDs, enums): not
# scanned, which keeps the one line per request cheap.
_TRUSTED_FIELDS = frozenset(
    {"request_id", "to_ref", "message_sid", "level", "method", "route", "decision", "dedup_by",
     "logger", "timestamp"}
)  # fmt: skip


# Most scanned values repeat from line to line (the event name, a path, a reason, a masked
# recipient): a short one is scrubbed once and remembered, which took the scan from about two
# thirds of a request line's cost to a dictionary lookup. Bounded in count and length, so a
# client inventing values only evicts entries: at most 4,096 strings of 256 characters.
_CACHED_TEXT_MAX = 256


def redact_text(text: str) -> str:
    """Credentials and phone numbers scrubbed out of one string."""
    if len(text) < 7:
        return text
    if len(text) <= _CACHED_TEXT_MAX:
        return _redact_remembered(text)
    return _redact_scan(text)


@functools.lru_cache(maxsize=4096)
def _redact_remembered(text: str) -> str:
    return _redact_scan(text)


def _redact_scan(text: str) -> str:
    lowered = text.lower()
    if any(hint in lowered for hint in _CREDENTIAL_HINTS):
        text = _AUTH_HEADER_RE.sub(lambda m: m.group(1) + ": ***", text)
        text = _CREDENTIAL_RE.sub(lambda m: m.group(1) + m.group(2) + "***", text)
    return PHONE_IN_TEXT_RE.sub(_mask_match, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            key: "***"
            if str(key).lower() in _SECRET_FIELDS and item is not None
            else _redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


_PLAIN_TYPES = frozenset({int, float, bool, type(None)})  # nothing in them to scrub


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: every value of every line scrubbed (see the module docstring)."""
    for key, value in event_dict.items():
        if key in _TRUSTED_FIELDS:
            continue
        if key in _SECRET_FIELDS:
            if value is not None:
                event_dict[key] = "***"
        elif type(value) in _PLAIN_TYPES:
            continue
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
        elif isinstance(value, dict | list | tuple):
            event_dict[key] = _redact_value(value)
    return event_dict


def correlation_hash(value: str) -> str:
    return hmac.new(_CORRELATION_KEY, value.encode(), hashlib.sha256).hexdigest()[:12]


def _json_line(event: Any, **options: Any) -> str:
    """One log line's JSON, by orjson (C): at the default `info` level every request writes
    one, and the stdlib encoder was the larger part of its cost. Values it cannot encode
    become their str(), as with JSONRenderer's default."""
    return orjson.dumps(event, default=options.get("default", str)).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """One pipeline for every line of the process: sendguard's structlog events and every
    stdlib logger's records (aiohttp's included), on stderr."""
    threshold = logging.getLevelNamesMapping()[level.upper()]
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            redact,
            timestamper,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ForeignRecords(threshold))
    handler.setFormatter(
        ProcessorFormatter(
            foreign_pre_chain=[_foreign_fields],
            processors=[
                ProcessorFormatter.remove_processors_meta,
                redact,
                timestamper,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(threshold)
    # `request_finished` is the one line per request; aiohttp's access log would repeat it
    # with the raw request line (query strings, phone numbers).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


class _ForeignRecords(logging.Filter):
    """Reclassifies what a client can trigger at will: aiohttp's "Error handling request" for
    a request its parser refused (answered 400) is the client's fault, not sendguard's: an
    info line, not an error with a traceback."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("aiohttp.") and _is_client_parse_error(exc):
            record.msg, record.args = "client_request_malformed", ()
            record.levelno, record.levelname = logging.INFO, "INFO"
        return record.levelno >= self.threshold


def _is_client_parse_error(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    from aiohttp.http_exceptions import HttpProcessingError

    return isinstance(exc, HttpProcessingError)


def _foreign_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A stdlib record as a sendguard line: level, logger, and its exception summarised."""
    record: logging.LogRecord = event_dict["_record"]
    event_dict["level"] = record.levelname.lower()
    event_dict["logger"] = record.name
    exc_info = event_dict.pop("exc_info", None)
    event_dict.pop("stack_info", None)
    if isinstance(exc_info, tuple) and exc_info[1] is not None:
        event_dict.update(_exception_summary(exc_info[1], exc_info[2]))
    return event_dict


def _exception_summary(exc: BaseException, tb: TracebackType | None) -> dict[str, Any]:
    """Type, first line and raising place of an exception: never the traceback, never the
    quoted request bytes aiohttp's parser errors carry."""
    text = str(getattr(exc, "message", "") or exc)
    kept = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("b'", 'b"')) or not stripped.strip("^~ "):
            continue  # the quoted request bytes and the caret under them
        kept.append(stripped)
    summary: dict[str, Any] = {
        "error": type(exc).__name__,
        "error_message": " ".join(kept).rstrip(":")[:200],
    }
    status = getattr(exc, "code", None)
    if isinstance(status, int):
        summary["status"] = status
    frames = traceback.extract_tb(tb) if tb is not None else []
    if frames:
        summary["error_at"] = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
    return summary


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    structlog.get_logger("sendguard").critical("uncaught_exception", exc_info=(kind, exc, tb))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
