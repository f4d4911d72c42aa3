"""Kill switches against real servers (embedded, shared, one-node Redis Cluster): the scripts
directly, then two boards on two clients of one store, as two sendguard instances would be.

Propagation is measured, not slept for: an engage on one instance must reach the other's
local snapshot within 1 s (SPEC §3.3), by pub/sub alone and by the periodic resync alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from structlog.testing import capture_logs

from proxy.killswitch import (
    KillSwitch,
    KillSwitchBoard,
    KillSwitchStore,
    Scope,
    ScopeKind,
    SendAttributes,
    audit,
    parse_env_switches,
)
from proxy.killswitch.store import Subscription
from proxy.store import keys
from proxy.store.send_store import StoreError
from tests.identities import ACCOUNT as AC
from tests.servers import ServerProcess, free_port

AC2 = "AC" + "f" * 32
MG = "MG" + "abcdef0123456789" * 2
TO = "+447700900123"
SENDER = "+14155550100"
BUDGET = 1.0  # SPEC §3.3: on every instance within 1 s

RedisClient = Redis | RedisCluster


def send(account: str = AC, sender: str = SENDER, to: str = TO) -> SendAttributes:
    return SendAttributes.of(account_sid=account, sender=sender, to=to)


def switch(scope: str, *, ttl: float | None = None, reason: str = "incident 42") -> KillSwitch:
    return KillSwitch.engage(
        scope, reason=reason, author="ops@example.com", now=time.time(), ttl=ttl
    )


def twin(client: RedisClient) -> RedisClient:
    """A second, independent client of the same server: another sendguard instance."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()
        return RedisCluster(host=node.host, port=node.port)
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return Redis(unix_socket_path=kwargs["path"])
    return Redis(host=kwargs["host"], port=kwargs["port"], db=kwargs.get("db", 0))


@pytest.fixture
async def second_client(redis_client: RedisClient) -> AsyncIterator[RedisClient]:
    client = twin(redis_client)
    yield client
    await client.aclose()


@contextlib.asynccontextmanager
async def running(board: KillSwitchBoard) -> AsyncIterator[KillSwitchBoard]:
    before = asyncio.all_tasks()
    await board.start()
    try:
        yield board
    finally:
        await board.stop()
        leaked = {t for t in asyncio.all_tasks() - before if not t.done()}
        if leaked:
            # A command redis-py was writing when the board stopped finishes on its own a
            # moment later; a task of the board's that outlives stop() would not.
            await asyncio.wait(leaked, timeout=1.0)
            leaked = {t for t in leaked if not t.done()}
        assert not leaked, f"tasks left behind: {leaked}"


async def wait_for(predicate: Callable[[], bool], limit: float) -> float:
    """Seconds until `predicate()` holds, polling every 2 ms; fails past `limit`."""
    start = time.monotonic()
    while not predicate():
        elapsed = time.monotonic() - start
        assert elapsed < limit, f"not within {limit} s"
        await asyncio.sleep(0.002)
    return time.monotonic() - start


# -- the scripts, directly --------------------------------------------------------------------


async def test_engage_replaces_and_reports_what_it_replaced(redis_client):
    store = KillSwitchStore(redis_client)
    first, second = switch("global", reason="first"), switch("global", reason="second")
    assert (await store.engage(first, now=time.time())).replaced is None
    assert (await store.engage(second, now=time.time())).replaced == first
    assert (await store.engage(second, now=time.time())).replaced == second  # twice: same state
    assert (await store.list()).live == (second,)
    raw = await redis_client.hgetall(keys.kill_switches())
    assert raw == {b"global": second.to_json().encode()}


