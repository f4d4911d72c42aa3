"""A status callback as Twilio sent it, read and judged without I/O.

The pure half of the tee (handler.py does the I/O): where the token sits in the URL Twilio
called, what the body says (form or JSON), whether it is the bound account's and signed with
one of that account's auth tokens, what delivery status it reports and whether it may teach the
guard. A refusal is a `SendguardError` whose `reason` is one of the constants below; the
server's middleware renders it and records the decision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from aiohttp import hdrs

from proxy.errors import CallbackForbidden, CallbackMethodNotAllowed, InvalidRequest
from proxy.guard.facts import normalise_recipient, recipient_tag
from proxy.tee.signing import BODY_HASH_PARAM, matching_token, query_value
from proxy.tee.urls import (
    CALLBACK_PATH_PREFIX,
    CallbackBinding,
    CallbackUrlCodec,
    OutdatedCallbackToken,
    UnwrappedCallback,
)

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"

ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}", re.ASCII)
_MAX_FORM_FIELDS = 1000
_MAX_IDEMPOTENCY_TOKEN_CHARS = 256

# Why a callback was refused (the `reason` of the error raised) or not learned from.
SIGNATURE_INVALID = "callback-signature-invalid"
ACCOUNT_UNKNOWN = "callback-account-unknown"
ACCOUNT_MISMATCH = "callback-account-mismatch"
CALLBACK_URL_INVALID = "callback-token-invalid"
CALLBACK_URL_OUTDATED = "callback-token-outdated"
BODY_INVALID = "callback-body-invalid"
METHOD_NOT_ALLOWED = "callback-method-not-allowed"
RECIPIENT_MISMATCH = "recipient-mismatch"  # not refused: forwarded, not learned from


class DeliveryStatus(NamedTuple):
    account_sid: str
    message_sid: str
    status: str
    error_code: int | None
    to: str
    sender: str  # MessagingServiceSid, else From: as a send's facts name the sender


@dataclass(frozen=True)
class InboundCallback:
    """What Twilio sent, verified or not yet."""

    account_sid: str  # the bound account (the body's AccountSid is checked against it)
    claimed_account: str  # the body's AccountSid; "" unless well-formed
    binding: CallbackBinding  # the send the callback URL was made for
    original_url: str
    signed_url: str  # the URL Twilio called, as it signed it
    body: bytes
    content_type: str
    params: tuple[tuple[str, str], ...]  # the signed form params; () for a JSON body
    fields: Mapping[str, str]  # first value of each field, form or top-level JSON
    body_hash: str | None  # bodySHA256 of a JSON callback

    def field(self, name: str) -> str:
        """A Twilio field by its form name; JSON bodies may spell it camelCase."""
        return self.fields.get(name) or self.fields.get(name[:1].lower() + name[1:]) or ""


# -- reading ---------------------------------------------------------------------------------


def check_method(method: str) -> None:
    if method != hdrs.METH_POST:
        raise CallbackMethodNotAllowed(reason=METHOD_NOT_ALLOWED)


def locate_token(public_url: str, raw_path: str) -> tuple[str, str]:
    """(the URL Twilio called and signed, the callback token in it). The signed URL is rebuilt
    from the configured public URL and the raw path and query, never from the Host header
    (behind a load balancer that is an internal name)."""
    start = raw_path.find(CALLBACK_PATH_PREFIX)
    if start < 0:
        raise InvalidRequest("not a callback URL", reason=CALLBACK_URL_INVALID)
    # Whatever sits in front of the prefix (a path the load balancer strips) is the public
    # URL's own path, already part of `public_url`.
    signed_url = public_url + raw_path[start:]
    token = urlsplit(raw_path[start + len(CALLBACK_PATH_PREFIX) :]).path
    return signed_url, token


def unwrap_token(codec: CallbackUrlCodec, token: str) -> UnwrappedCallback:
    """The app's URL and the send the token is bound to; InvalidRequest for a tampered,
    garbage or old unbound token."""
    try:
        return codec.unwrap(token)
    except OutdatedCallbackToken:
        raise InvalidRequest(
            "callback URL made by an older sendguard, not bound to an account: no longer accepted",
            reason=CALLBACK_URL_OUTDATED,
        ) from None
    except ValueError:
        raise InvalidRequest("invalid callback URL token", reason=CALLBACK_URL_INVALID) from None


def parse_callback(
    unwrapped: UnwrappedCallback, signed_url: str, body: bytes, content_type: str
) -> InboundCallback:
    """The callback's fields: a JSON body when the signed URL carries bodySHA256, else form
    data (InvalidRequest if it is not). Nothing is verified yet."""
    body_hash = query_value(signed_url, BODY_HASH_PARAM)
    if body_hash is not None:
        params: tuple[tuple[str, str], ...] = ()
        fields = _json_fields(body)
    else:
        params = _parse_form(body)
        fields = dict(reversed(params))  # first value wins, as Twilio reads a field
    claimed = fields.get("AccountSid") or fields.get("accountSid") or ""
    binding = unwrapped.binding
    return InboundCallback(
        account_sid=binding.account_sid,
        claimed_account=claimed if ACCOUNT_SID.fullmatch(claimed) else "",
        binding=binding,
        original_url=unwrapped.original_url,
        signed_url=signed_url,
        body=body,
        content_type=content_type or (JSON_CONTENT_TYPE if body_hash else FORM_CONTENT_TYPE),
        params=params,
        fields=fields,
        body_hash=body_hash,
    )


def _parse_form(body: bytes) -> tuple[tuple[str, str], ...]:
    try:
        text = body.decode("utf-8")
        return tuple(parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS))
    except ValueError:  # UnicodeDecodeError included
        raise InvalidRequest("the callback body is not form data", reason=BODY_INVALID) from None


def _json_fields(body: bytes) -> dict[str, str]:
    try:
        document: Any = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        str(key): str(value)
        for key, value in document.items()
        if isinstance(value, str | int) and not isinstance(value, bool)
    }


# -- verifying -------------------------------------------------------------------------------


def check_account(callback: InboundCallback) -> None:
    """CallbackForbidden unless the body's AccountSid is the account the URL is bound to."""
    if callback.claimed_account != callback.binding.account_sid:
        raise CallbackForbidden(
            "the callback's AccountSid is not the account its callback URL was made for",
            reason=ACCOUNT_MISMATCH,
        )


