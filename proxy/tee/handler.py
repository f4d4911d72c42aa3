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

The URL Twilio signed is rebuilt from the configured public URL and the request's raw path and
query, never from the Host header (behind a load balancer that is an internal name). The one
log line per callback carries the account, message SID, status, error code and outcome, the
recipient masked, the destination as scheme://host/path only (a query may carry secrets), and
never an auth token or signature.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from proxy.errors import (
    CallbackForbidden,
    CallbackMethodNotAllowed,
    CallbackUndeliverable,
    InternalError,
    InvalidRequest,
    SendguardError,
)
from proxy.guard.facts import normalise_recipient, recipient_tag
from proxy.logs import get_logger, mask_phone
from proxy.tee.rewrite import callback_headers, callback_target
from proxy.tee.signing import (
    BODY_HASH_PARAM,
    SIGNATURE_HEADER,
    compute_signature,
    matching_token,
    query_value,
)
from proxy.tee.tokens import AuthTokenBook
from proxy.tee.urls import (
    CALLBACK_PATH_PREFIX,
    CallbackBinding,
    CallbackUrlCodec,
    OutdatedCallbackToken,
)

log = get_logger("sendguard.tee")

# (the send the callback URL is bound to, the callback's Message SID, the verified auth token)
UnknownResolver = Callable[[CallbackBinding, str, str], Awaitable[None]]

CALLBACK_FINISHED = "callback_finished"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
DEDUP_TTL_SECONDS = 24 * 3600.0

ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}", re.ASCII)
_MAX_FORM_FIELDS = 1000
_MAX_APP_ANSWER_BYTES = 64 * 1024
_MAX_IDEMPOTENCY_TOKEN_CHARS = 256
_NO_BODY_STATUSES = frozenset({204, 304})
# The error a callback was answered with, when the tee refused it (absent: the app's answer).
REFUSAL: web.RequestKey[SendguardError] = web.RequestKey("sendguard_callback_refusal")


# -- outcomes and errors ---------------------------------------------------------------------

DELIVERED = "delivered"
DUPLICATE = "duplicate"
DUPLICATE_IN_FLIGHT = "duplicate-in-flight"
UNDELIVERABLE = "callback-undeliverable"
SIGNATURE_INVALID = "callback-signature-invalid"
ACCOUNT_UNKNOWN = "callback-account-unknown"
ACCOUNT_MISMATCH = "callback-account-mismatch"
CALLBACK_URL_INVALID = "callback-token-invalid"
CALLBACK_URL_OUTDATED = "callback-token-outdated"
RECIPIENT_MISMATCH = "recipient-mismatch"
BODY_INVALID = "callback-body-invalid"
METHOD_NOT_ALLOWED = "callback-method-not-allowed"


# -- the hooks -------------------------------------------------------------------------------


class DeliveryStatus(NamedTuple):
    account_sid: str
    message_sid: str
    status: str
    error_code: int | None
    to: str
    sender: str  # MessagingServiceSid, else From: as a send's facts name the sender


class CallbackLearner(Protocol):
    async def learn_delivery(self, status: DeliveryStatus) -> None: ...


class CallbackDeduper(Protocol):
    async def seen(self, idempotency_token: str) -> bool: ...  # already forwarded successfully?

    async def mark_forwarded(self, idempotency_token: str) -> None: ...