async def test_release_removes_and_reports_not_engaged(redis_client):
    store = KillSwitchStore(redis_client)
    engaged = switch("prefix:+44")
    await store.engage(engaged, now=time.time())
    await store.engage(switch("global"), now=time.time())
    released = await store.release(Scope.parse("prefix:+44"), now=time.time())
    assert released.was_engaged and released.switch == engaged
    again = await store.release(Scope.parse("prefix:+44"), now=time.time())
    assert not again.was_engaged and again.switch is None and again.scope == engaged.scope
    assert [str(s.scope) for s in (await store.list()).live] == ["global"]


async def test_list_deletes_expired_entries_once(redis_client):
    store = KillSwitchStore(redis_client)
    # The server's clock decides expiry, so the short switch must outlive one round trip on a
    # loaded CI machine (0.2 s did not): 1 s, engaged last, then a sleep until it has passed.
    await store.engage(switch("global"), now=time.time())
    short = switch("recipient:" + TO, ttl=1.0)
    await store.engage(short, now=time.time())
    assert len((await store.list()).live) == 2
    assert short.expires_at is not None
    await asyncio.sleep(max(0.0, short.expires_at - time.time()) + 0.05)
    first, second = await store.list(), await store.list()
    assert first.expired == (short,) and second.expired == ()
    assert [str(s.scope) for s in first.live] == ["global"] == [str(s.scope) for s in second.live]
    assert await redis_client.hkeys(keys.kill_switches()) == [b"global"]
    # An expired switch is not "engaged" any more: releasing it reports so.
    await store.engage(short, now=short.created_at)
    assert not (await store.release(short.scope, now=time.time())).was_engaged


async def test_list_skips_malformed_entries(redis_client):
    store = KillSwitchStore(redis_client)
    await redis_client.hset(keys.kill_switches(), "global", "not json")
    await redis_client.hset(keys.kill_switches(), "prefix:+1", json.dumps({"scope": "prefix:+1"}))
    await store.engage(switch("prefix:+44"), now=time.time())
    listing = await store.list()
    assert [str(s.scope) for s in listing.live] == ["prefix:+44"] and listing.malformed == 2


async def test_engage_and_release_publish_without_the_scope(redis_client, second_client):
    store = KillSwitchStore(redis_client)
    listener = KillSwitchStore(second_client)
    async with listener.subscription() as changes:
        await store.engage(switch("recipient:" + TO), now=time.time())
        await store.release(Scope.parse("recipient:" + TO), now=time.time())
        await store.release(Scope.parse("recipient:" + TO), now=time.time())  # not engaged
        # Two changes, then nothing (the no-op release published nothing); the subscribe
        # confirmation and PONGs are not changes.
        assert await changes_heard(changes, 0.5) == 2
    raw = await _raw_messages(second_client, store)
    assert raw == [b"engaged recipient", b"released recipient"]


async def changes_heard(changes: Subscription, window: float) -> int:
    count, deadline = 0, time.monotonic() + window
    while (left := deadline - time.monotonic()) > 0:
        count += await changes.next_change(min(left, 0.1))
    return count


async def _raw_messages(client: RedisClient, store: KillSwitchStore) -> list[bytes]:
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(keys.kill_switch_channel())
        await store.engage(switch("recipient:" + TO), now=time.time())
        await store.release(Scope.parse("recipient:" + TO), now=time.time())
        found: list[bytes] = []
        deadline = time.monotonic() + 2
        while len(found) < 2 and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message and message["type"] in ("message", b"message"):
                found.append(message["data"])
        return found
    finally:
        await pubsub.aclose()


