"""The made-up Twilio identities every tier sends as: one home, and light to import (no app, no
SDK), so a unit test can use them without starting anything."""

from __future__ import annotations

import base64

ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "f" * 32
OTHER_ACCOUNT = "AC" + "fedcba9876543210" * 2
OTHER_TOKEN = "e" * 32  # another account's genuine token, e.g. a forger's own
MESSAGES = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
SENDER = "+15005550006"


def basic_auth(account: str = ACCOUNT, token: str = TOKEN) -> str:
    return "Basic " + base64.b64encode(f"{account}:{token}".encode()).decode()