class MemoryCallbackDeduper:
    """Forwarded idempotency tokens of this process, for 24 h, at most `max_entries` of them."""

    def __init__(
        self,
        *,
        ttl: float = DEDUP_TTL_SECONDS,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._expiries: dict[str, float] = {}  # insertion order is expiry order (one TTL)

    async def seen(self, idempotency_token: str) -> bool:
        self._expire()
        return idempotency_token in self._expiries

    async def mark_forwarded(self, idempotency_token: str) -> None:
        self._expire()
        self._expiries.pop(idempotency_token, None)
        self._expiries[idempotency_token] = self._clock() + self._ttl
        while len(self._expiries) > self._max_entries:
            del self._expiries[next(iter(self._expiries))]

    @property
    def size(self) -> int:
        return len(self._expiries)

    def _expire(self) -> None:
        now = self._clock()
        while self._expiries:
            oldest = next(iter(self._expiries))
            if self._expiries[oldest] > now:
                return
            del self._expiries[oldest]


# -- one callback ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InboundCallback:
    """What Twilio sent, verified or not yet."""

    account_sid: str  # the bound account (the body's AccountSid is checked against it)
    claimed_account: str  # the body's AccountSid; "" unless well-formed
    binding: CallbackBinding  # the send the callback URL was made for
    original_url: str
    signed_url: str  # the URL Twilio called, as it signed it
    body: bytes
    content_type: str
    params: tuple[tuple[str, str], ...]  # the signed form params; () for a JSON body
    fields: Mapping[str, str]  # first value of each field, form or top-level JSON
    body_hash: str | None  # bodySHA256 of a JSON callback

    def field(self, name: str) -> str:
        """A Twilio field by its form name; JSON bodies may spell it camelCase."""
        return self.fields.get(name) or self.fields.get(name[:1].lower() + name[1:]) or ""


@dataclass(frozen=True)
class AppAnswer:
    status: int
    body: bytes
    content_type: str | None


@dataclass
class _Trace:
    """The fields of the one log line, filled in as the callback goes."""

    outcome: str = ""
    account: str = ""
    message_sid: str = ""
    status: str = ""
    error_code: int | None = None
    to: str = ""
    destination: str = ""
    attempts: int = 0
    app_status: int | None = None
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
        """The aiohttp handler for `POST {CALLBACK_PATH_PREFIX}{token}`."""
        started = time.monotonic()
        trace = _Trace()
        try:
            response = await self._handle(request, trace)
        except SendguardError as error:
            trace.outcome = error.reason
            request[REFUSAL] = error
            response = _render(error)
        except web.HTTPException as http_error:  # aiohttp's own, e.g. 413 for a huge body
            trace.outcome = f"http-{http_error.status}"
            _log_callback(trace, http_error.status, started)
            raise
        except Exception as exc:  # a bug: Twilio-shaped 500 (Twilio may retry), type logged
            internal = InternalError()
            trace.outcome = internal.reason
            trace.failure = type(exc).__name__
            request[REFUSAL] = internal
            response = _render(internal)
        _log_callback(trace, response.status, started)
        return response

    async def _handle(self, request: web.Request, trace: _Trace) -> web.Response:
        if request.method != hdrs.METH_POST:
            raise CallbackMethodNotAllowed(reason=METHOD_NOT_ALLOWED)
        callback = await self._read(request, trace)
        _check_account(callback)
        auth_token = self._verify(callback, request.headers.get(SIGNATURE_HEADER, ""))
        await self._learn(callback, trace, auth_token)
        idempotency_token = _idempotency_token(request)
        if idempotency_token is None:
            answer = await self._forward(callback, auth_token, request, trace)
        else:
            if await self._seen(idempotency_token, trace):
                trace.outcome = DUPLICATE
                return web.Response(status=200)
            answer = await self._forward_once(
                idempotency_token, callback, auth_token, request, trace
            )
        if answer is None:
            raise CallbackUndeliverable(reason=UNDELIVERABLE)
        trace.app_status = answer.status
        trace.outcome = trace.outcome or DELIVERED
        return _relay(answer)

    # -- reading and verifying --------------------------------------------------------------

    async def _read(self, request: web.Request, trace: _Trace) -> InboundCallback:
        raw_path = request.raw_path
        start = raw_path.find(CALLBACK_PATH_PREFIX)
        if start < 0:
            raise InvalidRequest("not a callback URL", reason=CALLBACK_URL_INVALID)
        # Whatever sits in front of the prefix (a path the load balancer strips) is the public
        # URL's own path, already part of `public_url`.
        signed_url = self._codec.public_url + raw_path[start:]
        token = urlsplit(raw_path[start + len(CALLBACK_PATH_PREFIX) :]).path
        try:
            unwrapped = self._codec.unwrap(token)
        except OutdatedCallbackToken:
            raise InvalidRequest(
                "callback URL made by an older sendguard, not bound to an account: no longer "
                "accepted",
                reason=CALLBACK_URL_OUTDATED,
            ) from None
        except ValueError:
            raise InvalidRequest(
                "invalid callback URL token", reason=CALLBACK_URL_INVALID
            ) from None
        binding = unwrapped.binding
        trace.account = binding.account_sid
        trace.destination = _loggable_url(unwrapped.original_url)
        body = await request.read()
        body_hash = query_value(signed_url, BODY_HASH_PARAM)
        content_type = request.headers.get(hdrs.CONTENT_TYPE, "")
        if body_hash is not None:
            params: tuple[tuple[str, str], ...] = ()
            fields = _json_fields(body)
        else:
            params = _parse_form(body)
            fields = dict(reversed(params))  # first value wins, as Twilio reads a field
        claimed = fields.get("AccountSid") or fields.get("accountSid") or ""
        return InboundCallback(
            account_sid=binding.account_sid,
            claimed_account=claimed if ACCOUNT_SID.fullmatch(claimed) else "",
            binding=binding,
            original_url=unwrapped.original_url,
            signed_url=signed_url,
            body=body,
            content_type=content_type or ("application/json" if body_hash else FORM_CONTENT_TYPE),
            params=params,
            fields=fields,
            body_hash=body_hash,
        )

    def _verify(self, callback: InboundCallback, signature: str) -> str:
        """The bound account's auth token the callback is signed with; CallbackForbidden when
        there is none. Never the tokens of the account the body claims: that one is checked
        to be the bound one first, and a forger may hold a valid token of their own."""
        tokens = self._tokens.tokens_for(callback.binding.account_sid)
        if not tokens:
            raise CallbackForbidden(
                "no auth token is known for the callback's account", reason=ACCOUNT_UNKNOWN
            )
        raw_body = callback.body if callback.body_hash is not None else None
        fragment = urlsplit(callback.original_url).fragment
        # A fragment on the wrapped URL is not sent to us; Twilio is taken to sign without it,
        # but a signature with it is accepted too.
        candidates = [callback.signed_url]
        if fragment:
            candidates.append(f"{callback.signed_url}#{fragment}")
        for url in candidates:
            token = matching_token(tokens, url, callback.params, signature, raw_body)
            if token is not None:
                return token
        raise CallbackForbidden(reason=SIGNATURE_INVALID)

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
        if recipient_tag(bound.account_sid, normalise_recipient(status.to)) != bound.recipient_tag:
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


# -- pure helpers ----------------------------------------------------------------------------


def delivery_status(callback: InboundCallback) -> DeliveryStatus | None:
    """What a message status callback reports; None when it is not one (no SID or status)."""
    message_sid = callback.field("MessageSid") or callback.field("SmsSid")
    status = callback.field("MessageStatus") or callback.field("SmsStatus")
    if not message_sid or not status:
        return None
    code = callback.field("ErrorCode").strip()
    error_code = int(code) if code.isascii() and code.isdigit() and int(code) > 0 else None
    return DeliveryStatus(
        account_sid=callback.account_sid,
        message_sid=message_sid,
        status=status,
        error_code=error_code,
        to=callback.field("To"),
        sender=callback.field("MessagingServiceSid") or callback.field("From"),
    )


def _check_account(callback: InboundCallback) -> None:
    """CallbackForbidden unless the body's AccountSid is the account the URL is bound to."""
    if callback.claimed_account != callback.binding.account_sid:
        raise CallbackForbidden(
            "the callback's AccountSid is not the account its callback URL was made for",
            reason=ACCOUNT_MISMATCH,
        )


def _idempotency_token(request: web.Request) -> str | None:
    value = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
    if not value or len(value) > _MAX_IDEMPOTENCY_TOKEN_CHARS or not value.isascii():
        return None  # absent or unusable as a key: forwarded without dedup
    return value


def _parse_form(body: bytes) -> tuple[tuple[str, str], ...]:
    try:
        text = body.decode("utf-8")
        return tuple(parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS))
    except ValueError:  # UnicodeDecodeError included
        raise InvalidRequest("the callback body is not form data", reason=BODY_INVALID) from None


