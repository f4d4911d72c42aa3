"""What a client may cost a listener: connection count, time to send a request, idle time.

aiohttp bounds the size of a request head (`max_line_size`, `max_field_size`, `max_headers`)
and closes a connection that starts no request within `keepalive_timeout` (also a fresh one),
but has no deadline for a head that trickles in, none for a body, and no connection cap. This
module adds them on aiohttp's own protocol, so that they hold for every request of a listener,
whatever handler it reaches:

- **idle**: a connection that starts no request for `client_idle_timeout` (new, or kept alive
  after an answer) is closed (aiohttp's keep-alive timer);
- **head**: a request line and headers must be complete within `client_header_timeout` of
  their first byte, else `408` and the connection is closed (slow-header slowloris);
- **body**: a body must be complete within `client_body_timeout` of its head; the reader then
  gets `ClientTooSlow` (rendered `408` like any sendguard error) and the connection is closed
  after the answer (slow-body slowloris; it also bounds how long a body holds memory);
- **connections**: at `max_connections`, the connection that has waited longest for a request
  is closed to make room; when every connection is busy with a request, the new one is answered
  `503` (Twilio-shaped, `Retry-After`) and closed. The cap sits below the open-file limit, so
  that accept() never runs out of file descriptors.

`proxy_runner()` and `admin_runner()` build the `AppRunner`s both production
(`proxy/server/run.py`) and the tests (`tests/harness.py`) use: one definition of the limits.
"""

from __future__ import annotations

import asyncio
import resource
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_request import BaseRequest

from proxy.decision import Decision
from proxy.errors import InvalidRequest, SendguardError
from proxy.logs import get_logger

if TYPE_CHECKING:
    from proxy.metrics import Metrics
    from proxy.settings import Settings

log = get_logger("sendguard.limits")

PROXY = "proxy"
ADMIN = "admin"
ADMIN_MAX_CONNECTIONS = 64  # probes, scrapes and the CLI
# File descriptors kept out of the proxy's connection cap: upstream pool, store, admin, logs.
FD_RESERVE = 64 + ADMIN_MAX_CONNECTIONS
REFUSED_LINGER = 0.5  # seconds a refused connection is kept to read the client's request away
LOG_EVERY = 10.0  # seconds: refusals and timeouts are logged once, then summarised


class ClientTooSlow(InvalidRequest):
    status = 408
    code = 79013
    decision = Decision.INVALID_REQUEST
    default_message = "the request did not arrive in time"

    def headers(self) -> dict[str, str]:
        # The connection is closed after this answer (the rest of the request is not read).
        return {**super().headers(), "Connection": "close"}


class TooManyConnections(SendguardError):
    status = 503
    code = 79022
    decision = Decision.REFUSED
    default_message = "too many connections; retry shortly"


@dataclass(frozen=True)
class ClientLimits:
    max_connections: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 100

    @classmethod
    def for_proxy(cls, settings: Settings) -> ClientLimits:
        cap = settings.max_connections
        room = open_file_limit() - FD_RESERVE - settings.upstream_pool_size
        if cap > room:
            log.warning(
                "max_connections_lowered",
                configured=cap,
                effective=max(room, 1),
                reason="open file limit",
            )
            cap = max(room, 1)
        return cls(
            max_connections=cap,
            header_timeout=settings.client_header_timeout,
            body_timeout=settings.client_body_timeout,
            idle_timeout=settings.client_idle_timeout,
        )

    @classmethod
    def for_admin(cls, settings: Settings) -> ClientLimits:
        return cls(
            max_connections=ADMIN_MAX_CONNECTIONS,
            header_timeout=settings.client_header_timeout,
            body_timeout=settings.client_body_timeout,
            idle_timeout=settings.client_idle_timeout,
        )

    def handler_kwargs(self) -> dict[str, Any]:
        """aiohttp's own per-connection settings (RequestHandler keyword arguments)."""
        return {
            "keepalive_timeout": self.idle_timeout,
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
            # An unread body after the answer is drained this long at most (aiohttp: 10 s).
            "lingering_time": min(5.0, self.body_timeout),
        }


def open_file_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (as Go does at start); the new soft."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft and (hard == resource.RLIM_INFINITY or hard > soft):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return open_file_limit()
    return open_file_limit()


def raw_response(error: SendguardError) -> bytes:
    """A whole HTTP/1.1 answer written straight to a transport (no request to answer through
    aiohttp): Twilio-shaped body, sendguard's headers, `Connection: close`."""
    body = error.body_bytes()
    headers = {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "X-Sendguard-Decision": error.decision.value,
        "X-Request-Id": secrets.token_hex(16),
        **error.headers(),
        "Connection": "close",
    }
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


class _Summary:
    """One log line for the first event, then at most one per LOG_EVERY with the count: a flood
    of refusals or timeouts must not become a flood of log lines."""

    def __init__(self, event: str, **fields: str) -> None:
        self.event = event
        self.fields = fields
        self.pending = 0
        self.last = -LOG_EVERY

    def note(self) -> None:
        self.pending += 1
        now = time.monotonic()
        if now - self.last >= LOG_EVERY:
            log.warning(self.event, count=self.pending, **self.fields)
            self.pending = 0
            self.last = now