# -- two instances on one store ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        pytest.param({"resync_interval": 60.0}, id="push-only"),
        pytest.param({"push": False}, id="resync-only"),
        pytest.param({}, id="default"),
    ],
)
async def test_a_switch_reaches_the_other_instance_within_a_second(
    redis_client, second_client, path
):
    one = KillSwitchBoard(KillSwitchStore(redis_client))
    two = KillSwitchBoard(KillSwitchStore(second_client), **path)
    async with running(one), running(two):
        if path.get("push", True):
            await wait_for(lambda: two.state(time.time()).pushed, 5)
        assert two.check(send(), time.time()) is None
        start = time.monotonic()
        await one.engage(switch("global"))
        assert one.check(send(), time.time()) is not None  # the instance that took it: at once
        await wait_for(lambda: two.check(send(), time.time()) is not None, BUDGET)
        engaged_after = time.monotonic() - start
        start = time.monotonic()
        await one.release(Scope.parse("global"), author="ops@example.com")
        assert one.check(send(), time.time()) is None
        await wait_for(lambda: two.check(send(), time.time()) is None, BUDGET)
        released_after = time.monotonic() - start
    assert engaged_after < BUDGET and released_after < BUDGET


async def test_push_alone_is_fast(redis_client, second_client):
    """Pub/sub (no resync for a minute) delivers in milliseconds, on a cluster too."""
    one = KillSwitchBoard(KillSwitchStore(redis_client))
    two = KillSwitchBoard(KillSwitchStore(second_client), resync_interval=60.0)
    async with running(one), running(two):
        await wait_for(lambda: two.state(time.time()).pushed, 5)
        latencies = []
        for i in range(5):
            start = time.monotonic()
            await one.engage(switch(f"prefix:+4{i}"))
            await wait_for(
                lambda i=i: two.check(send(to=f"+4{i}1234567"), time.time()) is not None, BUDGET
            )
            latencies.append(time.monotonic() - start)
    assert max(latencies) < 0.25, latencies


async def test_an_expiring_switch_releases_itself(redis_client, second_client):
    one = KillSwitchBoard(KillSwitchStore(redis_client))
    two = KillSwitchBoard(KillSwitchStore(second_client))
    async with running(one), running(two):
        with capture_logs() as logs:
            # Long enough for the other instance to see it first on a loaded CI machine.
            await one.engage(switch("global", ttl=1.2))
            await wait_for(lambda: two.check(send(), time.time()) is not None, BUDGET)
            await wait_for(lambda: two.check(send(), time.time()) is None, 1.5)
            assert one.check(send(), time.time()) is None
            # The store forgets it too (lazily, on the next read), audited by one instance only.
            await wait_for(lambda: not one.switches and not two.switches, 2.0)
    assert await redis_client.hlen(keys.kill_switches()) == 0
    assert [e["event"] for e in logs if e["event"] == audit.KILL_SWITCH_EXPIRED] == [
        audit.KILL_SWITCH_EXPIRED
    ]


async def test_a_break_glass_sender_passes_a_global_switch(redis_client, second_client):
    one = KillSwitchBoard(KillSwitchStore(redis_client))
    two = KillSwitchBoard(KillSwitchStore(second_client), break_glass_senders=[MG])
    async with running(one), running(two):
        await one.engage(switch("global"))
        await one.engage(switch(f"sender:{MG}"))
        await wait_for(lambda: two.check(send(), time.time()) is not None, BUDGET)
        assert two.check(send(sender=MG), time.time()) is None
        assert one.check(send(sender=MG), time.time()) is not None  # not on `one`'s allowlist


SENDS = {
    "plain": send(),
    "other-account": send(account=AC2),
    "service": send(sender=MG),
    "whatsapp-sender": send(sender="whatsapp:" + SENDER),
    "other-recipient": send(to="+15550100000"),
    "recipient-spaced": send(to="+44 7700 900123"),
}


