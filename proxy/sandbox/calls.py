"""The Call resource, minimal but realistic: POST Calls.json creates a queued outbound call."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from proxy.sandbox.messages import Form, first
from proxy.sandbox.responses import API_VERSION, SandboxError, new_sid, rfc2822

_NANP = re.compile(r"^\+1(\d{3})(\d{3})(\d{4})$")
_CALL_SUBRESOURCES = (
    "notifications",
    "recordings",
    "payments",
    "events",
    "siprec",
    "streams",
    "transcriptions",
    "user_defined_message_subscriptions",
    "user_defined_messages",
)


def validate_call_create(form: Form) -> None:
    if not first(form, "To"):
        raise SandboxError(21201, "No 'To' number is specified")
    if not first(form, "From"):
        raise SandboxError(21213, "No 'From' number is specified")
    if not (first(form, "Url") or first(form, "Twiml") or first(form, "ApplicationSid")):
        raise SandboxError(21205, "Url parameter is required.")


def build_call(account_sid: str, form: Form, now: datetime) -> dict[str, Any]:
    sid = new_sid("CA")
    to, from_ = first(form, "To"), first(form, "From")
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Calls/{sid}"
    stamp = rfc2822(now)
    return {
        "account_sid": account_sid,
        "answered_by": None,
        "api_version": API_VERSION,
        "caller_name": None,
        "date_created": stamp,
        "date_updated": stamp,
        "direction": "outbound-api",
        "duration": None,
        "end_time": None,
        "forwarded_from": None,
        "from": from_,
        "from_formatted": format_number(from_),
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": None,
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": sid,
        "start_time": None,
        "status": "queued",
        "subresource_uris": {name: f"{uri}/{_camel(name)}.json" for name in _CALL_SUBRESOURCES},
        "to": to,
        "to_formatted": format_number(to),
        "trunk_sid": None,
        "uri": f"{uri}.json",
    }


def format_number(number: str) -> str:
    """`+14158675309` → `(415) 867-5309`, as Twilio formats North American numbers."""
    match = _NANP.match(number)
    return f"({match[1]}) {match[2]}-{match[3]}" if match else number


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))
