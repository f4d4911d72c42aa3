"""The settlement journal: outcomes of sends that the store has not accepted yet.

Once a send may have left for Twilio, its outcome (complete, mark-unknown, release) belongs
to this instance until the store accepts it (docs/contract.md#outage). A store that answers
slowly, drops the connection after running the script, or is gone for a while must not lose
that outcome, and must never turn it into a second send:

  - the write is tried once inline; if the store fails, the outcome stays here, in memory,
    and is retried with backoff until the store accepts it (every script is a compare-and-set
    on the claim token, so running it twice is harmless: tests/test_scripts.py);
  - while it is pending, a duplicate reaching this instance is answered from here: the real
    answer replayed, 409 for an UNKNOWN, 503 for a release not yet written (nothing was sent);
  - the journal is bounded: when full, new sends are refused before anything is sent;
  - shutdown flushes it within a deadline; what is left stays in flight in the store and turns
    UNKNOWN at the end of its lease (never a resend).

One journal per process, shared by the guards of every store mode: a duplicate that arrives
while the instance is on its outage store still finds the shared store's pending outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.guard.dedup import StoredResponse
from proxy.guard.outcome import StoreAction
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.store.send_store import SendRef, StoreError

log = get_logger("sendguard.settlement")

OUTCOME_WRITE_PENDING = "outcome_write_pending"
OUTCOME_WRITE_SETTLED = "outcome_write_settled"
OUTCOME_WRITE_ABANDONED = "outcome_write_abandoned"

MAX_PENDING = 10_000
BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 2.0

Write = Callable[[], Awaitable[object]]


@dataclass
class PendingOutcome:
    """An outcome this instance still owes the store, and what duplicates are told meanwhile."""

    ref: SendRef
    action: StoreAction
    payload_hash: str
    write: Write = field(repr=False)
    store: object = field(default=None, repr=False)  # the store it is owed to
    response: StoredResponse | None = None  # complete: what a duplicate gets replayed
    message_sid: str = ""
    attempts: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SettlementJournal:
    def __init__(
        self,
        metrics: Metrics,
        *,
        max_pending: int = MAX_PENDING,
        backoff_first: float = BACKOFF_FIRST_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        self._backoff_first = backoff_first
        self._backoff_max = backoff_max
        self._pending: dict[tuple[str, str], PendingOutcome] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def full(self) -> bool:
        return len(self._pending) >= self.max_pending

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self, ref: SendRef) -> PendingOutcome | None:
        return self._pending.get((ref.tag, ref.dedup_id))

    async def settle(self, outcome: PendingOutcome) -> StoreError | None:
        """Write the outcome now; if the store fails, keep it and retry in the background.
        The store's error when it did not accept the outcome inline; never raises it."""
        try:
            await outcome.write()
        except StoreError as exc:
            self._keep(outcome, str(exc))
            return exc
        return None

    async def retry_now(self, outcome: PendingOutcome) -> bool:
        """One extra inline try (a duplicate is waiting on a pending release)."""
        try:
            await outcome.write()
        except StoreError:
            return False
        self._settled(outcome)
        return True

    def _keep(self, outcome: PendingOutcome, error: str) -> None:
        key = (outcome.ref.tag, outcome.ref.dedup_id)
        # A newer outcome for the same record (same send retried on this instance after a
        # lost claim answer) supersedes nothing: both are token CAS writes, both are kept.
        existing = self._pending.get(key)
        if existing is not None and existing is not outcome:
            existing.done.set()
        self._pending[key] = outcome
        self.metrics.pending_outcome_writes.set(len(self._pending))
        log.warning(OUTCOME_WRITE_PENDING, action=outcome.action.value, error=error)
        task = asyncio.get_running_loop().create_task(self._retry(outcome))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, outcome: PendingOutcome) -> None:
        delay = self._backoff_first
        while not outcome.done.is_set():
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max)
            outcome.attempts += 1
            try:
                await outcome.write()
            except StoreError:
                continue
            self._settled(outcome)
            return

    def _settled(self, outcome: PendingOutcome) -> None:
        outcome.done.set()
        key = (outcome.ref.tag, outcome.ref.dedup_id)
        if self._pending.get(key) is outcome:
            del self._pending[key]
        self.metrics.pending_outcome_writes.set(len(self._pending))
        log.info(OUTCOME_WRITE_SETTLED, action=outcome.action.value, attempts=outcome.attempts)

    async def flush(self, within: float) -> int:
        """Wait up to `within` seconds for pending outcomes to be written; how many are left."""
        if self._pending:
            waits = [asyncio.ensure_future(o.done.wait()) for o in self._pending.values()]
            _, still = await asyncio.wait(waits, timeout=within)
            for wait in still:
                wait.cancel()
        return len(self._pending)

    async def close(self, within: float) -> None:
        left = await self.flush(within)
        if left:
            # Each stays in flight in the store and turns UNKNOWN when its lease runs out.
            log.error(OUTCOME_WRITE_ABANDONED, pending=left)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