@pytest.mark.parametrize(
    ("scope", "blocked"),
    [
        ("global", set(SENDS)),
        (f"account:{AC}", set(SENDS) - {"other-account"}),
        (f"sender:{SENDER}", set(SENDS) - {"service"}),
        (f"sender:{MG}", {"service"}),
        (f"recipient:{TO}", set(SENDS) - {"other-recipient"}),
        ("prefix:+1", {"other-recipient"}),
        ("prefix:+4477", set(SENDS) - {"other-recipient"}),
    ],
)
async def test_each_scope_blocks_only_its_scope(redis_client, second_client, scope, blocked):
    one = KillSwitchBoard(KillSwitchStore(redis_client))
    two = KillSwitchBoard(KillSwitchStore(second_client))
    async with running(one), running(two):
        await one.engage(switch(scope))
        await wait_for(lambda: bool(two.switches), BUDGET)
        now = time.time()
        assert {name for name, attrs in SENDS.items() if two.check(attrs, now)} == blocked
        state = two.state(now)
        assert state.engaged[Scope.parse(scope).kind] == 1 and sum(state.engaged.values()) == 1
        assert state.synced and state.last_sync_age is not None and state.last_sync_age < 1


# -- configuration, outages, lifecycle --------------------------------------------------------


async def test_env_switches_work_with_the_store_unreachable():
    # No client-side retries: each attempt fails at once (a default `Redis(host=…)` retries
    # connects ten times with backoff, ~4 s per attempt, which only slows the test down).
    dead = Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    board = KillSwitchBoard(
        KillSwitchStore(dead),
        config_switches=parse_env_switches(f"global,account:{AC}", time.time()),
        break_glass_senders=[MG],
        sync_timeout=0.5,
    )
    try:
        with capture_logs() as logs:
            started = time.monotonic()
            async with running(board):
                assert time.monotonic() - started < 1.0
                blocked = board.check(send(), time.time())
                assert blocked is not None and blocked.from_config
                assert board.check(send(sender=MG), time.time()) is None
                await asyncio.sleep(1.2)  # several resyncs and reconnects fail meanwhile
                assert all(not t.done() for t in board._tasks)  # still running
                state = board.state(time.time())
                assert not state.synced and not state.pushed and state.last_sync_age is None
                assert state.engaged[ScopeKind.GLOBAL] == 1
                assert state.engaged[ScopeKind.ACCOUNT] == 1
                assert board.check(send(), time.time()) is not None
                with pytest.raises(StoreError):
                    await board.engage(switch("prefix:+44"))
                assert board.configured(Scope.parse("global"))
        events = [e["event"] for e in logs]
        assert events.count(audit.KILL_SWITCH_SYNC_FAILED) == 1  # once per outage, not per try
        assert events.count(audit.KILL_SWITCH_PUSH_LOST) == 1
    finally:
        await dead.aclose()


async def test_a_board_without_a_store_serves_config_switches():
    board = KillSwitchBoard(None, config_switches=parse_env_switches("prefix:+44", time.time()))
    async with running(board):
        assert board.check(send(), time.time()) is not None
        assert board.check(send(to="+15550100000"), time.time()) is None
        assert not await board.refresh()


@pytest.fixture
async def own_server() -> AsyncIterator[ServerProcess]:
    """A server this test may stop and restart (same port)."""
    server = ServerProcess()
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


async def engage_directly(url: str, engaged: KillSwitch) -> None:
    """Another instance's engage, on a fresh client (redis-py 8.1's `from_url` clients do not
    retry: a pooled connection that outlived a server restart fails its next command once)."""
    client = Redis.from_url(url)
    try:
        await KillSwitchStore(client).engage(engaged, now=time.time())
    finally:
        await client.aclose()


