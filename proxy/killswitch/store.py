"""The kill switch store: one Redis hash, three scripts and a change channel. Nothing else.

Switches live in one hash (`keys.kill_switches()`, field = canonical scope text, value = the
switch as JSON) on one cluster slot. Engage and release are one script each: the hash change and
its PUBLISH are atomic, so no subscriber can hear of a change it cannot yet read. Expired
entries are deleted lazily by the LIST script (by the server's clock); every instance also
ignores them itself (by its own clock), so deletion is housekeeping, never the release.

Pub/sub on Redis Cluster: redis-py's asyncio `RedisCluster` has `pubsub()` only since 8.0
(before that, only the sync client had it). Classic PUBLISH is broadcast over the cluster bus to
every node, so a subscription on any one node hears every change; `ClusterPubSub` picks the node
owning the channel's slot, i.e. the switches' own node. On redis-py < 8 with a cluster,
`subscription()` raises `PubSubUnavailable` and instances rely on the periodic resync alone
(which alone already meets the 1 s bound; see `board.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster

from proxy.killswitch import scripts
from proxy.killswitch.model import KillSwitch
from proxy.killswitch.scopes import Scope
from proxy.store import keys
from proxy.store.send_store import RedisClient, StoreError, translate_store_errors


class PubSubUnavailable(StoreError):
    """This client cannot subscribe (asyncio RedisCluster before redis-py 8)."""


@dataclass(frozen=True)
class Engaged:
    switch: KillSwitch
    replaced: KillSwitch | None  # the switch of the same scope it overwrote, if one was active


@dataclass(frozen=True)
class Released:
    scope: Scope
    switch: KillSwitch | None  # None: the scope was not engaged (or had already expired)

    @property
    def was_engaged(self) -> bool:
        return self.switch is not None


@dataclass(frozen=True)
class Listing:
    live: tuple[KillSwitch, ...]  # as stored; a switch may expire by the reader's clock meanwhile
    expired: tuple[KillSwitch, ...]  # removed by this read: exactly one reader sees each
    malformed: int  # entries that are not a kill switch (skipped)


def _decode(value: bytes | None) -> KillSwitch | None:
    if value is None:
        return None
    try:
        return KillSwitch.from_json(value)
    except ValueError:
        return None


class Subscription:
    """A live subscription to the change channel."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub
        self._ping_sent = False

    async def next_change(self, idle: float) -> bool:
        """Wait up to `idle` seconds for one message: True if it announces a change, False for
        anything else (subscribe confirmation, PONG) or silence. Silence sends a PING; a second
        silent period with that PING unanswered means the connection is dead (a half-open TCP
        connection never raises by itself) and raises StoreError."""
        async with translate_store_errors():
            # Not ignore_subscribe_messages: it also returns None, which would read as silence.
            message = await self._pubsub.get_message(timeout=idle)
            if message is None:
                if self._ping_sent:
                    raise StoreError("subscription silent: PING unanswered")
                await self._pubsub.ping()
                self._ping_sent = True
                return False
        self._ping_sent = False
        return message.get("type") in ("message", b"message")


class KillSwitchStore:
    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._engage = redis.register_script(scripts.ENGAGE)
        self._release = redis.register_script(scripts.RELEASE)
        self._list = redis.register_script(scripts.LIST)

    async def engage(self, switch: KillSwitch, *, now: float) -> Engaged:
        """Store `switch`, replacing any switch of the same scope, and notify every instance."""
        args = [keys.kill_switch_channel(), str(switch.scope), switch.to_json(), switch.scope.kind]
        async with translate_store_errors():
            previous = await self._engage(keys=[keys.kill_switches()], args=args)
        replaced = _decode(cast(bytes | None, previous))
        return Engaged(switch, replaced if replaced and replaced.active(now) else None)

    async def release(self, scope: Scope, *, now: float) -> Released:
        """Remove the switch of `scope` and notify; `switch` is None if it was not engaged."""
        args = [keys.kill_switch_channel(), str(scope), scope.kind]
        async with translate_store_errors():
            previous = await self._release(keys=[keys.kill_switches()], args=args)
        removed = _decode(cast(bytes | None, previous))
        return Released(scope, removed if removed and removed.active(now) else None)

    async def list(self) -> Listing:
        """Every stored switch (one round trip), deleting those past expiry on the server."""
        async with translate_store_errors():
            reply = cast(list[list[bytes]], await self._list(keys=[keys.kill_switches()]))
        live_raw, expired_raw = reply
        live = [_decode(value) for value in live_raw]
        expired = [_decode(value) for value in expired_raw]
        return Listing(
            live=tuple(switch for switch in live if switch is not None),
            expired=tuple(switch for switch in expired if switch is not None),
            malformed=sum(switch is None for switch in (*live, *expired)),
        )

    @asynccontextmanager
    async def subscription(self) -> AsyncIterator[Subscription]:
        """Subscribe to the change channel; the connection is closed on exit, whatever happens."""
        make_pubsub = getattr(self.redis, "pubsub", None)
        if make_pubsub is None:
            raise PubSubUnavailable(
                f"{type(self.redis).__name__} has no pubsub() in this redis-py (cluster pub/sub "
                f"needs redis-py >= 8): relying on the periodic resync"
            )
        async with translate_store_errors():
            if isinstance(self.redis, RedisCluster):
                # ClusterPubSub routes by the slot map but never loads it itself: on a client
                # that has not run a command yet, SUBSCRIBE fails with a KeyError (redis-py 8.1).
                await self.redis.initialize()
        pubsub = make_pubsub()
        try:
            async with translate_store_errors():
                await pubsub.subscribe(keys.kill_switch_channel())
            yield Subscription(pubsub)
        finally:
            with suppress(Exception):
                await pubsub.aclose()
