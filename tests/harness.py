"""Integration harness: real sendguard apps on real ports, a counting fake Twilio, real clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from proxy.admin.app import create_admin_app
from proxy.server.app import METRICS, STORE_URL, create_app
from proxy.server.limits import admin_runner, proxy_runner
from proxy.settings import load_settings
from tests.identities import (  # re-exported: the tests that start an app take them from here
    ACCOUNT,
    MESSAGES,
    OTHER_ACCOUNT,
    OTHER_TOKEN,
    SENDER,
    TOKEN,
    basic_auth,
)

__all__ = ["ACCOUNT", "MESSAGES", "OTHER_ACCOUNT", "OTHER_TOKEN", "SENDER", "TOKEN", "basic_auth"]


@dataclass
class ProxyInstance:
    url: str
    app: web.Application
    runner: web.AppRunner
    admin_url: str = ""
    admin_runner: web.AppRunner | None = None
    stopping: bool = False  # what /readyz reports as shutting down

    @property
    def store_url(self) -> str:
        return self.app[STORE_URL]


@dataclass
class ProxyFactory:
    started: list[ProxyInstance] = field(default_factory=list)

    async def start(self, port: int = 0, **overrides: Any) -> ProxyInstance:
        settings = load_settings(**{"log_format": "json", **overrides})
        app = create_app(settings)
        # The same runners (client limits included) as `sendguard serve`.
        runner = proxy_runner(app, settings, app[METRICS], shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        port = runner.addresses[0][1]
        instance = ProxyInstance(f"http://127.0.0.1:{port}", app, runner)
        admin = admin_runner(
            create_admin_app(app, lambda: instance.stopping), settings, app[METRICS]
        )
        await admin.setup()
        await web.TCPSite(admin, "127.0.0.1", 0).start()
        instance.admin_url = f"http://127.0.0.1:{admin.addresses[0][1]}"
        instance.admin_runner = admin
        self.started.append(instance)
        return instance

    async def start_pair(
        self, store_mode: str, shared_redis_url: str, **common: Any
    ) -> tuple[ProxyInstance, ProxyInstance]:
        """Two instances sharing one store: the first one's embedded store, or a shared server."""
        if store_mode == "embedded":
            first = await self.start(**common)
            return first, await self.start(redis_url=first.store_url, **common)
        first = await self.start(redis_url=shared_redis_url, **common)
        return first, await self.start(redis_url=shared_redis_url, **common)

    async def stop_all(self) -> None:
        for instance in reversed(self.started):
            await instance.runner.cleanup()
            if instance.admin_runner is not None:
                await instance.admin_runner.cleanup()
        self.started.clear()


async def admin_call(
    session: aiohttp.ClientSession, method: str, url: str, *, headers: dict[str, str], **kwargs: Any
) -> tuple[int, Any]:
    """One admin API request; returns the status and the parsed JSON body. (Each test module
    binds its own bearer token: `call = functools.partial(admin_call, headers=AUTH)`.)"""
    async with session.request(method, url, headers=headers, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def post_send(
    session: aiohttp.ClientSession,
    base: str,
    form: dict[str, str] | list[tuple[str, str]],
    *,
    key: str | None = None,
    auth: str | None = None,
    path: str = MESSAGES,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """A raw form POST like an SDK's; returns status, headers and the parsed JSON body."""
    sent = {"Authorization": auth or basic_auth(), **(headers or {})}
    if key is not None:
        sent["Idempotency-Key"] = key
    async with session.post(base + path, data=form, headers=sent) as response:
        body = await response.read()
        try:
            payload: Any = await response.json(content_type=None)
        except ValueError:
            payload = body
        return response.status, dict(response.headers), payload


class RecordingHttpClient(TwilioHttpClient):
    """The SDK's own HTTP client, recording each response (for sendguard's headers) and
    optionally adding headers to each request (e.g. an Idempotency-Key)."""

    def __init__(self, extra: Callable[[], dict[str, str]] | None = None) -> None:
        super().__init__()
        self._extra = extra or dict
        self.responses: list[Any] = []

    def request(self, method, url, params=None, data=None, headers=None, **kwargs):  # type: ignore[no-untyped-def]
        headers = dict(headers or {}, **self._extra())
        response = super().request(method, url, params=params, data=data, headers=headers, **kwargs)
        self.responses.append(response)
        return response

    @property
    def last_headers(self) -> Any:
        return self.responses[-1].headers


HeaderAddingHttpClient = RecordingHttpClient


def twilio_client(
    base_url: str,
    account: str = ACCOUNT,
    token: str = TOKEN,
    http_client: TwilioHttpClient | None = None,
) -> Client:
    client = Client(account, token, http_client=http_client or RecordingHttpClient())
    client.api.base_url = base_url
    return client


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The twilio SDK is synchronous: run it off the event loop that serves the proxy."""
    return await asyncio.to_thread(fn, *args, **kwargs)
