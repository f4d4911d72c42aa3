"""The fault proxy itself (tests/faultproxy.py): each fault does what it says, on a real server.

Clients here never retry (`retries=0`), so each fault shows as what redis-py raises for it.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
import redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.faultproxy import FaultProxy, ThreadedFaultProxy, contains, evalsha
from tests.harness import SENDER, post_send
from tests.servers import ServerProcess


@pytest.fixture(scope="module")
def server():
    with ServerProcess() as process:
        yield process


@pytest.fixture
async def direct(server):
    client = Redis(port=server.port)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def fault(server):
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        yield proxy


def client_through(proxy: FaultProxy, timeout: float = 2.0) -> Redis:
    return Redis(
        host=proxy.host,
        port=proxy.port,
        socket_timeout=timeout,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


async def test_pass_through_counts_connections_and_bytes(fault, direct):
    async with client_through(fault) as client:
        assert await client.set("k", "v")
        assert await client.get("k") == b"v"
    assert await direct.get("k") == b"v"
    assert fault.connections_total == 1
    assert fault.bytes_to_server > 0 and fault.bytes_to_client > 0
    await fault.wait_until(lambda p: p.connections_open == 0, what="connection closed")


async def test_latency_delays_replies_but_keeps_their_order(fault):
    async with client_through(fault) as client:
        await client.ping()
        fault.set_latency(0.3)
        started = time.monotonic()
        pipe = client.pipeline(transaction=False)
        for i in range(20):
            pipe.set(f"k{i}", i)
            pipe.get(f"k{i}")
        answers = await pipe.execute()
        took = time.monotonic() - started
    assert answers[1::2] == [str(i).encode() for i in range(20)]
    assert 0.3 <= took < 1.5


async def test_stall_holds_replies_while_the_commands_run(fault, direct):
    async with client_through(fault) as client:
        await client.ping()
        fault.stall(0.6)
        started = time.monotonic()
        pending = asyncio.ensure_future(client.incr("n"))
        await fault.wait_until(lambda p: p.bytes_to_server > 0)
        deadline = time.monotonic() + 2
        while await direct.get("n") is None:  # it ran while its answer is held
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert not pending.done()
        assert await pending == 1
        assert time.monotonic() - started >= 0.55


async def test_a_stall_longer_than_the_socket_timeout_is_a_redis_timeout(fault, direct):
    async with client_through(fault, timeout=0.3) as client:
        await client.ping()
        fault.stall(1.0)
        with pytest.raises(RedisTimeoutError):
            await client.incr("n")
    assert await direct.get("n") == b"1"


async def test_unstall_ends_a_stall_early(fault):
    async with client_through(fault) as client:
        await client.ping()
        fault.stall(30)
        pending = asyncio.ensure_future(client.ping())
        await asyncio.sleep(0.1)
        assert not pending.done()
        fault.unstall()
        assert await asyncio.wait_for(pending, 1)


async def test_drop_after_reply_loses_the_answer_of_a_command_that_ran(fault, direct):
    async with client_through(fault) as client:
        assert await client.get("n") is None  # GETs are not targeted
        fault.drop_after_reply(contains(b"INCR"))
        with pytest.raises(RedisConnectionError):
            await client.incr("n")
        assert fault.replies_dropped == 1
        assert await direct.get("n") == b"1"  # it ran: only the answer was lost
        assert await client.incr("n") == 2  # spent after one hit, a new connection works
    assert fault.connections_total == 2


async def test_drop_after_reply_targets_one_script_by_its_sha(fault, direct):
    async with client_through(fault) as client:
        first = client.register_script("return redis.call('INCR', KEYS[1])")
        second = client.register_script("return redis.call('INCRBY', KEYS[1], 10)")
        await first(keys=["a"])
        await second(keys=["b"])  # both loaded: NOSCRIPT answers are not what we target
        fault.drop_after_reply(evalsha(second.sha), times=2)
        assert await first(keys=["a"]) == 2
        for _ in range(2):
            with pytest.raises(RedisConnectionError):
                await second(keys=["b"])
        assert await first(keys=["a"]) == 3
        assert await second(keys=["b"]) == 40
    assert await direct.get("b") == b"40"  # every lost answer was a script that ran
    assert fault.replies_dropped == 2 and fault.armed() == 0


async def test_cut_request_runs_the_pipeline_only_up_to_the_marked_command(fault, direct):
    async with client_through(fault) as client:
        await client.ping()
        fault.cut_request(b"INCRBY")
        pipe = client.pipeline(transaction=False)
        pipe.set("before", 1)
        pipe.incrby("marked", 5)
        pipe.set("after", 1)
        with pytest.raises(RedisConnectionError):
            await pipe.execute()
    assert await direct.mget("before", "marked", "after") == [b"1", None, None]
    assert fault.requests_cut == 1


async def test_reset_all_breaks_open_connections_only(fault):
    async with client_through(fault) as client:
        await client.ping()
        fault.reset_all()
        await fault.wait_until(lambda p: p.connections_open == 0)
        with pytest.raises(RedisConnectionError):
            await client.ping()
        assert await client.ping()  # a new connection is fine
    assert fault.resets == 1


@pytest.mark.parametrize("how", ["close", "reset", "unlisten"])
async def test_refuse_new_connections_for_a_while(fault, how):
    async with client_through(fault) as held:
        await held.ping()
        fault.refuse(0.5, how=how)
        started = time.monotonic()
        async with client_through(fault) as fresh:
            with pytest.raises(RedisConnectionError):
                await fresh.ping()
            assert await held.ping()  # open connections are not touched
            while True:
                try:
                    assert await fresh.ping()
                    break
                except RedisConnectionError:
                    assert time.monotonic() - started < 3
                    await asyncio.sleep(0.05)
        assert time.monotonic() - started >= 0.45
    if how != "unlisten":
        assert fault.connections_refused >= 1


async def test_refuse_until_accept(fault):
    fault.refuse(None, how="unlisten")
    async with client_through(fault) as client:
        with pytest.raises(RedisConnectionError):
            await client.ping()
        fault.accept()
        assert await client.ping()


async def test_split_writes_deliver_whole_answers_byte_by_byte(fault):
    fault.split_writes(1)
    async with client_through(fault) as client:
        await client.set("k", "x" * 300)
        assert await client.get("k") == b"x" * 300
    assert fault.bytes_to_client >= 300


async def test_pass_through_clears_every_fault(fault):
    fault.set_latency(5)
    fault.stall(5)
    fault.drop_after_reply()
    fault.split_writes(1, delay=0.1)
    fault.refuse(5, how="unlisten")
    fault.pass_through()
    async with client_through(fault, timeout=1) as client:
        assert await client.ping()


def test_threaded_proxy_serves_blocking_clients_and_takes_orders_from_any_thread(server):
    with ThreadedFaultProxy("127.0.0.1", server.port) as fault:
        client = redis.Redis(port=fault.port, socket_timeout=0.5, retry=None)
        try:
            assert client.ping()
            fault.stall(1.0)
            with pytest.raises(redis.TimeoutError):
                client.incr("threaded")
            fault.unstall()
            assert client.ping()  # the timed-out connection was dropped: a new one
            fault.reset_all()
            fault.refuse(0.3, how="unlisten")
            with pytest.raises(redis.ConnectionError):
                client.ping()
            time.sleep(0.4)
            assert client.ping()
        finally:
            client.close()
    assert fault.resets >= 1


async def test_on_an_http_link_a_lost_answer_means_the_request_was_served(fake_twilio, http):
    """Generic enough for the upstream link: the fake Twilio creates the message, the answer
    never reaches the client."""
    from tests.harness import MESSAGES

    host, port = fake_twilio.url.removeprefix("http://").split(":")
    async with FaultProxy(host, int(port)) as fault:
        fault.drop_after_reply(contains(b"POST ", MESSAGES.encode()))
        form = {"To": "+15558675310", "From": SENDER, "Body": "lost answer"}
        with pytest.raises(aiohttp.ClientError):
            await post_send(http, fault.http_url, form)
        assert fake_twilio.creates == 1
        status, _, _ = await post_send(http, fault.http_url, form)
        assert status == 201 and fake_twilio.creates == 2
