"""What the sandbox received, created and sent: the ground truth tests assert on."""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict, MultiDict

from proxy.sandbox.faults import Fault

CREATE_PATH = re.compile(r"^/2010-04-01/Accounts/[^/]+/(Messages|Calls)\.json$")


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]
    form: list[tuple[str, str]]  # in wire order, repeated keys kept
    body: bytes = b""

    @property
    def is_create(self) -> bool:
        return self.method == "POST" and CREATE_PATH.match(self.path) is not None

    def form_value(self, key: str) -> str | None:
        """The first value of a form key, like Twilio reads single-valued parameters."""
        return next((value for name, value in self.form if name == key), None)

    def form_values(self, key: str) -> list[str]:
        return [value for name, value in self.form if name == key]


@dataclass(frozen=True)
class CallbackAttempt:
    url: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    status: int | None  # HTTP status of the receiver's answer; None when it never answered
    error: str | None = None

    @property
    def message_status(self) -> str | None:
        return dict(self.params).get("MessageStatus")


@dataclass
class SandboxState:
    """Shared between the sandbox app and the test that drives it.

    `creates` counts resources actually created (Messages + Calls): the "at most once" truth.

    `list_lag_seconds` hides each new message from `GET …/Messages.json` for that long (fetch
    by SID finds it at once), as Twilio's list can lag by minutes (docs/twilio-facts.md#list); one
    create may set its own lag with the `X-Sandbox-List-Lag` header.
    """

    send_callbacks: bool = False
    callback_interval: float = 0.0  # pause before each status callback, seconds
    callback_retries: int = 0  # extra tries of a callback the receiver did not take (5xx/error)
    list_lag_seconds: float = 0.0  # a new message is missing from the list for this long
    clock: Callable[[], float] = time.monotonic  # what list lag is measured with (tests)
    creates: int = 0
    received: list[ReceivedRequest] = field(default_factory=list)
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    callbacks_sent: list[CallbackAttempt] = field(default_factory=list)
    in_flight: int = 0
    _faults: deque[Fault] = field(default_factory=deque, init=False, repr=False)
    _listed_from: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = field(
        default_factory=list, init=False, repr=False
    )

    @classmethod
    def for_demo(cls) -> SandboxState:
        """`--upstream sandbox`: status callbacks on, a second apart, as a trial expects."""
        return cls(send_callbacks=True, callback_interval=1.0, callback_retries=1)

    # -- faults -------------------------------------------------------------------------------

    def push_fault(self, fault: Fault, times: int = 1) -> None:
        """Apply `fault` to the next `times` create requests (Messages.json or Calls.json)."""
        self._faults.extend([fault] * times)

    def take_fault(self) -> Fault | None:
        return self._faults.popleft() if self._faults else None

    def clear_faults(self) -> None:
        self._faults.clear()

    # -- recording ----------------------------------------------------------------------------

    def record_request(self, received: ReceivedRequest) -> None:
        self.received.append(received)
        self._notify()

    def record_message(self, message: dict[str, Any], list_lag: float | None = None) -> None:
        """Count a created message; the list shows it after `list_lag` seconds (default:
        `list_lag_seconds`)."""
        lag = self.list_lag_seconds if list_lag is None else list_lag
        if lag > 0:
            self._listed_from[message["sid"]] = self.clock() + lag
        self.messages[message["sid"]] = message
        self._count_create()

    def listed_messages(self) -> list[dict[str, Any]]:
        """The messages `GET …/Messages.json` can see now, oldest first (list lag applied)."""
        now = self.clock()
        hidden = self._listed_from
        return [m for sid, m in self.messages.items() if hidden.get(sid, 0.0) <= now]

    def forget_message(self, sid: str) -> None:
        self.messages.pop(sid, None)
        self._listed_from.pop(sid, None)

    def record_call(self, call: dict[str, Any]) -> None:
        self.calls[call["sid"]] = call
        self._count_create()

    def record_callback(self, attempt: CallbackAttempt) -> None:
        self.callbacks_sent.append(attempt)
        self._notify()

    def create_requests(self) -> list[ReceivedRequest]:
        """Every create POST received, whether or not it created anything."""
        return [received for received in self.received if received.is_create]

    def _count_create(self) -> None:
        self.creates += 1
        self._notify()

    # -- waiting ------------------------------------------------------------------------------
    # A timeout argument (ASYNC109) on purpose: a test waits in one line and gets a message
    # with the counts, rather than a bare TimeoutError from an outer asyncio.timeout.

    async def wait_for_creates(self, n: int, timeout: float = 5) -> None:  # noqa: ASYNC109
        await self.wait_until(lambda: self.creates >= n, timeout, f"{n} creates")

    async def wait_for_callbacks(self, n: int, timeout: float = 5) -> None:  # noqa: ASYNC109
        await self.wait_until(lambda: len(self.callbacks_sent) >= n, timeout, f"{n} callbacks")

    async def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float = 5,  # noqa: ASYNC109
        what: str = "condition",
    ) -> None:
        """Wait until `condition()` holds after some recorded event; TimeoutError otherwise."""
        if condition():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"sandbox: no {what} within {timeout}s "
                f"(creates={self.creates}, callbacks={len(self.callbacks_sent)})"
            ) from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _notify(self) -> None:
        for condition, waiter in list(self._waiters):
            if not waiter.done() and condition():
                waiter.set_result(None)
