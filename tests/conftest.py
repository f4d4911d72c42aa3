"""Shared fixtures: real store servers (never a Python imitation of Redis)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import settings
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from proxy.store.embedded import EmbeddedStore
from tests.servers import ServerProcess

# No per-example deadline: on a loaded 2-core CI machine a pure function's first example can
# take longer than hypothesis' 200 ms default, and that is a timing flake, not a finding. Tests
# that bound their time do it themselves (pytest-timeout, asyncio.timeout).
settings.register_profile("sendguard", deadline=None)
settings.load_profile("sendguard")


@pytest.fixture(scope="session")
def shared_server() -> Iterator[ServerProcess | None]:
    """One shared valkey-server for the session (flushed per test), like a fleet's Redis."""
    if os.environ.get("SENDGUARD_TEST_REDIS_URL"):
        yield None
        return
    server = ServerProcess()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def shared_redis_url(shared_server: ServerProcess | None) -> AsyncIterator[str]:
    url = os.environ.get("SENDGUARD_TEST_REDIS_URL") or (shared_server and shared_server.url)
    assert url
    client = Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    yield url


@pytest.fixture
async def embedded_store() -> AsyncIterator[EmbeddedStore]:
    store = EmbeddedStore()
    await store.start()
    yield store
    await store.stop()


@pytest.fixture(scope="session")
def cluster_server() -> Iterator[ServerProcess]:
    server = ServerProcess(cluster=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "shared", "cluster"])
async def redis_client(
    request: pytest.FixtureRequest, shared_redis_url: str, cluster_server: ServerProcess
) -> AsyncIterator[Redis | RedisCluster]:
    """The same store contract against every kind of server sendguard supports."""
    client: Redis | RedisCluster
    embedded: EmbeddedStore | None = None
    if request.param == "embedded":
        embedded = EmbeddedStore()
        client = Redis.from_url(await embedded.start())
    elif request.param == "shared":
        client = Redis.from_url(shared_redis_url)
    else:
        client = RedisCluster.from_url(cluster_server.url)
        await client.flushall()
    yield client
    await client.aclose()
    if embedded is not None:
        await embedded.stop()


@pytest.fixture
async def fake_twilio():
    """The counting fake Twilio (sendguard's own sandbox on a real port)."""
    from proxy.sandbox import start_sandbox

    runner, url, state = await start_sandbox()
    state.url = url  # type: ignore[attr-defined]
    yield state
    await runner.cleanup()


@pytest.fixture
async def proxies():
    from tests.harness import ProxyFactory

    factory = ProxyFactory()
    yield factory
    await factory.stop_all()


@pytest.fixture
async def http():
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def burst_http():
    """A client session without aiohttp's default cap of 100 connections: a real burst."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


@pytest.fixture(params=["embedded", "shared"])
def store_mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def two_proxies(store_mode, proxies, fake_twilio, shared_redis_url):
    """Two sendguard instances sharing one store: the embedded one of the first instance, or a
    shared server. Same settings otherwise; both point at the fake Twilio."""
    common = {"upstream": fake_twilio.url, "upstream_read_timeout": 2.0, "inflight_wait": 3.0}
    first, second = await proxies.start_pair(store_mode, shared_redis_url, **common)
    return first, second
