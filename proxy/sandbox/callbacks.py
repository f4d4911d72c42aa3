"""Status callbacks, sent like Twilio does: form POSTs signed with `X-Twilio-Signature`.

The signature (docs/twilio-facts.md#signature) is HMAC-SHA1 over the URL followed by each param name
and value, sorted, keyed with the account's auth token. The sandbox cannot know an account's
token, so it signs with the Basic-auth password of the create request: a client that sends
with its real token gets callbacks its own validator accepts.

Statuses move as on Twilio: queued → sent → delivered (or undelivered with an `ErrorCode`, for
the `undelivered` fault). No callback is sent for the initial status
(docs/twilio-facts.md#message-json): a send with a From starts `queued`, so its callbacks are
`sent`, `delivered`; a Messaging Service send starts `accepted`, so its callbacks are `queued`,
`sent`, `delivered`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from proxy.sandbox.messages import advance_status
from proxy.sandbox.responses import API_VERSION, utc_now
from proxy.sandbox.state import CallbackAttempt, SandboxState

SIGNATURE_HEADER = "X-Twilio-Signature"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
USER_AGENT = "TwilioProxy/1.1"
_TIMEOUT = aiohttp.ClientTimeout(total=10)


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    # Names sorted, each name's values sorted and de-duplicated: the same as sorting the pairs.
    payload = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class CallbackPlan:
    """Everything needed to report one message's delivery after the create was answered."""

    url: str
    auth_token: str
    account_sid: str
    message_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    error_code: int | None  # None: the message is delivered
    initial_status: str = "queued"  # the create's status: no callback is sent for it

    @property
    def statuses(self) -> tuple[str, ...]:
        final = "delivered" if self.error_code is None else "undelivered"
        queued = ("queued",) if self.initial_status in ("accepted", "scheduled") else ()
        return (*queued, "sent", final)


def callback_params(plan: CallbackPlan, status: str, now: datetime) -> list[tuple[str, str]]:
    """The form Twilio posts, in the order seen on real captures."""
    params = [
        ("SmsSid", plan.message_sid),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", plan.to),
        ("MessageSid", plan.message_sid),
        ("AccountSid", plan.account_sid),
    ]
    if plan.from_:
        params.append(("From", plan.from_))
    if plan.messaging_service_sid:
        params.append(("MessagingServiceSid", plan.messaging_service_sid))
    params.append(("ApiVersion", API_VERSION))
    if status == "undelivered" and plan.error_code is not None:
        params.append(("ErrorCode", str(plan.error_code)))
    if status in ("delivered", "undelivered"):
        params.append(("RawDlrDoneDate", now.strftime("%y%m%d%H%M")))
    return params


class CallbackSender:
    """Owns the HTTP session and the background tasks that deliver status callbacks."""

    def __init__(self, state: SandboxState) -> None:
        self._state = state
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def schedule(self, plan: CallbackPlan) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _deliver(self, plan: CallbackPlan) -> None:
        for status in plan.statuses:
            await asyncio.sleep(self._state.callback_interval)
            now = utc_now()
            message = self._state.messages.get(plan.message_sid)
            if message is not None:
                advance_status(message, status, now)
            await self._post_event(plan, callback_params(plan, status, now))

    async def _post_event(self, plan: CallbackPlan, params: list[tuple[str, str]]) -> None:
        headers = {
            SIGNATURE_HEADER: twilio_signature(plan.auth_token, plan.url, params),
            # Constant across retries of one event, so receivers can dedup redeliveries.
            IDEMPOTENCY_HEADER: f"{plan.message_sid}-{secrets.token_hex(16)}",
            "User-Agent": USER_AGENT,
        }
        for _ in range(1 + self._state.callback_retries):
            attempt = await self._post(plan.url, params, headers)
            self._state.record_callback(attempt)
            if attempt.status is not None and attempt.status < 500:
                return

    async def _post(
        self, url: str, params: list[tuple[str, str]], headers: dict[str, str]
    ) -> CallbackAttempt:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT)
        try:
            async with self._session.post(url, data=params, headers=headers) as response:
                await response.read()
                return CallbackAttempt(url, params, headers, response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            return CallbackAttempt(url, params, headers, None, error=repr(error))
