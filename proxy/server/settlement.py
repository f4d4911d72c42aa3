"""The settlement journal: outcomes of sends that the store has not accepted yet.

Once a send may have left for Twilio, its outcome (complete, mark-unknown, release) belongs
to this instance until the store accepts it (docs/contract.md#outage). A store that answers
slowly, drops the connection after running the script, or is gone for a while must not lose
that outcome, and must never turn it into a second send:

  - an answered send's completion is written after the answer (`settle_behind`): it is owed
    here first, so a duplicate reaching this instance is replayed from memory at once, and the
    client gets Twilio's answer without waiting for the store. A duplicate on another instance
    meanwhile finds the record in flight and waits (`inflight_wait`) until the write lands;
  - a release or an UNKNOWN mark is tried once inline (`settle`);
  - a write the store fails stays here, in memory, and is retried with backoff until the store
    accepts it (every script is a compare-and-set on the claim token, so running it twice is
    harmless: tests/store/test_scripts.py);
  - while it is pending, a duplicate reaching this instance is answered from here: the real
    answer replayed, 409 for an UNKNOWN, 503 for a release not yet written (nothing was sent);
  - the journal is bounded: when full, new sends are refused before anything is sent;
  - shutdown flushes it within a deadline; what is left (a write behind the answer included)
    stays in flight in the store and turns UNKNOWN at the end of its lease (never a resend), as
    after a crash before the write landed.

One journal per process, shared by the guards of every store mode: a duplicate that arrives
while the instance is on its outage store still finds the shared store's pending outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Coroutine
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


@dataclass(eq=False)  # compared by identity: two owed writes are never "the same"
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
    behind: bool = False  # written after the answer (`settle_behind`)
    refused: bool = False  # the store failed a write of it at least once

    @property
    def landing(self) -> bool:
        """Written after the answer, its first write still under way (not refused yet)."""
        return self.behind and not self.refused and not self.done.is_set()


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
        # Every outcome owed, per record: two requests for one record (a lost claim answer
        # retried, a refusal and a retry) each owe their own write; none supersedes another.
        self._pending: dict[tuple[str, str], list[PendingOutcome]] = {}
        self._count = 0
        self._refused = 0  # owed outcomes the store failed at least once (the gauge)
        # While the instance runs on its outage store, outcomes the shared store accepted are
        # kept here too: a retry then reaching the outage store must still find them.
        self._retained: dict[tuple[str, str], PendingOutcome] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def full(self) -> bool:
        return self._count >= self.max_pending

    def __len__(self) -> int:
        return self._count

    def pending(self, ref: SendRef) -> PendingOutcome | None:
        """What a duplicate of `ref` is answered from: an owed (or, while degraded, a recently
        settled) completion or UNKNOWN first, else an owed release."""
        key = (ref.tag, ref.dedup_id)
        owed = self._pending.get(key, [])
        retained = self._retained.get(key) if self._retained is not None else None
        candidates = [*owed, *([retained] if retained is not None else [])]
        for outcome in candidates:
            if outcome.action is not StoreAction.RELEASE:
                return outcome
        return candidates[0] if candidates else None

    def owed_to(self, store: object) -> int:
        """How many outcomes are still owed to `store` (the merge waits for them)."""
        return sum(1 for owed in self._pending.values() for o in owed if o.store is store)

    def retain_settled(self, retain: bool) -> None:
        """Degraded to the outage store: keep settled outcomes for duplicates (True), or drop
        them once the shared store guards sends again (False)."""
        self._retained = {} if retain else None

    async def settle(self, outcome: PendingOutcome) -> StoreError | None:
        """Write the outcome now; if the store fails, keep it and retry in the background.
        The store's error when it did not accept the outcome inline; never raises it."""
        try:
            await outcome.write()
        except StoreError as exc:
            self._owe(outcome)
            self._refused_once(outcome, str(exc))
            self._start(self._retry(outcome))
            return exc
        self._remember(outcome)
        return None

    def settle_behind(
        self, outcome: PendingOutcome, on_error: Callable[[StoreError], None]
    ) -> None:
        """Owe the outcome now and write it in the background (the caller answers at once).
        Synchronous on purpose: no await between the answer and the debt, so a cancelled
        request cannot leave an outcome neither owed nor written. `on_error` hears of the
        first failed write (then it is retried like any refused one)."""
        outcome.behind = True
        self._owe(outcome)
        self._start(self._write_behind(outcome, on_error))

    async def _write_behind(
        self, outcome: PendingOutcome, on_error: Callable[[StoreError], None]
    ) -> None:
        try:
            await outcome.write()
        except StoreError as exc:
            on_error(exc)
            self._refused_once(outcome, str(exc))
            await self._retry(outcome)
            return
        self._settled(outcome)

    async def retry_now(self, outcome: PendingOutcome) -> bool:
        """One extra inline try (a duplicate is waiting on a pending release)."""
        if outcome.done.is_set():
            return True
        try:
            await outcome.write()
        except StoreError:
            return False
        self._settled(outcome)
        return True

    def _owe(self, outcome: PendingOutcome) -> None:
        key = (outcome.ref.tag, outcome.ref.dedup_id)
        self._pending.setdefault(key, []).append(outcome)
        self._count += 1

    def _refused_once(self, outcome: PendingOutcome, error: str) -> None:
        if not outcome.refused:
            outcome.refused = True
            self._refused += 1
            self.metrics.pending_outcome_writes.set(self._refused)
        log.warning(OUTCOME_WRITE_PENDING, action=outcome.action.value, error=error)

    def _start(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, outcome: PendingOutcome) -> None:
        delay = self._backoff_first
        while not outcome.done.is_set():
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            if outcome.done.is_set():
                return
            delay = min(delay * 2, self._backoff_max)
            outcome.attempts += 1
            try:
                await outcome.write()
            except StoreError:
                continue
            self._settled(outcome)
            return

    def _settled(self, outcome: PendingOutcome) -> None:
        if outcome.done.is_set():
            return
        outcome.done.set()
        key = (outcome.ref.tag, outcome.ref.dedup_id)
        owed = self._pending.get(key, [])
        if outcome in owed:
            owed.remove(outcome)
            self._count -= 1
            if not owed:
                del self._pending[key]
        self._remember(outcome)
        if outcome.refused:  # the ordinary write behind the answer lands quietly
            self._refused -= 1
            self.metrics.pending_outcome_writes.set(self._refused)
            log.info(OUTCOME_WRITE_SETTLED, action=outcome.action.value, attempts=outcome.attempts)

    def _remember(self, outcome: PendingOutcome) -> None:
        if self._retained is not None and outcome.action is not StoreAction.RELEASE:
            self._retained[(outcome.ref.tag, outcome.ref.dedup_id)] = outcome

    async def flush(self, within: float) -> int:
        """Wait up to `within` seconds for pending outcomes to be written; how many are left."""
        if self._pending:
            waits = [
                asyncio.ensure_future(o.done.wait())
                for owed in self._pending.values()
                for o in owed
            ]
            _, still = await asyncio.wait(waits, timeout=within)
            for wait in still:
                wait.cancel()
        return self._count

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
