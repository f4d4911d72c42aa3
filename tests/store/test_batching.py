"""Auto-pipelining against a real server: each caller gets exactly its own answers, concurrent
calls share pipelines, and failures reach every caller of the batch."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from proxy.store.batching import AutoPipeline
from proxy.store.send_store import SendRef, SendStore
from tests.spies import CallCounter
from tests.store.test_scripts import request


@pytest.fixture
async def client(shared_redis_url):
    redis = Redis.from_url(shared_redis_url)
    yield redis
    await redis.aclose()


async def test_concurrent_callers_share_pipelines_and_get_their_own_answers(client):
    batcher = AutoPipeline(client)
    exchanges = CallCounter()
    exchanges.wrap(client.connection_pool, "get_connection")

    async def caller(i: int) -> list:
        return await batcher.execute(
            [lambda pipe, i=i: pipe.set(f"b:{i}", f"v{i}"), lambda pipe, i=i: pipe.get(f"b:{i}")]
        )

    answers = await asyncio.gather(*(caller(i) for i in range(200)))
    assert answers == [[True, f"v{i}".encode()] for i in range(200)]
    assert exchanges.count <= 4  # 200 callers, batches of at most 128: a handful of pipelines
    await batcher.drain()


async def test_an_error_answer_goes_to_its_caller_only(client):
    batcher = AutoPipeline(client)
    await client.set("b:text", "not a number")
    bad, good = await asyncio.gather(
        batcher.execute([lambda pipe: pipe.incr("b:text")]),
        batcher.execute([lambda pipe: pipe.incr("b:counter")]),
    )
    assert isinstance(bad[0], ResponseError)
    assert good == [1]


async def test_a_lost_connection_fails_every_caller_of_the_batch():
    dead = Redis(port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    batcher = AutoPipeline(dead)
    results = await asyncio.gather(
        *(batcher.execute([lambda pipe: pipe.get("x")]) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, RedisConnectionError) for r in results)
    await dead.aclose()


async def test_scripts_lost_by_the_server_are_reloaded(client):
    store = SendStore(client)
    assert (await store.claim(SendRef("rB", "id1"), request("t1"))).claimed
    await client.script_flush()
    again = await store.claim(SendRef("rB", "id2"), request("t2", key_index=True))
    assert again.claimed and again.key_owner is None
