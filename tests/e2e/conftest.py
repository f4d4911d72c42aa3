"""Fixtures shared by e2e modules: the sandbox app in process with its state open to the test
(test_sandbox.py, test_sandbox_contract.py), and an upstream that never leaves evidence."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.sandbox import SandboxState, create_sandbox_app
from tests.sandboxclient import Client, ClientFactory, basic
from tests.webapps import SilentTwilio


@pytest.fixture
def state() -> SandboxState:
    return SandboxState()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, state: SandboxState) -> Client:
    return await aiohttp_client(create_sandbox_app(state), headers=basic())


@pytest.fixture
async def silent_twilio() -> AsyncIterator[SilentTwilio]:
    """An upstream that leaves no evidence of its sends (test_reconcile.py, test_console.py)."""
    fake = await SilentTwilio().start()
    yield fake
    await fake.stop()
