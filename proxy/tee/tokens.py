"""Which auth tokens can verify an account's status callbacks.

Configured tokens (`SENDGUARD_TWILIO_AUTH_TOKENS`) come first; tokens learned from the Basic
auth of sends follow, newest first. Learned tokens live in this process only: never in the store,
never in a log. Only an account SID username (`AC…:token`) teaches anything: with an API key
(`SK…:secret`) the password is the key's secret, which Twilio does not sign callbacks with.

Learn only from creates the upstream accepted (2xx; CallbackRouting.learn_credential decides):
a token learned from a request Twilio refused (401/403) would be a forger's token, and a flood
of them would push the real one out; a 400, 404 or final 429 does not show Twilio took the
credential either. A token verifies only the callbacks of its own account: the tee looks tokens
up by the account a callback URL is bound to, never by the account a callback claims.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Mapping

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}", re.ASCII)
# Auth tokens are 32 hex digits today; accept any visible ASCII of a sane length.
_TOKEN = re.compile(r"[\x21-\x7e]{8,256}", re.ASCII)
_MAX_HEADER_CHARS = 1024


class AuthTokenBook:
    """Auth tokens to verify callbacks: configured ones (SENDGUARD_TWILIO_AUTH_TOKENS) plus ones
    learned from sends' Basic auth — learned ones live in process memory only."""

    def __init__(
        self,
        configured: Mapping[str, str],
        *,
        max_tokens_per_account: int = 8,
        max_accounts: int = 10_000,
    ) -> None:
        self._configured = {sid: token for sid, token in configured.items() if token}
        self._learned: OrderedDict[str, list[str]] = OrderedDict()
        self._max_tokens = max_tokens_per_account
        self._max_accounts = max_accounts

    def learn_from_authorization(self, authorization_header: str) -> None:
        """Remember the token of an `AC…:token` Basic credential; anything else is ignored."""
        credentials = _parse_basic(authorization_header)
        if credentials is None:
            return
        account_sid, token = credentials
        if not _ACCOUNT_SID.fullmatch(account_sid) or not _TOKEN.fullmatch(token):
            return
        tokens = self._learned.get(account_sid)
        if tokens is None:
            tokens = self._learned[account_sid] = []
            while len(self._learned) > self._max_accounts:
                self._learned.popitem(last=False)
        else:
            self._learned.move_to_end(account_sid)
            if tokens and tokens[0] == token:
                return  # the hot path: the same credential as last time
            if token in tokens:
                tokens.remove(token)
        tokens.insert(0, token)
        del tokens[self._max_tokens :]

    def tokens_for(self, account_sid: str) -> list[str]:
        configured = self._configured.get(account_sid)
        learned = self._learned.get(account_sid, [])
        ordered = ([configured] if configured else []) + learned
        return list(dict.fromkeys(ordered))


def _parse_basic(header: str) -> tuple[str, str] | None:
    if not header or len(header) > _MAX_HEADER_CHARS:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None
