"""The shared Redis stops mid-run (SPEC §3.4): `local`, `closed` and `open`, and the way back.

A private server per test (stopped and restarted on the same port), two instances in front of
it, the fake Twilio counting creates.
"""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from proxy.sandbox import Fault
from proxy.server.app import METRICS, RUNTIME
from proxy.server.gate import StoreMode
from tests.harness import SENDER, post_send
from tests.servers import ServerProcess

FORM = {"To": "+15558675310", "From": SENDER, "Body": "during the outage"}


@pytest.fixture
def redis_server():
    with ServerProcess() as server:
        yield server


OUTAGE_AFTER = 1.0  # seconds without a good probe before the policy engages (default 3 s)


async def start_pair(proxies, fake_twilio, redis_server, policy: str | None):
    common = {
        "upstream": fake_twilio.url,
        "redis_url": redis_server.url,
        "recipient_limits": "off",
        "admin_token": "t",
        "store_outage_after": OUTAGE_AFTER,
    }
    if policy is not None:
        common["on_store_error"] = policy
    return [await proxies.start(**common) for _ in range(2)]


async def readyz(http, instance) -> tuple[int, dict]:
    async with http.get(instance.admin_url + "/readyz") as response:
        return response.status, await response.json()


async def wait_for(condition, timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _mode_is(http, instance, mode: str) -> bool:
    return (await readyz(http, instance))[1]["store_mode"] == mode


async def test_local_dedups_through_the_outage_and_its_aftermath(
    redis_server, proxies, fake_twilio, http
):
    """A send made on the outage store, retried after the shared store is back (on the same
    and on the other instance), is still a duplicate: the outage records were merged."""
    first, second = await start_pair(proxies, fake_twilio, redis_server, "local")
    redis_server.stop()
    with capture_logs() as logs:
        await wait_for(lambda: _mode_is(http, first, "local"))
        status, headers, sent = await post_send(http, first.url, FORM)
        assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
        status, headers, again = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert again["sid"] == sent["sid"]
    assert fake_twilio.creates == 1
    assert any(e["event"] == "store_degraded" and e["mode"] == "local" for e in logs)
    status, ready = await readyz(http, first)
    assert (status, ready["store_mode"], ready["degraded"], ready["store_up"]) == (
        200, "local", True, False,
    )  # fmt: skip
    assert first.app[METRICS].value("sendguard_store_mode", mode="local") == 1
    assert first.app[METRICS].value("sendguard_store_up") == 0

    redis_server.start()
    await wait_for(lambda: _mode_is(http, first, "shared"))
    assert first.app[METRICS].value("sendguard_store_mode", mode="shared") == 1
    for instance in (first, second):
        status, headers, retried = await post_send(http, instance.url, FORM)
        assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
        assert retried["sid"] == sent["sid"]
    assert fake_twilio.creates == 1
    other = {**FORM, "Body": "after the outage"}
    status, headers, _ = await post_send(http, first.url, other)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, _ = await post_send(http, second.url, other)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")  # shared again
    assert fake_twilio.creates == 2


async def test_closed_is_the_default_it_refuses_guarded_sends_and_passthrough_flows(
    redis_server, proxies, fake_twilio, http
):
    first, _ = await start_pair(proxies, fake_twilio, redis_server, None)
    assert first.app[RUNTIME].failover.fallback is StoreMode.CLOSED
    redis_server.stop()
    # Before the policy engages, the failing claim itself refuses the send: nothing sent.
    status, headers, body = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (
        503, "store-unavailable", 79021,
    )  # fmt: skip
    await wait_for(lambda: _mode_is(http, first, "closed"))
    status, headers, _ = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (503, "store-unavailable")
    async with http.get(first.url + "/2010-04-01/Accounts.json") as answer:
        assert answer.headers["X-Sendguard-Decision"] == "passthrough"
    assert fake_twilio.creates == 0
    # A sidecar stays ready: its app's other Twilio calls still flow.
    status, ready = await readyz(http, first)
    assert (status, ready["store_mode"], ready["store_up"]) == (200, "closed", False)
    redis_server.start()
    await wait_for(lambda: _mode_is(http, first, "shared"))
    status, headers, _ = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 1


async def test_ready_requires_store_fails_readiness_while_the_store_is_down(
    redis_server, proxies, fake_twilio, http
):
    alone = await proxies.start(
        upstream=fake_twilio.url, redis_url=redis_server.url, ready_requires_store=True
    )
    assert (await readyz(http, alone))[0] == 200
    redis_server.stop()

    async def not_ready() -> bool:
        return (await readyz(http, alone))[0] == 503

    await wait_for(not_ready, timeout=3.0)


async def test_open_forwards_unguarded_loudly(redis_server, proxies, fake_twilio, http):
    first, _ = await start_pair(proxies, fake_twilio, redis_server, "open")
    redis_server.stop()
    await wait_for(lambda: _mode_is(http, first, "open"))
    with capture_logs() as logs:
        for _ in range(2):
            status, headers, _ = await post_send(http, first.url, FORM)
            assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 2  # what `open` means: no dedup while the store is down
    assert sum(e["event"] == "unguarded_send" for e in logs) == 2
    assert first.app[METRICS].value("sendguard_store_mode", mode="open") == 1
    assert first.app[METRICS].value("sendguard_unguarded_sends_total") == 2
    status, ready = await readyz(http, first)
    assert (status, ready["store_mode"], ready["degraded"]) == (200, "open", True)
    redis_server.start()
    await wait_for(lambda: _mode_is(http, first, "shared"))
    status, headers, _ = await post_send(http, first.url, {**FORM, "Body": "guarded again"})
    status, headers, _ = await post_send(http, first.url, {**FORM, "Body": "guarded again"})
    assert headers["X-Sendguard-Decision"] == "replayed"
    assert fake_twilio.creates == 3


async def test_store_up_drops_without_traffic(redis_server, proxies, fake_twilio):
    """The prober, not a failing send, notices the outage: no request is made here."""
    first, _ = await start_pair(proxies, fake_twilio, redis_server, None)
    assert first.app[METRICS].value("sendguard_store_up") == 1
    redis_server.stop()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    while first.app[METRICS].value("sendguard_store_up") != 0:
        assert loop.time() < deadline, "sendguard_store_up still 1 three seconds on"
        await asyncio.sleep(0.1)


async def test_the_embedded_store_has_no_fallback_so_local_means_closed(proxies, fake_twilio):
    alone = await proxies.start(upstream=fake_twilio.url, on_store_error="local")
    assert alone.app[RUNTIME].failover.fallback is StoreMode.CLOSED


async def test_a_quick_redis_restart_is_absorbed_without_leaving_shared_mode(
    redis_server, proxies, fake_twilio, http
):
    """Every pooled connection is dead once after a restart: one retry, no mode flip (with
    `closed`, a flip would answer 503)."""
    first, second = await start_pair(proxies, fake_twilio, redis_server, "closed")
    for instance in (first, second):
        await post_send(http, instance.url, {**FORM, "Body": f"warm {instance.url}"})
    redis_server.stop()
    redis_server.start()
    status, headers, _ = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, _ = await post_send(http, second.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert first.app[METRICS].value("sendguard_store_mode", mode="shared") == 1


async def test_a_killed_embedded_store_is_restarted_and_sends_are_guarded_again(
    proxies, fake_twilio, http
):
    from proxy.server.app import EMBEDDED

    alone = await proxies.start(upstream=fake_twilio.url, recipient_limits="off")
    status, headers, sent = await post_send(http, alone.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    with capture_logs() as logs:
        alone.app[EMBEDDED].kill_for_test()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8.0
        while alone.app[METRICS].value("sendguard_embedded_store_restarts_total") < 1:
            assert loop.time() < deadline, "the embedded store was not restarted"
            await asyncio.sleep(0.05)

        async def sends_again() -> bool:
            status, _, _ = await post_send(http, alone.url, {**FORM, "Body": "after"})
            assert status in (201, 503), status  # never a 500 while it restarts
            return status == 201

        await wait_for(sends_again)
    assert any(e["event"] == "embedded_store_died" for e in logs)
    # The restarted server came back with its records: the first send is still a duplicate.
    status, headers, again = await post_send(http, alone.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert again["sid"] == sent["sid"]
    assert fake_twilio.creates == 2


async def test_local_mode_never_reclaims_a_send_still_in_flight_on_the_shared_store(
    redis_server, proxies, fake_twilio, http
):
    """A send claimed on the shared store is still waiting for Twilio when the outage policy
    engages: its retry on the same instance must not be claimed afresh on the outage store
    (found by the spin model)."""
    first, _ = await start_pair(proxies, fake_twilio, redis_server, "local")
    fake_twilio.push_fault(Fault("delay", seconds=3))
    original = asyncio.create_task(post_send(http, first.url, FORM))
    await fake_twilio.wait_for_creates(1)
    redis_server.stop()
    await wait_for(lambda: _mode_is(http, first, "local"))
    status, headers, _ = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (409, "in-flight")
    status, headers, sent = await original
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    # Its outcome is owed to the shared store; the journal answers the retry meanwhile.
    status, headers, again = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"], again["sid"]) == (201, "replayed", sent["sid"])
    assert fake_twilio.creates == 1
    # The store comes back: the owed outcome lands there (and no shutdown waits for it).
    redis_server.start()
    journal = first.app[RUNTIME].journal

    async def settled() -> bool:
        return len(journal) == 0

    await wait_for(settled)
    status, headers, again = await post_send(http, first.url, FORM)
    assert (status, again["sid"]) == (201, sent["sid"])
    assert headers["X-Sendguard-Decision"] == "replayed"
    assert fake_twilio.creates == 1


async def test_the_outage_store_client_is_closed_with_the_instance(
    redis_server, proxies, fake_twilio, http
):
    """The private store's redis-py client is the app's to close: it was left open (its unix
    socket warned when collected; found by the long proof run)."""
    first, _ = await start_pair(proxies, fake_twilio, redis_server, "local")
    redis_server.stop()
    await wait_for(lambda: _mode_is(http, first, "local"))
    status, headers, _ = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    local = first.app[RUNTIME].failover._local
    assert local is not None
    pool = local.store.redis.connection_pool
    await local.store.redis.ping()  # at least one connection of its own
    redis_server.start()  # (the owed outcome lands: no shutdown waits for it)
    await proxies.stop_all()
    connections = [*pool._available_connections, *pool._in_use_connections]
    assert connections and not any(c.is_connected for c in connections)