def _json_fields(body: bytes) -> dict[str, str]:
    try:
        document: Any = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return {
        str(key): str(value)
        for key, value in document.items()
        if isinstance(value, str | int) and not isinstance(value, bool)
    }


def _loggable_url(url: str) -> str:
    """scheme://host[:port]/path: no userinfo, query or fragment, which may carry secrets."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


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


def _render(error: SendguardError) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.body_bytes(),
        content_type="application/json",
        headers=error.headers(),
    )


def _log_callback(trace: _Trace, http_status: int, started: float) -> None:
    ok = trace.outcome in (DELIVERED, DUPLICATE, DUPLICATE_IN_FLIGHT)
    clean = ok and not trace.learn_error and not trace.learn_skipped and not trace.dedup_error
    emit = log.error if trace.failure else log.info if clean else log.warning
    emit(
        CALLBACK_FINISHED,
        outcome=trace.outcome,
        account=trace.account,
        message_sid=trace.message_sid,
        status=trace.status,
        error_code=trace.error_code,
        to=trace.to,
        destination=trace.destination,
        http_status=http_status,
        app_status=trace.app_status,
        attempts=trace.attempts,
        learn_error=trace.learn_error,
        learn_skipped=trace.learn_skipped,
        dedup_error=trace.dedup_error,
        failure=trace.failure,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