async def test_push_and_resync_recover_after_a_redis_restart(own_server):
    reader_client = Redis.from_url(own_server.url, socket_connect_timeout=0.5)
    # A minute between resyncs: only a re-established subscription can deliver in time.
    board = KillSwitchBoard(KillSwitchStore(reader_client), resync_interval=60.0, sync_timeout=0.5)
    try:
        with capture_logs() as logs:
            async with running(board):
                await wait_for(lambda: board.state(time.time()).pushed, 5)
                await engage_directly(own_server.url, switch("global"))
                await wait_for(lambda: board.check(send(), time.time()) is not None, BUDGET)
                await asyncio.to_thread(own_server.stop)
                await wait_for(lambda: not board.state(time.time()).pushed, 10)
                # The store is down: the last known switch still holds.
                assert board.check(send(), time.time()) is not None
                await asyncio.to_thread(own_server.start)  # empty: nothing persisted
                await wait_for(lambda: board.state(time.time()).pushed, 10)
                # Resubscribing re-reads the store: the (now empty) store lifts the switch.
                await wait_for(lambda: board.check(send(), time.time()) is None, BUDGET)
                assert board.state(time.time()).synced
                await engage_directly(own_server.url, switch("prefix:+44"))
                await wait_for(lambda: board.check(send(), time.time()) is not None, BUDGET)
        events = [e["event"] for e in logs]
        assert events.count(audit.KILL_SWITCH_PUSH_LOST) == 1
        assert events.count(audit.KILL_SWITCH_PUSH_RESTORED) == 1
    finally:
        await reader_client.aclose()


async def test_a_silent_subscription_is_detected_and_replaced(redis_client):
    """A PING answers within the ping interval; an unanswered one means a dead connection."""
    store = KillSwitchStore(redis_client)
    async with store.subscription() as changes:
        assert await changes.next_change(1.0) is False  # the subscribe confirmation
        for _ in range(3):
            assert await changes.next_change(0.05) is False  # silence: sends a PING
            assert await changes.next_change(1.0) is False  # the PONG: alive, not a change
    dead = Subscription(_NeverAnswers())
    assert await dead.next_change(0.01) is False
    with pytest.raises(StoreError, match="PING unanswered"):
        await dead.next_change(0.01)


class _NeverAnswers:
    async def get_message(self, **_: object) -> None:
        return None

    async def ping(self) -> None:
        return None


async def test_board_lifecycle(redis_client):
    board = KillSwitchBoard(KillSwitchStore(redis_client))
    async with running(board):
        with pytest.raises(RuntimeError, match="already running"):
            await board.start()
    await board.stop()  # stopping twice is harmless
    async with running(board):  # and it can start again
        await board.engage(switch("global"))
        assert board.check(send(), time.time()) is not None
    with pytest.raises(ValueError):
        KillSwitchBoard(None, resync_interval=0)
    with pytest.raises(ValueError, match="break-glass"):
        KillSwitchBoard(None, break_glass_senders=["whatsapp:+1"])


async def test_engage_and_release_are_audited_without_phone_numbers(redis_client):
    board = KillSwitchBoard(KillSwitchStore(redis_client))
    async with running(board):
        with capture_logs() as logs:
            await board.engage(switch(f"recipient:{TO}", ttl=600, reason="loop to one number"))
            await board.engage(switch(f"recipient:{TO}", reason="no expiry after all"))
            released = await board.release(
                Scope.parse(f"recipient:{TO}"), author="oncall", reason="fixed"
            )
            missing = await board.release(Scope.parse("global"), author="oncall")
    assert released.was_engaged and not missing.was_engaged
    engaged = [e for e in logs if e["event"] == audit.KILL_SWITCH_ENGAGED]
    assert [e["log_level"] for e in engaged] == ["warning", "warning"]
    assert engaged[0]["scope"] == "recipient:+447*******23"
    assert engaged[0]["scope_kind"] == "recipient"
    assert engaged[0]["reason"] == "loop to one number"
    assert engaged[0]["author"] == "ops@example.com"
    assert engaged[0]["expires_at"].endswith("+00:00") and engaged[1]["expires_at"] is None
    assert engaged[1]["replaced_reason"] == "loop to one number"
    (gone,) = [e for e in logs if e["event"] == audit.KILL_SWITCH_RELEASED]
    assert (gone["author"], gone["reason"], gone["engaged_by"]) == (
        "oncall",
        "fixed",
        "ops@example.com",
    )
    assert gone["engaged_reason"] == "no expiry after all"
    assert TO not in str(logs) and TO[1:] not in str(logs)
