"""The status-callback tee: take Twilio's callback, learn from it, hand it to the app re-signed.

    Twilio ──POST {public_url}/_sendguard/callbacks/v1/{token}──▶ CallbackTee.handle
        1. unwrap the token (HMAC): the app's URL and the send it is bound to (account,
           recipient tag, dedup id)                    tampered / garbage   → 400, nothing else
                                                       old unbound format   → 400, nothing else
        2. the body's AccountSid must be the bound account      otherwise   → 403, nothing else
        3. verify X-Twilio-Signature for the URL Twilio called, with the BOUND account's auth
           tokens (never those of an account the body names)
                                                       no token / no match  → 403, nothing else
        4. learner.learn_delivery(...) for the bound account, only when the body's `To` is the
           bound recipient (else: not learned, still forwarded, logged)
                                                       its errors are logged, never block
        5. I-Twilio-Idempotency-Token already forwarded?                    → 200, not again
        6. POST the same body to the original URL, signed afresh for that URL with the same auth
           token; `attempts` tries on connection errors, timeouts and 5xx
                                                       any 2xx-4xx          → that answer
                                                       all attempts failed  → 502 (Twilio retries)

Open-redirect / SSRF rule: the tee only ever POSTs to a URL it wrapped itself. The token's HMAC
(urls.py) proves sendguard put that URL into a send's `StatusCallback`, i.e. an app holding
Twilio credentials chose it; a caller without the secret cannot name a destination, and a
callback is forwarded only after Twilio's signature over it checks out. Redirects from the
app are never followed, so the destination cannot be swapped afterwards either.

Binding rule: a callback can teach only about its own message. The token names the account and
recipient of the send whose StatusCallback it replaced, and the MAC covers them, so a captured
callback URL cannot be replayed with another account's form and token (say an attacker's own,
learned from their own sends) to suppress someone else's recipient, nor to have sendguard
forward a callback it signed with that other token.

Steps 1-4 are judged by inbound.py's pure functions; this module does the I/O. A refusal is
raised as the `SendguardError` it is (its status in the table above), for the server's
middleware to render and to record as the request's decision: one place for both. The URL
Twilio signed is rebuilt from the configured public URL and the request's raw path and query,
never from the Host header (behind a load balancer that is an internal name). The one
log line per callback carries the account, message SID, status, error code and outcome, the
recipient masked, the destination as scheme://host/path only (a query may carry secrets), and
never an auth token or signature.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import CallbackUndeliverable, InternalError, SendguardError
from proxy.logs import get_logger, mask_phone
from proxy.tee.dedup import CallbackDeduper
from proxy.tee.inbound import (
    IDEMPOTENCY_HEADER,
    RECIPIENT_MISMATCH,
    DeliveryStatus,
    InboundCallback,
    check_account,
    check_method,
    delivery_status,
    idempotency_token,
    is_bound_recipient,
    locate_token,
    loggable_url,
    parse_callback,
    unwrap_token,
    verified_auth_token,
)
from proxy.tee.rewrite import callback_headers, callback_target
from proxy.tee.signing import SIGNATURE_HEADER, compute_signature
from proxy.tee.tokens import AuthTokenBook
from proxy.tee.urls import CallbackBinding, CallbackUrlCodec

log = get_logger("sendguard.tee")

# (the send the callback URL is bound to, the callback's Message SID, the verified auth token)
UnknownResolver = Callable[[CallbackBinding, str, str], Awaitable[None]]

CALLBACK_FINISHED = "callback_finished"
_MAX_APP_ANSWER_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})

# Outcomes of a callback the tee took (a refused one's outcome is its error's reason).
DELIVERED = "delivered"
DUPLICATE = "duplicate"
DUPLICATE_IN_FLIGHT = "duplicate-in-flight"
UNDELIVERABLE = "callback-undeliverable"


class CallbackLearner(Protocol):
    async def learn_delivery(self, status: DeliveryStatus) -> None: ...


@dataclass(frozen=True)
class AppAnswer:
    status: int
    body: bytes
    content_type: str | None


@dataclass
class _Trace:
    """The fields of the one log line, filled in as the callback goes (in the line's order)."""

    outcome: str = ""
    account: str = ""
    message_sid: str = ""
    status: str = ""
    error_code: int | None = None
    to: str = ""
    destination: str = ""
    http_status: int | None = None  # set as the line is written
    app_status: int | None = None
    attempts: int = 0
    learn_error: str | None = None
    learn_skipped: str | None = None
    dedup_error: str | None = None
    failure: str | None = None


class CallbackTee:
    def __init__(
        self,
        *,
        codec: CallbackUrlCodec,
        tokens: AuthTokenBook,
        learner: CallbackLearner,
        deduper: CallbackDeduper,
        session: aiohttp.ClientSession,
        attempts: int = 3,
        backoff: float = 0.2,
        timeout: float = 10.0,
        resolver: UnknownResolver | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self._codec = codec
        self._tokens = tokens
        self._learner = learner
        self._resolver = resolver
        self._deduper = deduper
        self._session = session
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        # Redeliveries arriving while the first is still being forwarded wait for its answer.
        self._in_flight: dict[str, asyncio.Future[AppAnswer | None]] = {}

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler for `POST {CALLBACK_PATH_PREFIX}{token}`: the app's answer (or
        a duplicate's 200). A refusal is raised as its `SendguardError`, a bug as
        `InternalError`: the middleware renders them and records the decision."""
        started = time.monotonic()
        trace = _Trace()
        try:
            response = await self._handle(request, trace)
        except SendguardError as error:
            trace.outcome = error.reason
            _log_callback(trace, error.status, started)
            raise
        except web.HTTPException as http_error:  # aiohttp's own, e.g. 413 for a huge body
            trace.outcome = f"http-{http_error.status}"
            _log_callback(trace, http_error.status, started)
            raise
        except Exception as exc:  # a bug: Twilio-shaped 500 (Twilio may retry), type logged
            internal = InternalError()
            trace.outcome = internal.reason
            trace.failure = type(exc).__name__
            _log_callback(trace, internal.status, started)
            raise internal from exc
        _log_callback(trace, response.status, started)
        return response

    async def _handle(self, request: web.Request, trace: _Trace) -> web.Response:
        check_method(request.method)
        callback = await self._read(request, trace)
        check_account(callback)
        auth_token = verified_auth_token(
            self._tokens.tokens_for(callback.binding.account_sid),
            callback,
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        await self._learn(callback, trace, auth_token)
        dedup_key = idempotency_token(request.headers.get(IDEMPOTENCY_HEADER, ""))
        if dedup_key is None:
            answer = await self._forward(callback, auth_token, request, trace)
        else:
            if await self._seen(dedup_key, trace):
                trace.outcome = DUPLICATE
                return web.Response(status=200)
            answer = await self._forward_once(dedup_key, callback, auth_token, request, trace)
        if answer is None:
            raise CallbackUndeliverable(reason=UNDELIVERABLE)
        trace.app_status = answer.status
        trace.outcome = trace.outcome or DELIVERED
        return _relay(answer)

    async def _read(self, request: web.Request, trace: _Trace) -> InboundCallback:
        signed_url, token = locate_token(self._codec.public_url, request.raw_path)
        unwrapped = unwrap_token(self._codec, token)
        trace.account = unwrapped.binding.account_sid
        trace.destination = loggable_url(unwrapped.original_url)
        body = await request.read()
        return parse_callback(
            unwrapped, signed_url, body, request.headers.get(hdrs.CONTENT_TYPE, "")
        )

    # -- learning and dedup -----------------------------------------------------------------

    async def _learn(self, callback: InboundCallback, trace: _Trace, auth_token: str) -> None:
        status = delivery_status(callback)
        if status is None:
            return  # not a message status (a call's, say): forwarded, nothing to learn
        trace.message_sid = status.message_sid
        trace.status = status.status
        trace.error_code = status.error_code
        trace.to = mask_phone(status.to)
        bound = callback.binding
        if not is_bound_recipient(bound, status.to):
            # Not the recipient this URL was made for: a callback teaches only about its own
            # message. Forwarded all the same (its signature is the bound account's).
            trace.learn_skipped = RECIPIENT_MISMATCH
            return
        try:
            await self._learner.learn_delivery(status)
        except Exception as error:  # the app still gets its callback
            trace.learn_error = type(error).__name__
        if self._resolver is not None and status.message_sid:
            # Evidence for an UNKNOWN send: this callback is for this very send (the URL is
            # bound to it), so its SID resolves the record even if no retry ever comes.
            try:
                await self._resolver(bound, status.message_sid, auth_token)
            except Exception as error:
                trace.learn_error = type(error).__name__

    async def _seen(self, idempotency_token: str, trace: _Trace) -> bool:
        try:
            return await self._deduper.seen(idempotency_token)
        except Exception as error:  # can't tell: forwarding twice beats dropping it
            trace.dedup_error = type(error).__name__
            return False

    async def _mark_forwarded(self, idempotency_token: str, trace: _Trace) -> None:
        try:
            await self._deduper.mark_forwarded(idempotency_token)
        except Exception as error:
            trace.dedup_error = type(error).__name__

    # -- forwarding -------------------------------------------------------------------------

    async def _forward_once(
        self,
        idempotency_token: str,
        callback: InboundCallback,
        auth_token: str,
        request: web.Request,
        trace: _Trace,
    ) -> AppAnswer | None:
        pending = self._in_flight.get(idempotency_token)
        if pending is not None:
            trace.outcome = DUPLICATE_IN_FLIGHT
            return await asyncio.shield(pending)
        future: asyncio.Future[AppAnswer | None] = asyncio.get_running_loop().create_future()
        self._in_flight[idempotency_token] = future
        answer: AppAnswer | None = None
        try:
            answer = await self._forward(callback, auth_token, request, trace)
            if answer is not None:
                await self._mark_forwarded(idempotency_token, trace)
        finally:
            del self._in_flight[idempotency_token]
            future.set_result(answer)
        return answer

    async def _forward(
        self, callback: InboundCallback, auth_token: str, request: web.Request, trace: _Trace
    ) -> AppAnswer | None:
        target, signed = callback_target(callback.original_url, callback.body_hash)
        if callback.body_hash is None:
            signature = compute_signature(auth_token, signed, callback.params)
        else:
            signature = compute_signature(auth_token, signed, ())
        headers = callback_headers(request.headers, callback.content_type, signature)
        url = URL(target, encoded=True) if target.isascii() else URL(target)
        for attempt in range(1, self._attempts + 1):
            trace.attempts = attempt
            answer = await self._post(url, callback.body, headers, trace)
            if answer is not None:
                return answer
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        return None

    async def _post(
        self, url: URL, body: bytes, headers: CIMultiDict[str], trace: _Trace
    ) -> AppAnswer | None:
        """The app's answer if it took the callback (any status below 500), else None."""
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
                skip_auto_headers=(hdrs.USER_AGENT,),
            ) as response:
                trace.app_status = response.status
                content = await _read_bounded(response.content, _MAX_APP_ANSWER_BYTES)
                if response.status >= 500:
                    return None
                return AppAnswer(response.status, content, response.headers.get(hdrs.CONTENT_TYPE))
        except (aiohttp.ClientError, TimeoutError):
            trace.app_status = None
            return None


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _relay(answer: AppAnswer) -> web.Response:
    """The app's answer, for Twilio: its status, body and content type."""
    if answer.status < 200 or answer.status in _NO_BODY_STATUSES:
        return web.Response(status=answer.status)
    headers = {hdrs.CONTENT_TYPE: answer.content_type} if answer.content_type else None
    return web.Response(status=answer.status, body=answer.body, headers=headers)


def _log_callback(trace: _Trace, http_status: int, started: float) -> None:
    ok = trace.outcome in (DELIVERED, DUPLICATE, DUPLICATE_IN_FLIGHT)
    clean = ok and not trace.learn_error and not trace.learn_skipped and not trace.dedup_error
    emit = log.error if trace.failure else log.info if clean else log.warning
    emit(
        CALLBACK_FINISHED,
        **asdict(replace(trace, http_status=http_status)),
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