def verified_auth_token(tokens: Sequence[str], callback: InboundCallback, signature: str) -> str:
    """The auth token, of `tokens` (the BOUND account's), the callback is signed with;
    CallbackForbidden when there is none. Never the tokens of the account the body claims: that
    one is checked to be the bound one first, and a forger may hold a valid token of their own."""
    if not tokens:
        raise CallbackForbidden(
            "no auth token is known for the callback's account", reason=ACCOUNT_UNKNOWN
        )
    raw_body = callback.body if callback.body_hash is not None else None
    fragment = urlsplit(callback.original_url).fragment
    # A fragment on the wrapped URL is not sent to us; Twilio is taken to sign without it,
    # but a signature with it is accepted too.
    candidates = [callback.signed_url]
    if fragment:
        candidates.append(f"{callback.signed_url}#{fragment}")
    for url in candidates:
        token = matching_token(tokens, url, callback.params, signature, raw_body)
        if token is not None:
            return token
    raise CallbackForbidden(reason=SIGNATURE_INVALID)


# -- what it teaches -------------------------------------------------------------------------


def delivery_status(callback: InboundCallback) -> DeliveryStatus | None:
    """What a message status callback reports; None when it is not one (no SID or status)."""
    message_sid = callback.field("MessageSid") or callback.field("SmsSid")
    status = callback.field("MessageStatus") or callback.field("SmsStatus")
    if not message_sid or not status:
        return None
    code = callback.field("ErrorCode").strip()
    error_code = int(code) if code.isascii() and code.isdigit() and int(code) > 0 else None
    return DeliveryStatus(
        account_sid=callback.account_sid,
        message_sid=message_sid,
        status=status,
        error_code=error_code,
        to=callback.field("To"),
        sender=callback.field("MessagingServiceSid") or callback.field("From"),
    )


def is_bound_recipient(binding: CallbackBinding, to: str) -> bool:
    """A callback teaches only about its own message: the recipient its URL was made for."""
    return recipient_tag(binding.account_sid, normalise_recipient(to)) == binding.recipient_tag


def idempotency_token(header_value: str) -> str | None:
    """Twilio's I-Twilio-Idempotency-Token as a dedup key; None when absent or unusable as one
    (the callback is then forwarded without dedup)."""
    value = header_value.strip()
    if not value or len(value) > _MAX_IDEMPOTENCY_TOKEN_CHARS or not value.isascii():
        return None
    return value


def loggable_url(url: str) -> str:
    """scheme://host[:port]/path: no userinfo, query or fragment, which may carry secrets."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
