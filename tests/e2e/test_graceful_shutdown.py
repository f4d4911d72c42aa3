"""SIGTERM with a send in flight: readiness drops, the send finishes and is recorded, the process
exits within its grace; a send that cannot finish in time is marked UNKNOWN, never dropped.

A real `sendguard serve` process; the fake Twilio delays its answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from proxy.sandbox import Fault
from proxy.server.app import METRICS
from tests.harness import SENDER, post_send
from tests.processes import ServeProcess, start_serve

FORM = {"To": "+15558675310", "From": SENDER, "Body": "Shutdown test"}


@dataclass
class Stopping:
    started: ServeProcess
    attempt: asyncio.Task[Any]  # the send in flight (status, headers, body)
    stopped_at: float  # when SIGTERM went


async def sigterm_with_a_send_in_flight(
    http: aiohttp.ClientSession, fake_twilio: Any, redis_url: str, *, grace: float, fault: Fault
) -> Stopping:
    """A serve process with `grace`, a send it forwarded and the fake holds (`fault`), and
    SIGTERM sent once the create reached the fake."""
    started = await start_serve(
        "--upstream", fake_twilio.url, "--redis-url", redis_url, "--shutdown-grace", str(grace)
    )
    fake_twilio.push_fault(fault)
    attempt = asyncio.create_task(post_send(http, started.url, FORM))
    await fake_twilio.wait_for_creates(1, timeout=10)
    stopped_at = time.monotonic()
    started.process.send_signal(signal.SIGTERM)
    return Stopping(started, attempt, stopped_at)


async def test_sigterm_lets_the_in_flight_send_finish_and_record(
    fake_twilio, shared_redis_url, proxies, http
):
    stopping = await sigterm_with_a_send_in_flight(
        http, fake_twilio, shared_redis_url, grace=5, fault=Fault("delay", seconds=1.5)
    )
    await asyncio.sleep(0.2)
    # The admin port answers while draining.
    async with http.get(stopping.started.admin_url + "/readyz") as ready:
        assert ready.status == 503
        assert (await ready.json())["shutting_down"] is True
    async with aiohttp.ClientSession() as fresh:  # no new connections on the proxy port
        with pytest.raises(aiohttp.ClientConnectionError):
            await post_send(fresh, stopping.started.url, {**FORM, "Body": "too late"})
    status, headers, sent = await stopping.attempt
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert await asyncio.wait_for(stopping.started.process.wait(), 10) == 0
    assert time.monotonic() - stopping.stopped_at < 5 + 2
    # The outcome was recorded: another instance replays it.
    other = await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url)
    status, headers, again = await post_send(http, other.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert again["sid"] == sent["sid"]
    assert fake_twilio.creates == 1


async def test_a_send_outliving_the_grace_is_marked_unknown(
    fake_twilio, shared_redis_url, proxies, http
):
    stopping = await sigterm_with_a_send_in_flight(
        http, fake_twilio, shared_redis_url, grace=0.5, fault=Fault("hang", seconds=30)
    )
    assert await asyncio.wait_for(stopping.started.process.wait(), 10) == 0
    assert time.monotonic() - stopping.stopped_at < 0.5 + 3
    with contextlib.suppress(aiohttp.ClientError):
        await stopping.attempt  # cut off: the client sees an error or a broken connection
    other = await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url)
    status, headers, body = await post_send(http, other.url, FORM)
    # The cancelled send was recorded UNKNOWN (never dropped, never resent); the retry then
    # reconciles it: the fake had created the message, so it is found and replayed.
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert body["sid"] in fake_twilio.messages
    assert other.app[METRICS].value("sendguard_reconciliations_total", outcome="found-list") == 1
    assert fake_twilio.creates == 1
