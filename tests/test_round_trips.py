"""SPEC §6 store budget: passthrough 0 round trips, fresh send 2, replay 1.

Counted by the server itself through MONITOR, which labels commands a Lua script runs inside
the server as `lua`: what remains are the commands that crossed the network.
"""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as redis

from tests.harness import SENDER, post_send


def background(command: str) -> bool:
    """The kill switch board's own traffic (a resync read twice a second, a keepalive on its
    subscription): per instance, not per request, so not part of the budget."""
    return "{killswitch}" in command or command.split()[0].upper() == "PING"


async def test_store_round_trips_per_request_kind(proxies, fake_twilio, shared_redis_url, http):
    proxy = await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url)
    form = {"To": "+15558675310", "From": SENDER, "Body": "budget"}
    await post_send(http, proxy.url, {**form, "Body": "warm-up"})  # loads the scripts once
    observer = redis.Redis.from_url(shared_redis_url)
    seen: list[dict] = []

    async def watch() -> None:
        async with observer.monitor() as monitor:
            async for command in monitor.listen():
                seen.append(command)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)

    async def round_trips(action) -> list[str]:
        await asyncio.sleep(0.1)
        seen.clear()
        await action()
        await asyncio.sleep(0.2)  # let MONITOR deliver
        return [
            c["command"].split()[0].upper()
            for c in seen
            if c.get("client_type") != "lua" and not background(c["command"])
        ]

    async def passthrough_get() -> None:
        async with http.get(proxy.url + "/2010-04-01/Accounts.json") as answer:
            assert answer.headers["X-Sendguard-Decision"] == "passthrough"

    try:
        assert await round_trips(passthrough_get) == []
        assert await round_trips(lambda: post_send(http, proxy.url, form)) == ["EVALSHA", "EVALSHA"]
        assert await round_trips(lambda: post_send(http, proxy.url, form)) == ["EVALSHA"]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await observer.aclose()
