"""Talking to the sandbox app in process (aiohttp's test client): the sandbox tests' shared
identities, form and requests. Their `state` and `client` fixtures are in tests/e2e/conftest.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.identities import ACCOUNT, OTHER_ACCOUNT

__all__ = ["ACCOUNT", "OTHER_ACCOUNT"]  # re-exported beside the sandbox's own names below

API_KEY = "SK" + "abcdef0123456789" * 2
TOKEN = "sandbox-auth-token"
BASE = f"/2010-04-01/Accounts/{ACCOUNT}"
MESSAGES = f"{BASE}/Messages.json"
CALLS = f"{BASE}/Calls.json"
SEND = [("To", "+15558675310"), ("From", "+15005550006"), ("Body", "hello")]

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[..., Awaitable[Client]]


def basic(username: str = ACCOUNT, password: str = TOKEN) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(username, password)}


async def send(client: Client, form: list[tuple[str, str]] = SEND, **kwargs: Any) -> Any:
    """POST a create and return (status, JSON body)."""
    async with client.post(MESSAGES, data=form, **kwargs) as response:
        return response.status, await response.json()


async def get_json(client: Client, uri: str, **params: str) -> Any:
    async with client.get(uri, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()
