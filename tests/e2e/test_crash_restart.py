"""Crashes and restarts: a claim whose owner died is never silently retaken; records survive.

A real `sendguard serve` process is SIGKILLed while the fake Twilio holds its send (created,
not yet answered). Another instance then answers the retry: in flight while the dead owner's
lease runs, `outcome-unknown` after it, and the fake's create count stays at one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from proxy.sandbox import Fault
from tests.harness import SENDER, post_send
from tests.processes import start_serve

FORM = {"To": "+15558675310", "From": SENDER, "Body": "Crash test"}
TIMEOUTS = ["--upstream-connect-timeout", "0.5", "--upstream-read-timeout", "1"]


async def start_serve_process(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    # Not waiting for readiness: one test starts sendguard with its store down.
    started = await start_serve(*TIMEOUTS, *args, ready=False)
    return started.process, started.url


async def send_then_sigkill(process: asyncio.subprocess.Process, url: str, fake) -> None:
    fake.push_fault(Fault("hang", seconds=60))
    async with aiohttp.ClientSession() as session:
        attempt = asyncio.create_task(post_send(session, url, FORM))
        await fake.wait_for_creates(1, timeout=10)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        with pytest.raises(aiohttp.ClientError):
            await attempt


async def wait_until_settled(session, url: str, seconds: float = 10) -> list[str]:
    """Retry until the dead owner's claim is settled: first `in-flight` (its lease is
    honoured), then the stale claim turns UNKNOWN, which the retry reconciles (the fake had
    created the message): `replayed`. Never `forwarded`."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status, headers, body = await post_send(session, url, FORM)
        seen.append(headers["X-Sendguard-Decision"])
        if seen[-1] == "replayed":
            assert status == 201
            return seen
        if seen[-1] == "outcome-unknown":
            assert (status, body["code"]) == (409, 79004)
        else:
            assert (status, seen[-1]) == (409, "in-flight")
        await asyncio.sleep(0.3)
    raise AssertionError(f"never settled: {seen}")


async def test_sigkill_between_send_and_record_is_never_retaken(
    fake_twilio, shared_redis_url, proxies, http
):
    process, url = await start_serve_process(
        "--upstream", fake_twilio.url, "--redis-url", shared_redis_url
    )
    await send_then_sigkill(process, url, fake_twilio)

    survivor = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, inflight_wait=0.1
    )
    seen = await wait_until_settled(http, survivor.url)
    assert seen[0] == "in-flight", "the dead owner's lease must be honoured first"
    status, headers, body = await post_send(http, survivor.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert body["sid"] in fake_twilio.messages
    assert fake_twilio.creates == 1


def _processes_using(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


async def test_sigkill_with_the_persistent_embedded_store(fake_twilio, proxies, http, tmp_path):
    """Embedded store with a data dir: the claim survives the crash and the restart."""
    data_dir = tmp_path / "store"
    process, url = await start_serve_process(
        "--upstream", fake_twilio.url, "--data-dir", str(data_dir)
    )
    await send_then_sigkill(process, url, fake_twilio)

    restarted = await proxies.start(
        upstream=fake_twilio.url, data_dir=str(data_dir), inflight_wait=0.1
    )
    await wait_until_settled(http, restarted.url)
    assert fake_twilio.creates == 1
    await proxies.stop_all()
    assert _processes_using(data_dir) == [], "the embedded server outlived sendguard"


async def test_records_survive_a_restart_with_the_embedded_store(
    fake_twilio, proxies, http, tmp_path
):
    data_dir = tmp_path / "store"
    first = await proxies.start(upstream=fake_twilio.url, data_dir=str(data_dir))
    status, _, original = await post_send(http, first.url, FORM, key="survives-restart")
    assert status == 201
    await proxies.stop_all()

    second = await proxies.start(upstream=fake_twilio.url, data_dir=str(data_dir))
    status, headers, replay = await post_send(http, second.url, FORM, key="survives-restart")
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert replay["sid"] == original["sid"]
    assert fake_twilio.creates == 1


async def test_a_data_dir_is_used_by_one_store_at_a_time(tmp_path):
    from proxy.store.embedded import EmbeddedStore, EmbeddedStoreError

    first = EmbeddedStore(tmp_path)
    await first.start()
    try:
        with pytest.raises(EmbeddedStoreError, match="in use"):
            await EmbeddedStore(tmp_path).start(wait_seconds=0.5)
    finally:
        await first.stop()


async def test_a_start_cancelled_halfway_leaves_no_server_running():
    """The outage store starts on first need, inside work that a shutdown may cancel: the
    valkey-server it spawned must not outlive the cancelled start (nobody else holds it)."""
    from proxy.store.embedded import EmbeddedStore

    store = EmbeddedStore(None)
    starting = asyncio.ensure_future(store.start())
    while store._process is None:  # spawned; now waiting for it to answer
        await asyncio.sleep(0.001)
    process = store._process
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert process.returncode is not None, "the cancelled start left valkey-server running"
    assert store._process is None and store._run_dir is None


async def test_embedded_server_dies_with_a_sigkilled_sendguard(fake_twilio, tmp_path):
    data_dir = tmp_path / "store"
    process, _url = await start_serve_process(
        "--upstream", fake_twilio.url, "--data-dir", str(data_dir)
    )
    assert _processes_using(data_dir), "expected a running embedded server"
    os.kill(process.pid, signal.SIGKILL)
    await process.wait()
    deadline = time.monotonic() + 10
    while _processes_using(data_dir) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _processes_using(data_dir) == []


async def test_serve_starts_with_its_store_down_and_guards_sends_once_it_is_up(fake_twilio, http):
    """A pod restarted during a store outage must not crash-loop: `sendguard serve` starts,
    serves passthrough, refuses guarded sends (503, nothing sent) and guards them once the
    store answers."""
    from tests.servers import ServerProcess

    server = ServerProcess()  # its port is chosen, the server not started yet
    process, url = await start_serve_process(
        "--upstream", fake_twilio.url, "--redis-url", server.url
    )
    try:
        status, headers, _ = await post_send(http, url, FORM)
        assert (status, headers["X-Sendguard-Decision"]) == (503, "store-unavailable")
        async with http.get(url + "/2010-04-01/Accounts.json") as answer:
            assert answer.headers["X-Sendguard-Decision"] == "passthrough"
        server.start()
        deadline = time.monotonic() + 15
        while True:
            status, headers, _ = await post_send(http, url, FORM)
            if status == 201:
                break
            assert status == 503, status
            assert time.monotonic() < deadline, "sends were never guarded again"
            await asyncio.sleep(0.3)
        assert headers["X-Sendguard-Decision"] == "forwarded"
        status, headers, _ = await post_send(http, url, FORM)
        assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
        assert fake_twilio.creates == 1
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 20)
        server.stop()