class ConnectionGuard:
    """The connections of one listener: the cap, and which of them wait for a request (the
    ones that may be closed to make room, oldest first)."""

    def __init__(self, limits: ClientLimits, listener: str, metrics: Metrics | None) -> None:
        self.limits = limits
        self.listener = listener
        self.metrics = metrics
        self.open: dict[LimitedRequestHandler, None] = {}
        self.waiting: dict[LimitedRequestHandler, None] = {}  # insertion order: oldest first
        self._refused = _Summary("client_connections_refused", listener=listener)
        self._timeouts = {
            phase: _Summary("client_timed_out", listener=listener, phase=phase)
            for phase in ("head", "body")
        }
        self._evicted = _Summary("client_connections_evicted", listener=listener)

    def admit(self, handler: LimitedRequestHandler) -> bool:
        if len(self.open) >= self.limits.max_connections:
            if not self.waiting:
                self._refused.note()
                if self.metrics is not None:
                    self.metrics.client_connections_refused.labels(self.listener).inc()
                return False
            oldest = next(iter(self.waiting))
            self.release(oldest)
            oldest.force_close()
            self._evicted.note()
            if self.metrics is not None:
                self.metrics.client_connections_evicted.labels(self.listener).inc()
        self.open[handler] = None
        self.waiting[handler] = None
        self._gauge()
        return True

    def busy(self, handler: LimitedRequestHandler) -> None:
        self.waiting.pop(handler, None)

    def idle(self, handler: LimitedRequestHandler) -> None:
        if handler in self.open:
            self.waiting.pop(handler, None)
            self.waiting[handler] = None  # now the newest

    def release(self, handler: LimitedRequestHandler) -> None:
        self.waiting.pop(handler, None)
        if handler in self.open:
            del self.open[handler]
            self._gauge()

    def timed_out(self, phase: str) -> None:
        self._timeouts[phase].note()
        if self.metrics is not None:
            self.metrics.client_timeouts.labels(self.listener, phase).inc()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.client_connections.labels(self.listener).set(len(self.open))


_Handler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


class LimitedRequestHandler(web.RequestHandler):
    """aiohttp's protocol with the head and body deadlines and the connection cap."""

    __slots__ = ("_body_timed_out", "_body_timer", "_guard", "_head_timer", "_refused")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_timed_out = False
        self._refused = False

    # -- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.admit(self):
            super().connection_made(transport)
            return
        # Refused: answer, stop writing, read the client's request away for a moment (closing
        # with unread data would send a reset that can destroy the answer), then close; the
        # client's own EOF closes it sooner (RequestHandler.eof_received).
        self._refused = True
        stream = cast(asyncio.Transport, transport)
        stream.write(raw_response(TooManyConnections(retry_after=1)))
        if stream.can_write_eof():
            stream.write_eof()
        self._loop.call_later(REFUSED_LINGER, stream.close)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        if self._refused:
            return
        self._guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # discarded
        if (
            data
            and self._head_timer is None
            and not self._request_in_progress
            and not self._messages
        ):
            self._head_timer = self._loop.call_later(
                self._guard.limits.header_timeout, self._head_timed_out
            )
        super().data_received(data)
        if self._head_timer is not None and self._messages:
            self._head_timer.cancel()  # the head is complete
            self._head_timer = None

    # -- one request -------------------------------------------------------------------------

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: _Handler,
    ) -> tuple[web.StreamResponse, bool]:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._guard.busy(self)
        payload = request.content
        if not payload.is_eof():
            self._body_timer = self._loop.call_later(
                self._guard.limits.body_timeout, self._body_too_slow, payload
            )
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if self._body_timed_out:
                self.force_close()  # after the 408 went out: the rest of the body is not read
            else:
                self._guard.idle(self)

    # -- deadlines ---------------------------------------------------------------------------

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_in_progress or self._messages or self.transport is None:
            return
        self._guard.timed_out("head")
        self.transport.write(raw_response(ClientTooSlow(reason="head-timeout")))
        self.force_close()

    def _body_too_slow(self, payload: StreamReader) -> None:
        self._body_timer = None
        if payload.is_eof():
            return
        self._body_timed_out = True
        self._guard.timed_out("body")
        payload.set_exception(
            ClientTooSlow("the request body did not arrive in time", reason="body-timeout")
        )

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


class LimitedServer(web.Server):
    """aiohttp's Server (the protocol factory of a site), making LimitedRequestHandlers."""

    def __init__(self, base: web.Server, guard: ConnectionGuard) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.guard = guard

    def __call__(self) -> web.RequestHandler:
        return LimitedRequestHandler(self, guard=self.guard, loop=self._loop, **self._kwargs)


class LimitedAppRunner(web.AppRunner):
    """An AppRunner whose sites serve with the limits (use it like web.AppRunner)."""

    def __init__(
        self,
        app: web.Application,
        limits: ClientLimits,
        *,
        listener: str,
        metrics: Metrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **{**limits.handler_kwargs(), **kwargs})
        self.guard = ConnectionGuard(limits, listener, metrics)

    async def _make_server(self) -> web.Server:
        return LimitedServer(await super()._make_server(), self.guard)


def proxy_runner(
    app: web.Application, settings: Settings, metrics: Metrics, *, shutdown_timeout: float
) -> LimitedAppRunner:
    """The proxy port's runner. No access log: `request_finished` is the one line per request
    (aiohttp's access log would print the request line, query and phone numbers included)."""
    return LimitedAppRunner(
        app,
        ClientLimits.for_proxy(settings),
        listener=PROXY,
        metrics=metrics,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
        access_log=None,
    )


def admin_runner(
    admin_app: web.Application, settings: Settings, metrics: Metrics | None
) -> LimitedAppRunner:
    return LimitedAppRunner(
        admin_app,
        ClientLimits.for_admin(settings),
        listener=ADMIN,
        metrics=metrics,
        handle_signals=False,
        access_log=None,
    )
