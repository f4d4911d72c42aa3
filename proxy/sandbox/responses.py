"""Twilio-shaped JSON answers, errors, SIDs and timestamps."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

API_VERSION = "2010-04-01"
ERRORS_URL = "https://www.twilio.com/docs/errors/"
JSON_CONTENT_TYPE = "application/json"


class SandboxError(Exception):
    """A Twilio API error answered with `{code, message, more_info, status}`."""

    def __init__(
        self, code: int, message: str, status: int = 400, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"{ERRORS_URL}{self.code}",
            "status": self.status,
        }

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


def not_found(path: str) -> SandboxError:
    return SandboxError(20404, f"The requested resource {path} was not found", status=404)


def json_response(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(payload).encode(),
        status=status,
        headers=headers,
        content_type=JSON_CONTENT_TYPE,
        charset="utf-8",
    )


def new_sid(prefix: str) -> str:
    """Twilio SIDs: a two-letter type prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def utc_now() -> datetime:
    # Twilio timestamps have whole-second precision.
    return datetime.now(UTC).replace(microsecond=0)


def rfc2822(moment: datetime) -> str:
    """`Thu, 24 Aug 2023 05:01:45 +0000`, the format of every API 2010 date."""
    return format_datetime(moment.astimezone(UTC))
