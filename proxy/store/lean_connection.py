"""One multiplexed socket to the store, for the lean client (proxy/store/lean.py): commands of
every caller packed into one write per loop turn, answers matched to callers in order by a FIFO
(RESP is strictly ordered per connection), each caller's deadline enforced.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any, Final, cast

import hiredis

from proxy.store.lean_commands import (
    LeanConnectionError,
    LeanTimeoutError,
    reply_error,
)

# -- one connection -------------------------------------------------------------------------

_INCOMPLETE: Final = object()  # hiredis' "no whole reply buffered yet"


class _Waiter:
    """One caller's share of the connection's answers: the next `count` replies."""

    __slots__ = ("count", "deadline", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int, deadline: float) -> None:
        self.future = future
        self.count = count
        self.deadline = deadline
        self.replies: list[Any] = []


class LeanConnection(asyncio.Protocol):
    """One socket to the server. Callers `submit` packed commands; answers are matched to
    them in order. Once `lost` is set the connection is finished: the client makes another."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, reply_timeout: float | None, where: str
    ) -> None:
        self._loop = loop
        self._reply_timeout = reply_timeout
        self._where = where
        self._reader = hiredis.Reader(replyError=reply_error, notEnoughData=_INCOMPLETE)
        self._transport: asyncio.Transport | None = None
        self._pending: deque[_Waiter] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = loop.create_future()
        self.lost: str | None = None  # why the connection is finished (None while usable)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (not an isinstance check: uvloop's transports are not asyncio.Transport subclasses)
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not _INCOMPLETE:
                waiter = pending[0]
                replies = waiter.replies
                replies.append(reply)
                if len(replies) == waiter.count:
                    pending.popleft()
                    if not waiter.future.done():  # a cancelled caller: the reply is dropped
                        waiter.future.set_result(replies)
        except IndexError:  # a reply nobody asked for: the stream can no longer be trusted
            self._abort(LeanConnectionError, "a reply arrived that no command was waiting for")
        except hiredis.ProtocolError as exc:
            self._abort(LeanConnectionError, f"protocol error: {exc}")
        if not pending and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def eof_received(self) -> bool:
        return False  # the server closed its side: close ours (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            reason = f"connection lost: {exc}" if exc else "connection closed by the server"
            self._finish(LeanConnectionError, reason)
        if not self._closed.done():
            self._closed.set_result(None)

    # the callers' side

    def submit(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        """Queue packed commands (`count` of them) for this loop turn's write; the future
        resolves with their `count` replies, errors as values."""
        if self.lost is not None:
            raise LeanConnectionError(f"{self._where}: {self.lost}")
        loop = self._loop
        future: asyncio.Future[list[Any]] = loop.create_future()
        timeout = self._reply_timeout
        deadline = loop.time() + timeout if timeout is not None else math.inf
        self._pending.append(_Waiter(future, count, deadline))
        self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if self._timer is None and timeout is not None:
            # One timer at a time, never cancelled: it re-arms itself for the oldest waiter.
            self._timer = loop.call_at(deadline, self._check_deadline)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.lost is None and self._transport is not None:
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending or self.lost is not None:
            return
        deadline = self._pending[0].deadline
        now = self._loop.time()
        if now >= deadline:
            self._abort(LeanTimeoutError, f"no reply within {self._reply_timeout}s", due=now)
        else:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait_idle(self) -> None:
        """Until every answer asked for so far has arrived (or the connection is lost)."""
        while self._pending and self.lost is None:
            if self._idle is None or self._idle.done():
                self._idle = self._loop.create_future()
            await asyncio.wait([self._idle, self._closed], return_when=asyncio.FIRST_COMPLETED)

    async def close(self, reason: str = "client closed") -> None:
        self._abort(LeanConnectionError, reason, graceful=True)
        await asyncio.shield(self._closed)

    # failing

    def _finish(
        self, kind: type[LeanConnectionError], reason: str, due: float | None = None
    ) -> None:
        """Mark the connection finished and fail every waiting caller (each its own error).
        `due`: a reply timed out at this time; callers whose own time was not up yet only
        lost the connection (LeanConnectionError: a caller may retry that, not a timeout)."""
        self.lost = reason
        self._out = []
        pending, self._pending = self._pending, deque()
        for waiter in pending:
            if not waiter.future.done():
                if due is not None and waiter.deadline > due:
                    error = LeanConnectionError(
                        f"{self._where}: connection dropped: an earlier reply timed out"
                    )
                else:
                    error = kind(f"{self._where}: {reason}")
                waiter.future.set_exception(error)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _abort(
        self,
        kind: type[LeanConnectionError],
        reason: str,
        *,
        graceful: bool = False,
        due: float | None = None,
    ) -> None:
        if self.lost is None:
            self._finish(kind, reason, due)
        transport = self._transport
        if transport is None:
            if not self._closed.done():
                self._closed.set_result(None)
        elif graceful:
            transport.close()
        else:
            transport.abort()


def abort_transport(transport: asyncio.BaseTransport | None) -> None:
    if transport is not None:
        cast(asyncio.Transport, transport).abort()
