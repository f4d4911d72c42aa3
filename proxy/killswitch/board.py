"""The kill switch board: the hot path's local snapshot, and the admin path's one entry point.

`check()` reads only local memory. The snapshot is the configured switches (always there, even
with the store down) plus the stored ones, kept fresh by two tasks:

- push: a subscription to the change channel; every message wakes the syncer at once
  (typically a few milliseconds from engage to every instance);
- resync: the syncer also re-reads the hash every `resync_interval` (default 0.5 s, one
  LIST script round trip), so a lost message, a dropped subscription or a cluster without
  pub/sub still costs at most `resync_interval` + one round trip: within the 1 s of
  docs/contract.md#kill-switch.

One syncer task does every read, so reads never race each other; an admin change is applied
under the same lock, so the instance that took the change sees it before answering.
A failed read keeps the last known switches (a store outage never lifts a switch; expiry is
still honoured by the local clock) and is logged once per outage, not once per attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType

from proxy.guard.facts import SendFacts
from proxy.killswitch import audit
from proxy.killswitch.model import (
    KillSwitch,
    SendAttributes,
    count_by_kind,
    match,
    parse_break_glass,
)
from proxy.killswitch.scopes import Scope, ScopeKind
from proxy.killswitch.store import (
    Engaged,
    KillSwitchStore,
    PubSubUnavailable,
    Released,
)
from proxy.logs import get_logger
from proxy.store.send_store import StoreError

log = get_logger(__name__)

DEFAULT_RESYNC_INTERVAL = 0.5
DEFAULT_SYNC_TIMEOUT = 2.0
DEFAULT_PING_INTERVAL = 5.0
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0


@dataclass(frozen=True)
class BoardState:
    engaged: dict[ScopeKind, int]  # active switches (config + store) by scope kind, zeros too
    synced: bool  # the last read of the store succeeded
    pushed: bool  # the change subscription is live
    last_sync_age: float | None  # seconds since the last successful read (None: never)


class KillSwitchBoard:
    def __init__(
        self,
        store: KillSwitchStore | None,
        *,
        config_switches: Iterable[KillSwitch] = (),
        break_glass_senders: Iterable[str] = (),
        resync_interval: float = DEFAULT_RESYNC_INTERVAL,
        sync_timeout: float = DEFAULT_SYNC_TIMEOUT,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        push: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if resync_interval <= 0 or sync_timeout <= 0 or ping_interval <= 0:
            raise ValueError("resync_interval, sync_timeout and ping_interval must be > 0")
        self._store = store
        self._config = tuple(config_switches)
        self._break_glass = parse_break_glass(break_glass_senders)
        self._resync_interval = resync_interval
        self._sync_timeout = sync_timeout
        self._ping_interval = ping_interval
        self._push = push
        self._clock = clock
        self._stored: tuple[KillSwitch, ...] = ()
        self._switches: tuple[KillSwitch, ...] = self._config
        self._wake = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        self._tasks: tuple[asyncio.Task[None], ...] = ()
        self._running = False
        self._synced = False
        self._sync_failing = False
        self._synced_at: float | None = None
        self._subscribed = False
        self._push_failing = False

    # -- hot path: local memory only ----------------------------------------------------------

    def check(self, attrs: SendAttributes, now: float) -> KillSwitch | None:
        """The switch that stops this send, or None. No I/O."""
        switches = self._switches
        if not switches:
            return None
        return match(switches, attrs, self._break_glass, now)

    def check_facts(self, facts: SendFacts, now: float) -> KillSwitch | None:
        """`check` for a guarded send's facts; builds the attributes (~5 µs) only when some
        switch is engaged, so the common case costs one attribute read."""
        switches = self._switches
        if not switches:
            return None
        return match(switches, SendAttributes.from_facts(facts), self._break_glass, now)

    @property
    def switches(self) -> tuple[KillSwitch, ...]:
        """Configured switches, then stored ones (as last read; may include expired ones)."""
        return self._switches

    @property
    def config_switches(self) -> tuple[KillSwitch, ...]:
        return self._config

    def configured(self, scope: Scope) -> bool:
        """True if `scope` is engaged by configuration (cannot be released through the store)."""
        return any(switch.scope == scope for switch in self._config)

    def state(self, now: float) -> BoardState:
        return BoardState(
            engaged=count_by_kind(self._switches, now),
            synced=self._synced,
            pushed=self._subscribed,
            last_sync_age=None if self._synced_at is None else time.monotonic() - self._synced_at,
        )

    # -- admin path ---------------------------------------------------------------------------

    def _require_store(self) -> KillSwitchStore:
        if self._store is None:
            raise StoreError("no kill switch store configured")
        return self._store

    async def engage(self, switch: KillSwitch) -> Engaged:
        """Store and announce `switch` (replacing its scope's switch), audit it, apply it here."""
        result = await self._require_store().engage(switch, now=self._clock())
        audit.engaged(result.switch, result.replaced)
        async with self._sync_lock:
            self._apply((*(s for s in self._stored if s.scope != switch.scope), switch))
        await self.refresh()
        return result

    async def release(self, scope: Scope, *, author: str, reason: str | None = None) -> Released:
        """Remove and announce the stored switch of `scope`; `was_engaged` False if none was."""
        result = await self._require_store().release(scope, now=self._clock())
        if result.switch is not None:
            audit.released(result.switch, by=author, reason=reason)
        async with self._sync_lock:
            self._apply(tuple(s for s in self._stored if s.scope != scope))
        await self.refresh()
        return result

    async def refresh(self) -> bool:
        """Re-read the store now (e.g. before listing); False if it could not be read."""
        if self._store is None:
            return False
        return await self._sync(self._store)

    # -- keeping the snapshot fresh -----------------------------------------------------------

    def _apply(self, stored: tuple[KillSwitch, ...]) -> None:
        self._stored = stored
        self._switches = self._config + stored

    async def _sync(self, store: KillSwitchStore) -> bool:
        async with self._sync_lock:
            try:
                async with asyncio.timeout(self._sync_timeout):
                    listing = await store.list()
            except (StoreError, TimeoutError) as exc:
                self._synced = False
                if not self._sync_failing:
                    self._sync_failing = True
                    log.warning(
                        audit.KILL_SWITCH_SYNC_FAILED,
                        error=str(exc) or type(exc).__name__,
                        kept=len(self._stored),
                        configured=len(self._config),
                    )
                return False
            self._apply(listing.live)
            self._synced, self._synced_at = True, time.monotonic()
        if self._sync_failing:
            self._sync_failing = False
            log.info(audit.KILL_SWITCH_SYNC_RESTORED, stored=len(listing.live))
        for switch in listing.expired:
            audit.expired(switch)
        if listing.malformed:
            log.warning(audit.KILL_SWITCH_MALFORMED, entries=listing.malformed)
        return True

    async def _resync_loop(self, store: KillSwitchStore) -> None:
        loop = asyncio.get_running_loop()
        retry = _BACKOFF_MIN
        while self._running:
            # While the store is failing, retry sooner (a pooled connection that died with a
            # restarted server fails once, then reconnects), backing off to the interval.
            delay = self._resync_interval if self._synced else min(retry, self._resync_interval)
            retry = _BACKOFF_MIN if self._synced else min(retry * 2, _BACKOFF_MAX)
            # A timer that sets the event, not a timeout that cancels the wait: on Python 3.11
            # a cancellation that coincides with asyncio.timeout's expiry is swallowed
            # (turned into TimeoutError), and stop() would wait for a task that never ends.
            timer = loop.call_later(delay, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            try:
                await self._sync(store)
            except Exception:  # a bug must not stop the resync: log it and keep going
                log.exception(audit.KILL_SWITCH_SYNC_FAILED)

    async def _push_loop(self, store: KillSwitchStore) -> None:
        backoff = _BACKOFF_MIN
        while self._running:
            try:
                async with store.subscription() as changes:
                    self._subscribed = True
                    backoff = _BACKOFF_MIN
                    if self._push_failing:
                        self._push_failing = False
                        log.info(audit.KILL_SWITCH_PUSH_RESTORED)
                    self._wake.set()  # whatever changed while we were not listening
                    while self._running:
                        if await changes.next_change(self._ping_interval):
                            self._wake.set()
            except PubSubUnavailable as exc:
                log.warning(audit.KILL_SWITCH_PUSH_LOST, error=str(exc), retrying=False)
                return
            except Exception as exc:  # StoreError, or a bug: keep the resync alone meanwhile
                if not self._push_failing:
                    self._push_failing = True
                    log.warning(
                        audit.KILL_SWITCH_PUSH_LOST,
                        error=str(exc) or type(exc).__name__,
                        retrying=True,
                    )
            finally:
                self._subscribed = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """One read of the store (bounded by `sync_timeout`; failure is logged, not raised),
        then the push and resync tasks. Configured switches apply from the start regardless."""
        if self._tasks:
            raise RuntimeError("the kill switch board is already running")
        store = self._store
        if store is None:
            return
        await self._sync(store)
        self._running = True
        tasks = [asyncio.create_task(self._resync_loop(store), name="kill-switch-resync")]
        if self._push:
            tasks.append(asyncio.create_task(self._push_loop(store), name="kill-switch-push"))
        self._tasks = tuple(tasks)

    async def stop(self) -> None:
        """Cancel and await both tasks; the subscription's connection is closed on the way.
        A cancellation swallowed inside a library call (asyncio.timeout on Python 3.11, see
        `_resync_loop`) is repeated until the task ends; the loops also stop at `_running`."""
        tasks, self._tasks = set(self._tasks), ()
        self._running = False
        self._wake.set()
        while tasks:
            for task in tasks:
                task.cancel()
            done, tasks = await asyncio.wait(tasks, timeout=0.1)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    error = repr(task.exception())
                    log.error(audit.KILL_SWITCH_TASK_FAILED, task=task.get_name(), error=error)

    async def __aenter__(self) -> KillSwitchBoard:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
