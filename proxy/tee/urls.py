"""Callback URLs that carry the app's own URL: `{public_url}/_sendguard/callbacks/v1/{token}`.

A token stands for one send's callbacks. It is `base64url(payload) + "." + base64url(mac)`,
unpadded, with

    payload = "2\\n" account_sid "\\n" recipient_tag "\\n" dedup_id "\\n" original_url
    mac     = HMAC-SHA256(secret, "sendguard-callback-url-v2\\0" + payload)[:16]

so it is path-safe and any instance holding the secret recovers the original URL and the send it
was made for without a store lookup (Twilio may deliver a callback to another instance, days
later). The binding (account, recipient tag, dedup id) is what makes a captured callback URL
useless to anyone but that account: the tee verifies the callback with the bound account's auth
token, refuses one claiming another account, and learns only about the bound recipient
(handler.py). The recipient tag is the opaque hash sendguard's keys use, so no phone number is
spelled out in the URL. The secret must be the same on every instance and survive restarts, or
in-flight callbacks are refused.

Tokens of the first format (`base64url(url) "." mac` under the `-v1` label, bound to nothing)
are recognised and refused with `OutdatedCallbackToken`: accepting them would keep the unbound
path open. A send made before the upgrade therefore loses its tee'd callbacks (400).

Only http(s) URLs with a host are wrapped, and `unwrap` re-checks that after the MAC, so a token
never yields anything but a URL sendguard itself wrapped (the tee's SSRF guard, see handler.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

CALLBACK_PATH_PREFIX = "/_sendguard/callbacks/v1/"
MAX_ORIGINAL_URL_CHARS = 4096

_MAC_BYTES = 16
_MAC_LABEL = b"sendguard-callback-url-v2\x00"  # domain separation from other uses of the secret
_V1_MAC_LABEL = b"sendguard-callback-url-v1\x00"  # the unbound first format: recognised, refused
_VERSION = b"2"
_SEPARATOR = b"\n"  # never in a URL (control characters are refused) nor in a binding field
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}", re.ASCII)
_OPAQUE_ID = re.compile(r"[A-Za-z0-9]{1,64}", re.ASCII)  # recipient tags and dedup ids
_B64URL = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
# The longest token a MAX_ORIGINAL_URL_CHARS URL (4 UTF-8 bytes per char at worst) can make.
_MAX_PAYLOAD_BYTES = MAX_ORIGINAL_URL_CHARS * 4 + 34 + 64 + 64 + 6
_MAX_TOKEN_CHARS = (_MAX_PAYLOAD_BYTES * 4) // 3 + 64
_MIN_SECRET_BYTES = 16


class OutdatedCallbackToken(ValueError):
    """A genuine token of the first, unbound format: no longer accepted."""


class BoundSend(Protocol):
    """What a callback URL is bound to; a send's `SendFacts` is one."""

    @property
    def account_sid(self) -> str: ...

    @property
    def recipient_tag(self) -> str: ...

    @property
    def dedup_id(self) -> str: ...


@dataclass(frozen=True)
class CallbackBinding:
    """The send a callback URL was made for: its account, recipient tag and dedup id."""

    account_sid: str
    recipient_tag: str
    dedup_id: str

    @classmethod
    def of(cls, send: BoundSend) -> CallbackBinding:
        return cls(send.account_sid, send.recipient_tag, send.dedup_id)

    def check(self) -> None:
        """ValueError unless every field is one sendguard makes (and the payload can split)."""
        if not _ACCOUNT_SID.fullmatch(self.account_sid):
            raise ValueError("a callback URL is bound to an account SID (AC…)")
        if not _OPAQUE_ID.fullmatch(self.recipient_tag) or not _OPAQUE_ID.fullmatch(self.dedup_id):
            raise ValueError("malformed recipient tag or dedup id")


@dataclass(frozen=True)
class UnwrappedCallback:
    original_url: str
    binding: CallbackBinding


class CallbackUrlCodec:
    def __init__(self, public_url: str, secret: bytes) -> None:
        parts = _checked_http_url(public_url.strip())
        if parts.query or parts.fragment:
            raise ValueError("public URL must not have a query or fragment")
        if len(secret) < _MIN_SECRET_BYTES:
            raise ValueError(f"callback URL secret must be at least {_MIN_SECRET_BYTES} bytes")
        self.public_url = public_url.strip().rstrip("/")
        self._secret = secret

    @property
    def callback_prefix(self) -> str:
        """Every wrapped URL starts with this."""
        return self.public_url + CALLBACK_PATH_PREFIX

    def wrap(self, original_url: str, send: BoundSend) -> str:
        """The sendguard URL standing for `original_url`, bound to `send`; ValueError unless the
        URL is http(s) and the send's account, recipient tag and dedup id are well-formed.

        A fragment (Twilio's connection overrides, `#rc=3&rp=all`) is kept in the token and also
        copied onto the wrapped URL, so Twilio keeps applying it on its hop to sendguard.
        """
        if len(original_url) > MAX_ORIGINAL_URL_CHARS:
            raise ValueError("callback URL too long")
        parts = _checked_http_url(original_url)
        binding = CallbackBinding.of(send)
        binding.check()
        payload = _SEPARATOR.join(
            (
                _VERSION,
                binding.account_sid.encode(),
                binding.recipient_tag.encode(),
                binding.dedup_id.encode(),
                original_url.encode(),
            )
        )
        token = f"{_b64encode(payload)}.{_b64encode(self._mac(_MAC_LABEL, payload))}"
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        return f"{self.callback_prefix}{token}{fragment}"

    def unwrap(self, token: str) -> UnwrappedCallback:
        """The original URL and binding a token stands for; ValueError for anything sendguard
        did not make, OutdatedCallbackToken (a ValueError) for a genuine unbound old token."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise ValueError("callback token too long")
        encoded_payload, dot, encoded_mac = token.partition(".")
        if not dot:
            raise ValueError("malformed callback token")
        payload = _b64decode(encoded_payload)
        mac = _b64decode(encoded_mac)
        if not hmac.compare_digest(mac, self._mac(_MAC_LABEL, payload)):
            if hmac.compare_digest(mac, self._mac(_V1_MAC_LABEL, payload)):
                raise OutdatedCallbackToken("callback token of the unbound first format")
            raise ValueError("callback token signature mismatch")
        fields = payload.split(_SEPARATOR, 4)
        if len(fields) != 5 or fields[0] != _VERSION:
            raise ValueError("malformed callback token")
        try:
            account, tag, dedup_id, original = (field.decode() for field in fields[1:])
        except UnicodeDecodeError:
            raise ValueError("malformed callback token") from None
        binding = CallbackBinding(account, tag, dedup_id)
        # Defence in depth: the MAC already vouches for all of it.
        binding.check()
        _checked_http_url(original)
        return UnwrappedCallback(original, binding)

    def is_wrapped(self, url: str) -> bool:
        return url.startswith(self.callback_prefix)

    def _mac(self, label: bytes, payload: bytes) -> bytes:
        return hmac.new(self._secret, label + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _checked_http_url(url: str) -> SplitResult:
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ValueError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError:
        raise ValueError("malformed URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("only http(s) URLs with a host are accepted")
    return parts


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    """Strict unpadded base64url: one encoding per value, so no two tokens mean the same."""
    if not _B64URL.fullmatch(text):
        raise ValueError("malformed callback token")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("malformed callback token") from None
    if _b64encode(raw) != text:
        raise ValueError("malformed callback token")
    return raw
