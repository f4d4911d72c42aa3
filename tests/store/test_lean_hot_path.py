"""The guarded send's hot path runs on the lean client (proxy/store/lean_path.py) on a
standalone or embedded store, and on redis-py on a cluster, behind a sentinel and for claims
that WAIT for replicas. On the lean path: EVALSHA with EVAL on NOSCRIPT, one retry of a dropped
connection (none of a timed-out reply), and every failure a StoreError, like redis-py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from proxy.guard.dedup import RecordState, StoredResponse
from proxy.server.app import REDIS, RUNTIME, store_client
from proxy.store.lean import LeanClient
from proxy.store.lean_path import lean_client_like
from proxy.store.send_store import ClaimRequest, SendRef, SendStore, StoreError
from tests.faultproxy import FaultProxy, evalsha, script_sha
from tests.harness import SENDER, ProxyInstance, post_send
from tests.servers import ServerProcess

RESPONSE = StoredResponse(201, (("Content-Type", "application/json"),), b'{"sid": "SM1"}')
REF = SendRef("rTAG", "id1")
FORM = {"To": "+15558675310", "From": SENDER, "Body": "hot path"}


def request(token: str = "t1", **overrides: Any) -> ClaimRequest:
    args: dict[str, Any] = dict(
        token=token, payload_hash="p", lease_ms=60_000, ttl_ms=600_000, slide_ms=0,
        meta={"to": "+1"}, window_ms=(60_000,), keep_ms=3_600_000, scopes=("to",),
        key_index=False,
    )  # fmt: skip
    args.update(overrides)
    return ClaimRequest(**args)


# -- counting both clients' exchanges ----------------------------------------------------------


@dataclass
class Exchanges:
    lean: int = 0
    redis_py: int = 0


def count_exchanges(store: SendStore) -> Exchanges:
    """Lean: one `execute_batch`, one exchange; redis-py: one connection taken, one exchange."""
    counts = Exchanges()
    pool = getattr(store.redis, "connection_pool", None)
    if pool is not None:
        get_connection = pool.get_connection

        async def counting_get_connection(*args: Any, **kwargs: Any) -> Any:
            counts.redis_py += 1
            return await get_connection(*args, **kwargs)

        pool.get_connection = counting_get_connection
    if store.lean is not None:
        execute_batch = store.lean.client.execute_batch

        async def counting_execute_batch(*args: Any, **kwargs: Any) -> Any:
            counts.lean += 1
            return await execute_batch(*args, **kwargs)

        store.lean.client.execute_batch = counting_execute_batch  # type: ignore[method-assign]
    return counts


async def send(http: Any, proxy: ProxyInstance, decision: str, key: str | None = None) -> None:
    _, headers, _ = await post_send(http, proxy.url, FORM, key=key)
    assert headers["X-Sendguard-Decision"] == decision


async def assert_hot_path_on_lean(proxy: ProxyInstance, http: Any) -> SendStore:
    store: SendStore = proxy.app[RUNTIME].store
    assert store.lean is not None
    warm_up = {**FORM, "Body": "warm-up"}  # the server learns the scripts (NOSCRIPT, EVAL)
    await post_send(http, proxy.url, warm_up, key="warm-up")
    journal = proxy.app[RUNTIME].journal
    await journal.flush(5)  # (a fresh send's complete is written after its answer)
    counts = count_exchanges(store)
    await send(http, proxy, "forwarded", key="k")  # claim (with the key's index), complete
    await journal.flush(5)
    assert (counts.lean, counts.redis_py) == (2, 0)
    await send(http, proxy, "replayed", key="k")
    assert (counts.lean, counts.redis_py) == (3, 0)
    return store


# -- which client runs the hot path, by kind of store ------------------------------------------


async def test_a_standalone_store_runs_the_hot_path_on_the_lean_client(
    proxies, fake_twilio, shared_redis_url, http
):
    proxy = await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url)
    store = await assert_hot_path_on_lean(proxy, http)
    assert store.lean is not None
    same_server = proxy.app[REDIS].connection_pool.connection_kwargs
    assert (store.lean.client.host, store.lean.client.port) == (
        same_server["host"],
        same_server["port"],
    )


async def test_an_embedded_store_runs_the_hot_path_on_the_lean_client(proxies, fake_twilio, http):
    proxy = await proxies.start(upstream=fake_twilio.url)
    store = await assert_hot_path_on_lean(proxy, http)
    assert store.lean is not None
    assert store.lean.client.unix_socket_path == proxy.store_url.removeprefix("unix://")


async def test_a_cluster_keeps_the_hot_path_on_redis_py(
    proxies, fake_twilio, cluster_server: ServerProcess, http
):
    async with RedisCluster.from_url(cluster_server.url) as direct:
        await direct.flushall()
    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=cluster_server.url, redis_cluster=True
    )
    store: SendStore = proxy.app[RUNTIME].store
    assert isinstance(store.redis, RedisCluster) and store.lean is None
    await send(http, proxy, "forwarded", key="kc")
    await send(http, proxy, "replayed", key="kc")


def test_sentinel_and_cluster_clients_get_no_lean_client():
    sentinel = Sentinel([("127.0.0.1", 1)])  # type: ignore[no-untyped-call]
    assert lean_client_like(sentinel.master_for("mymaster")) is None
    assert lean_client_like(RedisCluster(host="127.0.0.1", port=1)) is None


def test_the_lean_client_reaches_what_the_redis_py_client_reaches():
    lean = lean_client_like(store_client("redis://:secret@127.0.0.1:6390/3"))
    assert lean is not None
    assert (lean.host, lean.port, lean.db, lean.password) == ("127.0.0.1", 6390, 3, "secret")
    assert (lean.connect_timeout, lean.reply_timeout) == (1.0, 2.0)  # the store's timeouts
    tls = lean_client_like(store_client("rediss://127.0.0.1:6390?ssl_cert_reqs=none"))
    assert tls is not None and tls.ssl is not None
    unix = lean_client_like(store_client("unix:///tmp/x/valkey.sock"))
    assert unix is not None and unix.unix_socket_path == "/tmp/x/valkey.sock"


# -- the SendStore on the lean path ------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as process:
        yield process


@pytest.fixture
async def link(server: ServerProcess) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        yield proxy


@pytest.fixture
async def lean_store(link: FaultProxy) -> AsyncIterator[SendStore]:
    """A SendStore as sendguard builds it for a standalone store, through the fault proxy."""
    client = store_client(link.url)
    store = SendStore(client, lean_client_like(client))
    yield store
    await store.aclose()
    await client.aclose()


async def test_every_hot_call_answers_as_on_redis_py(server: ServerProcess, lean_store):
    """The same calls on the lean path and on redis-py's (another record) answer alike."""
    async with Redis(port=server.port) as plain:
        on_redis_py = SendStore(plain)
        for store, ref in ((lean_store, REF), (on_redis_py, SendRef("rTAG2", "id9"))):
            first = await store.claim(ref, request(key_index=True, key_lookup_id=ref.tag))
            assert first.claimed and first.key_owner is None and first.recipient is not None
            again = await store.claim(ref, request("t2", key_index=True, key_lookup_id=ref.tag))
            assert not again.claimed and again.key_owner == f"{ref.tag} p"
            assert again.record is not None and again.record.state is RecordState.IN_FLIGHT
            done = await store.complete(
                ref, token="t1", response=RESPONSE, message_sid="SM1", ttl_ms=600_000,
                content="to",
            )  # fmt: skip
            assert done == 1
            record = await store.get(ref)
            assert record is not None and record.state is RecordState.DONE
            assert record.response == RESPONSE
            assert await store.get(SendRef(ref.tag, "nothing-here")) is None
            other = SendRef(ref.tag, "id2")
            assert (await store.claim(other, request("t3"))).claimed
            assert await store.release(other, token="t3") is True
            assert (await store.claim(other, request("t4"))).claimed
            marked = await store.mark_unknown(
                other, token="t4", reason="test", ttl_ms=600_000, require_expired=False
            )
            assert marked == 1
            slots = [(60_000, 1)]
            assert await store.admit_account("AC1" + ref.tag, slots, [5], enforce=True) == (1,)
            await store.unadmit_account("AC1" + ref.tag, slots)
            assert await store.admit_account("AC1" + ref.tag, slots, [5], enforce=True) == (1,)


