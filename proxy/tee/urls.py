"""Callback URLs that carry the app's own URL: `{public_url}/_sendguard/callbacks/v1/{token}`.

The token is `base64url(original URL) + "." + base64url(HMAC-SHA256(secret, original)[:16])`,
unpadded, so it is path-safe and any instance holding the secret recovers the original without
a store lookup (Twilio may deliver a callback to another instance, days later). The secret must
be the same on every instance and survive restarts, or in-flight callbacks are refused.

Only http(s) URLs with a host are wrapped, and `unwrap` re-checks that after the MAC, so a token
never yields anything but a URL sendguard itself wrapped (the tee's SSRF guard, see handler.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from urllib.parse import SplitResult, urlsplit

CALLBACK_PATH_PREFIX = "/_sendguard/callbacks/v1/"
MAX_ORIGINAL_URL_CHARS = 4096

_MAC_BYTES = 16
_MAC_LABEL = b"sendguard-callback-url-v1\x00"  # domain separation from other uses of the secret
_B64URL = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
# The longest token a MAX_ORIGINAL_URL_CHARS URL (4 UTF-8 bytes per char at worst) can make.
_MAX_TOKEN_CHARS = (MAX_ORIGINAL_URL_CHARS * 4 * 4) // 3 + 64
_MIN_SECRET_BYTES = 16


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

    def wrap(self, original_url: str) -> str:
        """The sendguard URL standing for `original_url`; ValueError unless it is http(s).

        A fragment (Twilio's connection overrides, `#rc=3&rp=all`) is kept in the token and also
        copied onto the wrapped URL, so Twilio keeps applying it on its hop to sendguard.
        """
        if len(original_url) > MAX_ORIGINAL_URL_CHARS:
            raise ValueError("callback URL too long")
        parts = _checked_http_url(original_url)
        raw = original_url.encode()
        token = f"{_b64encode(raw)}.{_b64encode(self._mac(raw))}"
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        return f"{self.callback_prefix}{token}{fragment}"

    def unwrap(self, token: str) -> str:
        """The original URL a token stands for; ValueError for anything sendguard did not make."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise ValueError("callback token too long")
        encoded_url, dot, encoded_mac = token.partition(".")
        if not dot:
            raise ValueError("malformed callback token")
        raw = _b64decode(encoded_url)
        if not hmac.compare_digest(_b64decode(encoded_mac), self._mac(raw)):
            raise ValueError("callback token signature mismatch")
        try:
            original = raw.decode()
        except UnicodeDecodeError:
            raise ValueError("malformed callback token") from None
        _checked_http_url(original)  # defence in depth: the MAC already vouches for it
        return original

    def is_wrapped(self, url: str) -> bool:
        return url.startswith(self.callback_prefix)

    def _mac(self, raw_url: bytes) -> bytes:
        return hmac.new(self._secret, _MAC_LABEL + raw_url, hashlib.sha256).digest()[:_MAC_BYTES]


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
