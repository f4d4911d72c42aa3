"""Sentinel (SPEC §1 "Scale-out", §3.4): a real 1 master + 1 replica + 3 sentinel topology.

Dedup holds across a failover (kill -9 of the master), the kill switch survives it, and
`store_min_replicas` closes the window in which a failover loses a fresh claim. Ground truth:
the sandbox's create count.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.harness import SENDER, post_send
from tests.sentinel import SentinelTopology

pytestmark = pytest.mark.slow


@pytest.fixture
def topology():
    with SentinelTopology() as topology:
        yield topology


def form(n: int) -> dict[str, str]:
    return {"To": f"+1555700{n:04d}", "From": SENDER, "Body": f"sentinel {n}"}


async def send_until_definite(http, url, body, key, deadline):
    """A retrying client: resend until a definite answer (2xx replay/forward or 409)."""
    loop = asyncio.get_running_loop()
    while True:
        status, headers, payload = await post_send(http, url, body, key=key)
        if status in (201, 409) or loop.time() > deadline:
            return status, headers.get("X-Sendguard-Decision"), payload
        await asyncio.sleep(0.2)


async def engage(http, instance, scope: str, reason: str) -> None:
    async with http.post(
        instance.admin_url + "/v1/kill-switches",
        json={"scope": scope, "reason": reason},
        headers={"Authorization": "Bearer t"},
    ) as answer:
        assert answer.status in (200, 201)


async def test_dedup_and_the_kill_switch_hold_across_a_failover(
    topology, proxies, fake_twilio, http
):
    common = {"upstream": fake_twilio.url, "redis_url": topology.url, "recipient_limits": "off",
              "admin_token": "t"}  # fmt: skip
    first = await proxies.start(**common)
    second = await proxies.start(**common)
    for n in range(20):
        status, headers, _ = await post_send(http, first.url, form(n), key=f"k{n}")
        assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    await engage(http, first, "recipient:+15557009999", "drill")

    old = topology.kill_master()
    await asyncio.to_thread(topology.wait_for_failover, old)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    # Every earlier send, retried through the other instance, is a replay once the new
    # master answers; never a second create.
    for n in range(20):
        status, decision, _ = await send_until_definite(
            http, second.url, form(n), f"k{n}", deadline
        )
        assert (status, decision) == (201, "replayed"), n
    assert loop.time() <= deadline, "sends did not resume within 15 s of the failover"
    status, headers, _ = await post_send(http, first.url, form(9999))
    assert (status, headers["X-Sendguard-Decision"]) == (503, "killed")
    # The push follows the new master: a switch engaged on one instance after the failover
    # reaches the other within a second.
    await engage(http, second, "recipient:+15557008888", "after the failover")
    engaged_at = loop.time()
    while True:
        status, headers, _ = await post_send(http, first.url, form(8888))
        if status == 503:
            break
        assert loop.time() - engaged_at < 1.0, "the switch did not reach the other instance"
        await asyncio.sleep(0.05)
    status, _, _ = await send_until_definite(http, first.url, form(100), "k100", deadline + 5)
    assert status == 201
    # form(8888) may have gone out once before the switch arrived.
    assert fake_twilio.creates in (21, 22)


async def test_min_replicas_refuses_to_send_while_no_replica_holds_the_claim(
    topology, proxies, fake_twilio, http
):
    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=topology.url, store_min_replicas=1,
        recipient_limits="off",
    )  # fmt: skip
    status, headers, _ = await post_send(http, proxy.url, form(1), key="r1")
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    replica = topology.stop_replica()
    status, headers, body = await post_send(http, proxy.url, form(2), key="r2")
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (
        503, "store-unavailable", 79021,
    )  # fmt: skip
    assert fake_twilio.creates == 1
    topology.start_replica(replica)
    status, headers, _ = await post_send(http, proxy.url, form(2), key="r2")
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")  # released whole
    assert fake_twilio.creates == 2


@pytest.mark.parametrize("min_replicas", [0, 1])
async def test_a_failover_that_loses_unreplicated_writes(
    topology, proxies, fake_twilio, http, min_replicas
):
    """The replica is frozen (SIGSTOP) and its link cut while a send is claimed; then the master dies and the stale replica is promoted:
    the claim is lost. Without store_min_replicas the retry, on another instance, is sent again
    (the loss this setting exists for); with it, the claim never went out unreplicated. (On the
    instance that sent it the retry would be replayed from its journal while the outcome is
    still owed: the other instance has nothing but the store.)"""
    import redis

    proxy, other = [
        await proxies.start(
            upstream=fake_twilio.url, redis_url=topology.url, store_min_replicas=min_replicas,
            recipient_limits="off",
        )
        for _ in range(2)
    ]  # fmt: skip
    master, replica = topology.master_port(), topology.replica_port()
    frozen = topology.processes[replica]
    os.kill(frozen.pid, signal.SIGSTOP)
    with redis.Redis(port=master) as admin:
        admin.execute_command("CLIENT", "KILL", "TYPE", "replica")  # link cut; frozen: no resync
    try:
        status, _, _ = await post_send(http, proxy.url, form(7), key="lost")
    finally:
        old = topology.kill_master()
        os.kill(frozen.pid, signal.SIGCONT)
    await asyncio.to_thread(topology.wait_for_failover, old)
    await asyncio.to_thread(topology.restart_as_replica, old)  # a replica again, for WAIT
    await asyncio.to_thread(topology._wait_replicated, old)
    deadline = asyncio.get_running_loop().time() + 15
    retry_status, decision, _ = await send_until_definite(
        http, other.url, form(7), "lost", deadline
    )
    if min_replicas:
        assert status == 503  # refused before sending: nothing to lose
        assert (retry_status, decision) == (201, "forwarded")
        assert fake_twilio.creates == 1
    else:
        assert status == 201
        # Documented loss: the promoted replica never saw the claim, so the retry sends again.
        assert (retry_status, decision) == (201, "forwarded")
        assert fake_twilio.creates == 2