async def test_noscript_runs_the_script_as_eval_then_evalsha_again(server, lean_store):
    assert lean_store.lean is not None
    counts = count_exchanges(lean_store)
    assert (await lean_store.claim(REF, request())).claimed  # first use: NOSCRIPT, then EVAL
    assert counts.lean == 2
    assert not (await lean_store.claim(REF, request("t2"))).claimed  # known now: EVALSHA
    assert counts.lean == 3
    with server.client() as plain:
        plain.script_flush()  # a restarted server forgets its scripts
    assert not (await lean_store.claim(REF, request("t3"))).claimed
    assert counts.lean == 5 and counts.redis_py == 0


async def test_a_dropped_connection_is_retried_once(link: FaultProxy, lean_store):
    assert lean_store.lean is not None
    await lean_store.claim(SendRef("rTAG", "warm"), request())  # scripts loaded, connected
    link.drop_after_reply(evalsha(script_sha("CLAIM")), times=1)
    result = await lean_store.claim(REF, request())
    # The claim ran, its answer was lost; the retry finds its own claim (compare-and-set).
    assert result.claimed or (result.record is not None and result.record.token == "t1")
    assert lean_store.lean.client.connects == 2


async def test_two_dropped_connections_are_a_store_error(link: FaultProxy, lean_store):
    await lean_store.claim(SendRef("rTAG", "warm"), request())
    link.drop_after_reply(evalsha(script_sha("COMPLETE")), times=2)
    with pytest.raises(StoreError, match="LeanConnectionError"):
        await lean_store.complete(
            REF, token="t1", response=RESPONSE, message_sid="", ttl_ms=1000, content="to"
        )


async def test_a_timed_out_reply_is_a_store_error_not_retried(link: FaultProxy):
    client = store_client(link.url, timeout=0.3)
    store = SendStore(client, lean_client_like(client))
    try:
        await store.claim(SendRef("rTAG", "warm"), request())
        counts = count_exchanges(store)
        link.stall(1.0)
        with pytest.raises(StoreError, match="LeanTimeoutError"):
            await store.claim(REF, request())
        assert counts.lean == 1
        link.unstall()
    finally:
        await store.aclose()
        await client.aclose()


async def test_an_error_reply_is_a_store_error(server: ServerProcess, lean_store):
    with server.client() as plain:
        plain.set(REF.record, "not a hash")
    with pytest.raises(StoreError, match="WRONGTYPE"):
        await lean_store.get(REF)


async def test_a_claim_that_waits_for_replicas_stays_on_redis_py(lean_store):
    counts = count_exchanges(lean_store)
    result = await lean_store.claim(REF, request(min_replicas=1, replica_wait_ms=10))
    assert result.claimed and result.replicas == 0  # (no replicas here)
    assert counts.lean == 0 and counts.redis_py >= 1


async def test_a_closed_store_refuses_with_a_store_error(lean_store):
    await lean_store.aclose()
    with pytest.raises(StoreError):
        await lean_store.claim(REF, request())


def test_lean_client_is_a_lean_client():
    assert isinstance(lean_client_like(Redis()), LeanClient)
