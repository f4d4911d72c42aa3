"""The store clients sendguard makes: standalone, Sentinel or cluster, all failing fast."""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from proxy.config_values import SENTINEL_SCHEMES, parse_sentinel_url
from proxy.store.fastpack import use_hiredis_packing
from proxy.store.send_store import CLUSTER_NODE_CONNECTIONS, RedisClient

# Every store command is a short script or a key read: seconds are already an outage.
STORE_CONNECT_TIMEOUT_SECONDS = 1.0
STORE_TIMEOUT_SECONDS = 2.0


def store_client(
    url: str, *, cluster: bool = False, timeout: float | None = STORE_TIMEOUT_SECONDS
) -> RedisClient:
    """A store client that fails fast: a black-holed Redis must turn into a store error (and
    the outage policy) within seconds, never a request hanging on a socket. (The kill switch
    board's subscription idles on its socket, so it passes timeout=None.)"""
    connect = STORE_CONNECT_TIMEOUT_SECONDS
    if cluster:
        # Several seeds, comma-separated: any one that answers gives the whole topology, so
        # sendguard starts (and keeps probing) while some of them are down.
        first, *others = [seed.strip() for seed in url.split(",")]
        return RedisCluster.from_url(
            first,
            startup_nodes=[_cluster_node(seed) for seed in others],
            socket_connect_timeout=connect,
            socket_timeout=timeout,
            max_connections=CLUSTER_NODE_CONNECTIONS,
        )
    if url.lower().startswith(SENTINEL_SCHEMES):
        return _sentinel_client(url, connect=connect, timeout=timeout)
    # One immediate retry on a dropped connection: after a Redis restart every pooled connection
    # is dead once. Every script is safe to run twice (tests/store/test_scripts.py): a claim
    # that did run finds its own record and is answered in-flight, never sent twice.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    client = Redis.from_url(
        url, socket_connect_timeout=connect, socket_timeout=timeout, retry=retry
    )
    use_hiredis_packing(client.connection_pool)
    return client


def _sentinel_client(url: str, *, connect: float, timeout: float | None) -> Redis:
    """The master the sentinels name, re-asked on every new connection: after a failover the
    pool reconnects to the promoted replica (and a pub/sub subscription with it)."""
    target = parse_sentinel_url(url)
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        socket_connect_timeout=connect,
        socket_timeout=timeout,
        sentinel_kwargs={"socket_connect_timeout": connect, "socket_timeout": connect},
    )
    client: Redis = sentinel.master_for(
        target.master,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.tls,
        socket_connect_timeout=connect,
        socket_timeout=timeout,
        retry=retry,
    )
    use_hiredis_packing(client.connection_pool)
    return client


def _cluster_node(seed: str) -> ClusterNode:
    parts = urlsplit(seed)
    return ClusterNode(parts.hostname or "localhost", parts.port or 6379)
