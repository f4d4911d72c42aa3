"""The Message resource: create validation (with the test-credential magic numbers), the Message
JSON Twilio answers with, and its later changes (status progress, redaction, cancel).

Pure functions over the form's (key, value) pairs; no I/O.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

from proxy.sandbox.responses import API_VERSION, SandboxError, new_sid, rfc2822

Form = list[tuple[str, str]]

MAX_BODY_CHARS = 1600
_ADDRESS = re.compile(r"^(?:[a-z-]+:)?\+?[0-9]{3,15}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")

# With test credentials these numbers fail synchronously with HTTP 400
# (docs/twilio-facts.md#test-numbers).
MAGIC_FROM_ERRORS: dict[str, tuple[int, str]] = {
    "+15005550001": (
        21212,
        "The 'From' number {from_} is not a valid phone number, shortcode, "
        "or alphanumeric sender ID.",
    ),
    "+15005550007": (
        21606,
        "The 'From' phone number provided ({from_}) is not a valid message-capable "
        "Twilio phone number for this destination.",
    ),
    "+15005550008": (
        21611,
        "This 'From' number has exceeded the maximum number of queued messages.",
    ),
}
MAGIC_TO_ERRORS: dict[str, tuple[int, str]] = {
    "+15005550001": (21211, "The 'To' number {to} is not a valid phone number."),
    "+15005550002": (
        21612,
        "The 'To' phone number: {to}, is not currently reachable using the 'From' "
        "phone number: {from_} via SMS.",
    ),
    "+15005550003": (
        21408,
        "Permission to send an SMS has not been enabled for the region indicated by "
        "the 'To' number: {to}.",
    ),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}

DELIVERY_ERROR_MESSAGES = {
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}

# Statuses only move forward; a final one sticks (a late "sent" never undoes "undelivered").
_STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
    "read": 5,
}
CANCELABLE_STATUSES = frozenset({"accepted", "scheduled", "queued"})

# GSM 03.38: the basic set costs one septet, the extension set two (escape + char).
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENDED = set("^{}\\[~]|€\f")


def first(form: Form, key: str) -> str:
    """The first non-empty value of `key`, or "" (Twilio reads single values this way)."""
    return next((value for name, value in form if name == key and value), "")


def values(form: Form, key: str) -> list[str]:
    return [value for name, value in form if name == key]


def validate_message_create(form: Form) -> None:
    """Raise the SandboxError Twilio would answer synchronously for this create."""
    to, from_, service = first(form, "To"), first(form, "From"), first(form, "MessagingServiceSid")
    body = first(form, "Body")
    if not to:
        raise SandboxError(21604, "A 'To' phone number is required.")
    if not from_ and not service:
        raise SandboxError(21603, "A 'From' phone number or a 'MessagingServiceSid' is required.")
    if not body and not values(form, "MediaUrl") and not first(form, "ContentSid"):
        raise SandboxError(21602, "Message body is required.")
    if len(body) > MAX_BODY_CHARS:
        raise SandboxError(21617, "The concatenated message body exceeds the 1600 character limit.")
    if service and not _SERVICE_SID.match(service):
        raise SandboxError(21701, f"The Messaging Service Sid {service} is invalid.")
    content = first(form, "ContentSid")
    if content and not _CONTENT_SID.match(content):
        raise SandboxError(21655, f"The ContentSid {content} is invalid.")
    _check_magic_numbers(to, from_)
    if not _ADDRESS.match(to):
        raise SandboxError(21211, f"The 'To' number {to} is not a valid phone number.")


def _check_magic_numbers(to: str, from_: str) -> None:
    for table, number in ((MAGIC_FROM_ERRORS, from_), (MAGIC_TO_ERRORS, to)):
        if number in table:
            code, template = table[number]
            raise SandboxError(code, template.format(to=to, from_=from_))


def build_message(account_sid: str, form: Form, now: datetime) -> dict[str, Any]:
    """Message JSON of a fresh create (docs/twilio-facts.md#message-json), every field present."""
    media = values(form, "MediaUrl")
    sid = new_sid("MM" if media else "SM")
    service = first(form, "MessagingServiceSid") or None
    body = first(form, "Body")
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}"
    stamp = rfc2822(now)
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": body,
        "date_created": stamp,
        "date_sent": stamp,
        "date_updated": stamp,
        "direction": "outbound-api",
        "error_code": None,
        "error_message": None,
        "from": first(form, "From") or None,
        "messaging_service_sid": service,
        "num_media": str(len(media)),
        # Through a Messaging Service no sender is chosen yet, so Twilio reports 0 segments.
        "num_segments": "0" if service else str(count_segments(body)),
        "price": None,
        "price_unit": "USD",
        "sid": sid,
        "status": initial_status(form),
        "subresource_uris": {"media": f"{uri}/Media.json"},
        "to": first(form, "To"),
        "uri": f"{uri}.json",
    }


def initial_status(form: Form) -> str:
    if not first(form, "MessagingServiceSid"):
        return "queued"
    return "scheduled" if first(form, "ScheduleType") == "fixed" else "accepted"


def count_segments(body: str) -> int:
    """SMS segments: 160/153 GSM-7 septets, or 70/67 UCS-2 code units when any char is not GSM."""
    if all(char in _GSM_BASIC or char in _GSM_EXTENDED for char in body):
        units = sum(2 if char in _GSM_EXTENDED else 1 for char in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def advance_status(message: dict[str, Any], status: str, now: datetime) -> bool:
    """Move `message` forward to `status`; False (and unchanged) unless that is progress."""
    if _STATUS_RANK.get(status, 0) <= _STATUS_RANK.get(message["status"], 0):
        return False
    message["status"] = status
    message["date_updated"] = rfc2822(now)
    return True


def mark_undelivered(message: dict[str, Any], code: int, now: datetime) -> None:
    advance_status(message, "undelivered", now)
    message["error_code"] = code
    message["error_message"] = DELIVERY_ERROR_MESSAGES.get(code, "Message delivery failed")


def update_message(message: dict[str, Any], form: Form, now: datetime) -> None:
    """POST Messages/{Sid}.json: `Body=""` redacts the body, `Status=canceled` cancels."""
    keys = {name for name, _ in form}
    if "Body" in keys:
        if first(form, "Body"):
            raise SandboxError(20001, "A message body can only be updated to an empty string.")
        message["body"] = ""
    if "Status" in keys:
        if first(form, "Status") != "canceled":
            raise SandboxError(20001, "Status can only be updated to 'canceled'.")
        if message["status"] not in CANCELABLE_STATUSES:
            raise SandboxError(
                20001, f"A message with status '{message['status']}' cannot be canceled."
            )
        message["status"] = "canceled"
    message["date_updated"] = rfc2822(now)
