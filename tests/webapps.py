"""Small aiohttp servers the e2e tests stand beside sendguard on real ports: an upstream that
never leaves evidence, and an app that checks each status callback's signature."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from twilio.request_validator import RequestValidator

from tests.identities import ACCOUNT, TOKEN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_app(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, str]:
    """Start `app` on a free port of 127.0.0.1; returns its runner (to clean up) and base URL."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, *, method: str = "*", path: str = "/{tail:.*}"
) -> AsyncIterator[str]:
    """An app of one route (by default every method on every path) on a free port, for the
    block: yields its base URL."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner, url = await serve_app(app)
    try:
        yield url
    finally:
        await runner.cleanup()


class SilentTwilio:
    """Answers the first create 500 without creating anything; later creates succeed. Its list
    is always empty: there is never evidence, which is the case reconciliation must not guess
    (the record stays UNKNOWN)."""

    def __init__(self) -> None:
        self.creates = 0
        self.posts = 0
        self.lists = 0
        self.in_flight_lists = 0
        self.max_in_flight_lists = 0
        self.list_delay = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> SilentTwilio:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self.create)
        app.router.add_get("/2010-04-01/Accounts/{account}/Messages.json", self.list)
        self.runner, self.url = await serve_app(app)
        return self

    async def create(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.posts == 1:
            return web.json_response({"code": 20500, "message": "oops", "status": 500}, status=500)
        self.creates += 1
        sid = "SM" + secrets.token_hex(16)
        return web.json_response(
            {"sid": sid, "account_sid": ACCOUNT, "status": "queued",
             "date_created": formatdate(usegmt=True)}, status=201,
        )  # fmt: skip

    async def list(self, request: web.Request) -> web.Response:
        self.lists += 1
        self.in_flight_lists += 1
        self.max_in_flight_lists = max(self.max_in_flight_lists, self.in_flight_lists)
        try:
            await asyncio.sleep(self.list_delay)
            return web.Response(
                body=json.dumps({"messages": [], "next_page_uri": None}),
                content_type="application/json",
            )
        finally:
            self.in_flight_lists -= 1

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@dataclass
class SignatureCheckingApp:
    """The app's status-callback endpoint: records each callback's form and whether its
    signature validates for the URL it reached with TOKEN (twilio-python's RequestValidator)."""

    url: str = ""
    received: list[tuple[dict[str, str], bool]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        form = dict(parse_qsl((await request.read()).decode(), keep_blank_values=True))
        signature = request.headers.get("X-Twilio-Signature", "")
        valid = RequestValidator(TOKEN).validate(str(request.url), form, signature)
        self.received.append((form, valid))
        return web.Response(status=204)
