"""HTTP Basic auth as Twilio takes it: the account SID (or an API key SK…) and a secret."""

from __future__ import annotations

import base64
import binascii
import re
from typing import NamedTuple

from proxy.sandbox.responses import SandboxError

_API_KEY_SID = re.compile(r"^SK[0-9a-fA-F]{32}$")


class Credentials(NamedTuple):
    username: str
    password: str


def parse_basic_auth(header: str) -> Credentials | None:
    """`Basic base64(user:password)` → Credentials; None when absent or malformed.

    Parsed here rather than with aiohttp.BasicAuth, which aiohttp 3.14 deprecates.
    """
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return Credentials(username, password) if colon else None


def authenticate(header: str, account_sid: str) -> Credentials:
    """The credentials if they may act on `account_sid`; else the 401 Twilio answers."""
    credentials = parse_basic_auth(header)
    if credentials is None or not credentials.password:
        raise unauthenticated()
    username = credentials.username
    if username != account_sid and not _API_KEY_SID.match(username):
        raise unauthenticated()
    return credentials


def unauthenticated() -> SandboxError:
    return SandboxError(
        20003, "Authenticate", status=401, headers={"WWW-Authenticate": 'Basic realm="Twilio API"'}
    )
