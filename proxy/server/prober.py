"""The store's health, probed continuously and independently of traffic (docs/contract.md#outage).

One slow reply, one dropped connection or one full pool says nothing about whether the store
is down; only the prober decides that, after `store_outage_after` of failed probes, and back
up at the first good one. The outage policy (gate.py) engages and disengages on its word.

    StoreHealth    pure: probe results over time -> up/down transitions (table-tested)
    StoreProber    the loop: ping every master, feed StoreHealth, publish, tell the failover
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from proxy.logs import get_logger
from proxy.metrics import Metrics

log = get_logger("sendguard.prober")

PROBE_INTERVAL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 1.0


class StoreHealth:
    """Down after `outage_after` seconds without a good probe; up at the first good one."""

    def __init__(self, outage_after: float) -> None:
        self.outage_after = outage_after
        self.up = True
        self.reachable = True  # the last probe's result
        self._failing_since: float | None = None

    def observe(self, ok: bool, now: float) -> bool | None:
        """The new state on a transition (True = up again, False = down), else None."""
        self.reachable = ok
        if ok:
            self._failing_since = None
            if not self.up:
                self.up = True
                return True
            return None
        if self._failing_since is None:
            self._failing_since = now
        if self.up and now - self._failing_since >= self.outage_after:
            self.up = False
            return False
        return None

    def refuse_recovery(self) -> None:
        """The switch back did not complete (e.g. the merge failed): stay down, try again."""
        self.up = False


class StoreProber:
    def __init__(
        self,
        ping: Callable[[], Awaitable[None]],
        health: StoreHealth,
        metrics: Metrics,
        on_change: Callable[[bool], Awaitable[bool]],
        *,
        interval: float = PROBE_INTERVAL_SECONDS,
        probe_timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self._ping = ping
        self.health = health
        self._metrics = metrics
        self._on_change = on_change
        self._interval = interval
        self._probe_timeout = probe_timeout
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._metrics.store_up.set(1)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Cancel until it is really gone: redis-py can swallow a cancel that lands while it
        # connects (redis/redis-py#2551), and shutdown must never wait on the prober forever.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()

    async def probe_once(self) -> bool:
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._ping()
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure of any client layer is "not reachable"
            return False
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            ok = await self.probe_once()
            self._metrics.store_up.set(1 if ok else 0)
            change = self.health.observe(ok, loop.time())
            if change is not None:
                try:
                    accepted = await self._on_change(change)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the prober must outlive any bug behind it
                    log.error("store_transition_failed", up=change, error=type(exc).__name__)
                    accepted = False
                if change and not accepted:
                    self.health.refuse_recovery()
            await asyncio.sleep(self._interval)
