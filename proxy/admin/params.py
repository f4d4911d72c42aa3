"""Admin API input: query string and JSON body merged, every value checked, errors that say
what to send instead (never echoing a phone number back)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from aiohttp import web

from proxy.durations import parse_duration
from proxy.store.send_store import SendRef

_ACCOUNT_RE = re.compile(r"AC[0-9a-fA-F]{32}", re.ASCII)
# A record id, `<recipient tag>.<dedup id>` (proxy/guard/facts.py: `recipient_tag`, and "k"
# (by key) or "f" (by fingerprint) + 40 hex digits): nothing else reaches a store key.
_RECORD_ID_RE = re.compile(r"(r[0-9a-f]{24})\.([kf][0-9a-f]{40})", re.ASCII)
_MESSAGE_SID_RE = re.compile(r"(?:SM|MM)[0-9a-f]{32}", re.ASCII)
_MAX_TEXT = 500


class AdminInputError(ValueError):
    """Bad admin input: answered 400 with this message."""


@dataclass(frozen=True)
class Params:
    values: dict[str, str]

    @classmethod
    async def of(cls, request: web.Request) -> Params:
        values = {key: value for key, value in request.query.items()}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                try:
                    body = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    raise AdminInputError("the body must be a JSON object") from None
                if not isinstance(body, dict):
                    raise AdminInputError("the body must be a JSON object")
                for key, value in body.items():
                    if value is None:
                        continue
                    if not isinstance(value, str | int | float) or isinstance(value, bool):
                        raise AdminInputError(f"{key!r} must be a string or a number")
                    values[str(key)] = str(value)
        return cls(values)

    def text(self, name: str) -> str | None:
        value = self.values.get(name, "").strip()
        if len(value) > _MAX_TEXT:
            raise AdminInputError(f"{name!r} is longer than {_MAX_TEXT} characters")
        return value or None

    def required(self, name: str, hint: str = "") -> str:
        value = self.text(name)
        if value is None:
            raise AdminInputError(f"{name!r} is required" + (f" ({hint})" if hint else ""))
        return value

    def account(self) -> str:
        value = self.required("account")
        if not _ACCOUNT_RE.fullmatch(value):
            raise AdminInputError("'account' must be an account SID: AC + 32 hex digits")
        return value

    def duration(self, name: str) -> float | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise AdminInputError(f"{name!r} must be a duration like 30m, 2h or 600") from None
        if seconds <= 0:
            raise AdminInputError(f"{name!r} must be positive")
        return seconds


def record_ref(raw: str) -> SendRef:
    """A record id from the ledger or a record lookup, checked before it names a store key."""
    found = _RECORD_ID_RE.fullmatch(raw.strip())
    if found is None:
        raise AdminInputError(
            "not a record id: use an `id` from `GET /v1/records?state=unknown` or a record lookup"
        )
    return SendRef(found.group(1), found.group(2))


def message_sid(raw: str) -> str:
    """A Message SID as Twilio writes them: SM (or MM) and 32 lowercase hex digits."""
    value = raw.strip()
    if not _MESSAGE_SID_RE.fullmatch(value):
        raise AdminInputError("'message_sid' must be a Message SID: SM + 32 hex digits")
    return value
