"""The status-callback tee on real sockets: a tee app in front of an "app" receiver that records
what it got, callbacks signed the way Twilio signs them, and the sandbox sending real ones."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest
import structlog
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from twilio.request_validator import RequestValidator

from proxy.guard.facts import recipient_tag
from proxy.sandbox import SandboxState, start_sandbox
from proxy.sandbox.faults import Fault
from proxy.server.middleware import proxy_middleware
from proxy.tee import (
    CALLBACK_PATH_PREFIX,
    AuthTokenBook,
    CallbackBinding,
    CallbackTee,
    CallbackUrlCodec,
    DeliveryStatus,
    MemoryCallbackDeduper,
    encode_form,
    rewrite_status_callback,
)
from proxy.tee import handler as tee_handler
from tests.identities import ACCOUNT, OTHER_ACCOUNT, OTHER_TOKEN, SENDER, TOKEN, basic_auth
from tests.servers import free_port
from tests.webapps import serve_app

SECRET = b"k" * 32
PUBLIC = "https://sendguard.example.com"  # what Twilio calls; the tee listens on 127.0.0.1
TO = "+15558675310"
MESSAGE_SID = "SM" + "a" * 32
APP_SECRET_QUERY = "tenant=7&sig=app-own-secret"
# The send a wrapped URL is made for: ACCOUNT's send to TO.
BINDING = CallbackBinding(ACCOUNT, recipient_tag(ACCOUNT, TO), "k" + "0" * 40)


def callback_params(
    status: str = "undelivered",
    error_code: str | None = "30007",
    *,
    account: str = ACCOUNT,
    to: str = TO,
):
    params = [
        ("SmsSid", MESSAGE_SID),
        ("SmsStatus", status),
        ("MessageStatus", status),
        ("To", to),
        ("MessageSid", MESSAGE_SID),
        ("AccountSid", account),
        ("From", SENDER),
        ("ApiVersion", "2010-04-01"),
        ("Body", "Grüße & ✓"),  # not in real callbacks; here to exercise encoding
    ]
    if error_code is not None:
        params.append(("ErrorCode", error_code))
    return params


# -- the app behind the tee ------------------------------------------------------------------


@dataclass
class Received:
    url: str  # as the app sees it: scheme://host:port + path + query
    headers: CIMultiDict[str]
    body: bytes

    @property
    def form(self) -> MultiDict[str]:
        return MultiDict(parse_qsl(self.body.decode(), keep_blank_values=True))


@dataclass
class AppReceiver:
    """The app's status callback endpoint: records every request, answers as told."""

    base: str = ""
    status: int = 204
    fail_first: int = 0  # answer 500 to this many requests first
    delay_first: float = 0.0  # hold the first request this long
    delay_all: float = 0.0
    received: list[Received] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.received.append(Received(str(request.url), CIMultiDict(request.headers), body))
        if len(self.received) == 1 and self.delay_first:
            await asyncio.sleep(self.delay_first)
        if self.delay_all:
            await asyncio.sleep(self.delay_all)
        if len(self.received) <= self.fail_first:
            return web.Response(status=500, text="boom")
        if self.status == 204:
            return web.Response(status=204)
        return web.Response(status=self.status, text="<Response/>", content_type="text/xml")

    def url(self, path: str = "/twilio/status", query: str = APP_SECRET_QUERY) -> str:
        return f"{self.base}{path}" + (f"?{query}" if query else "")


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    return await serve_app(app, shutdown_timeout=1)


@pytest.fixture
async def receiver() -> AsyncIterator[AppReceiver]:
    app_receiver = AppReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", app_receiver.handle)
    runner, app_receiver.base = await serve(app)
    yield app_receiver
    await runner.cleanup()


# -- the tee ---------------------------------------------------------------------------------


@dataclass
class RecordingLearner:
    learned: list[DeliveryStatus] = field(default_factory=list)
    fail: bool = False

    async def learn_delivery(self, status: DeliveryStatus) -> None:
        self.learned.append(status)
        if self.fail:
            raise RuntimeError("learner is broken")


@dataclass
class Tee:
    base: str  # where the tee really listens
    codec: CallbackUrlCodec
    tokens: AuthTokenBook
    learner: RecordingLearner
    deduper: MemoryCallbackDeduper
    http: aiohttp.ClientSession

    def wrap(self, original: str, binding: CallbackBinding = BINDING) -> str:
        return self.codec.wrap(original, binding)

    async def post(
        self,
        wrapped: str,
        params: list[tuple[str, str]] | None = None,
        *,
        token: str = TOKEN,
        signed_url: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        method: str = "POST",
    ) -> tuple[int, bytes]:
        """POST like Twilio: sign `signed_url` (default: the wrapped URL), send to the tee."""
        params = callback_params() if params is None else params
        signature_url = signed_url or wrapped.partition("#")[0]
        all_headers = {
            "X-Twilio-Signature": RequestValidator(token).compute_signature(
                signature_url, MultiDict(params)
            ),
            "User-Agent": "TwilioProxy/1.1",
            "Content-Type": "application/x-www-form-urlencoded",
            **(headers or {}),
        }
        path = wrapped.partition("#")[0].removeprefix(self.codec.public_url)
        data = encode_form(params) if body is None else body
        async with self.http.request(
            method, self.base + path, data=data, headers=all_headers
        ) as response:
            return response.status, await response.read()


async def start_tee(
    public_url: str | None = PUBLIC,
    *,
    configured: dict[str, str] | None = None,
    attempts: int = 3,
    timeout: float = 2.0,
    deduper: MemoryCallbackDeduper | None = None,
) -> tuple[web.AppRunner, Tee, aiohttp.ClientSession]:
    """A tiny app with the tee mounted at CALLBACK_PATH_PREFIX + "{token}", behind the proxy's
    middleware (which renders the refusals the tee raises). With no public URL, the tee's own
    base URL is used (for the sandbox, which really calls it)."""
    holder: dict[str, CallbackTee] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        return await holder["tee"].handle(request)

    app = web.Application(middlewares=[proxy_middleware])
    app.router.add_route("*", CALLBACK_PATH_PREFIX + "{token}", handle)
    runner, base = await serve(app)
    session = aiohttp.ClientSession()
    codec = CallbackUrlCodec(public_url or base, SECRET)
    tokens = AuthTokenBook({ACCOUNT: TOKEN} if configured is None else configured)
    learner = RecordingLearner()
    deduper = MemoryCallbackDeduper() if deduper is None else deduper
    holder["tee"] = CallbackTee(
        codec=codec,
        tokens=tokens,
        learner=learner,
        deduper=deduper,
        session=session,
        attempts=attempts,
        backoff=0.01,
        timeout=timeout,
    )
    return runner, Tee(base, codec, tokens, learner, deduper, session), session


@pytest.fixture
async def tee() -> AsyncIterator[Tee]:
    runner, the_tee, session = await start_tee()
    yield the_tee
    await runner.cleanup()
    await session.close()


class TeeEvents(Sequence[dict[str, Any]]):
    """The tee's own lines among the captured ones, as they come (the middleware in front of
    it may log its `request_finished` line too)."""

    def __init__(self, captured: list[dict[str, Any]]) -> None:
        self._captured = captured

    def _events(self) -> list[dict[str, Any]]:
        return [e for e in self._captured if e["event"] == tee_handler.CALLBACK_FINISHED]

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        return self._events()[index]

    def __len__(self) -> int:
        return len(self._events())

    def __repr__(self) -> str:
        return repr(self._events())


@pytest.fixture
def tee_logs(monkeypatch: pytest.MonkeyPatch):
    """Events the tee logs (a fresh logger, so earlier logging configuration does not matter)."""
    with structlog.testing.capture_logs() as captured:
        monkeypatch.setattr(tee_handler, "log", structlog.get_logger("sendguard.tee"))
        yield TeeEvents(captured)


def validates_for_app(received: Received, original_url: str) -> bool:
    signature = received.headers["X-Twilio-Signature"]
    return RequestValidator(TOKEN).validate(original_url, received.form, signature)


def twilio_error(body: bytes, status: int) -> dict[str, object]:
    payload = json.loads(body)
    assert set(payload) == {"code", "message", "more_info", "status"}
    assert payload["status"] == status
    assert str(payload["message"]).startswith("sendguard: ")
    return payload


# -- the happy path --------------------------------------------------------------------------


async def test_valid_callback_is_learned_and_forwarded_resigned(tee, receiver, tee_logs):
    original = receiver.url()
    params = callback_params("undelivered", "30007")
    status, _ = await tee.post(
        tee.wrap(original),
        params,
        headers={"I-Twilio-Idempotency-Token": "idem-1", "X-Twilio-Extra": "kept"},
    )

    assert status == 204
    [got] = receiver.received
    assert got.body == encode_form(params)  # the exact original body
    assert got.url == original  # the app's query string arrives untouched
    assert got.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert got.headers["I-Twilio-Idempotency-Token"] == "idem-1"
    assert got.headers["X-Twilio-Extra"] == "kept"
    assert got.headers["User-Agent"] == "TwilioProxy/1.1"
    assert validates_for_app(got, original)
    assert tee.learner.learned == [
        DeliveryStatus(
            account_sid=ACCOUNT,
            message_sid=MESSAGE_SID,
            status="undelivered",
            error_code=30007,
            to=TO,
            sender=SENDER,
        )
    ]

    [event] = [e for e in tee_logs if e["event"] == "callback_finished"]
    assert event["outcome"] == "delivered"
    assert (event["account"], event["message_sid"], event["error_code"]) == (
        ACCOUNT,
        MESSAGE_SID,
        30007,
    )
    assert event["status"] == "undelivered"
    assert event["destination"] == receiver.url(query="")
    text = repr(tee_logs)
    for secret in [
        TOKEN,
        TO,
        TO[1:],
        "app-own-secret",
        APP_SECRET_QUERY,
        got.headers["X-Twilio-Signature"],
    ]:
        assert secret not in text


async def test_app_answer_is_relayed_and_signature_settings_dropped(tee, receiver):
    receiver.status = 200
    status, body = await tee.post(
        tee.wrap(receiver.url()),
        callback_params("delivered", None),
        headers={"X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_SHA256"},
    )
    assert (status, body) == (200, b"<Response/>")
    assert "X-Twilio-Webhooks-Signature-Settings" not in receiver.received[0].headers
    assert tee.learner.learned[0].error_code is None


async def test_app_4xx_counts_as_delivered(tee, receiver):
    receiver.status = 404
    headers = {"I-Twilio-Idempotency-Token": "idem-404"}
    assert (await tee.post(tee.wrap(receiver.url()), headers=headers))[0] == 404
    assert (await tee.post(tee.wrap(receiver.url()), headers=headers))[0] == 200
    assert len(receiver.received) == 1


async def test_messaging_service_sender_and_call_callbacks(tee, receiver):
    params = [p for p in callback_params("sent", None) if p[0] != "From"]
    params.append(("MessagingServiceSid", "MG" + "1" * 32))
    assert (await tee.post(tee.wrap(receiver.url()), params))[0] == 204
    assert tee.learner.learned[-1].sender == "MG" + "1" * 32
    # a call's status callback is forwarded, but is no message delivery to learn
    call = [("CallSid", "CA" + "2" * 32), ("CallStatus", "busy"), ("AccountSid", ACCOUNT)]
    assert (await tee.post(tee.wrap(receiver.url()), call))[0] == 204
    assert len(tee.learner.learned) == 1
    assert len(receiver.received) == 2


# -- refusals: nothing forwarded, nothing learned --------------------------------------------


async def test_bad_signature_is_refused(tee, receiver, tee_logs):
    wrapped = tee.wrap(receiver.url())
    for kwargs in [
        {"token": "e" * 32},  # someone else's token
        {"signed_url": wrapped + "x"},  # signed for another URL
        {"headers": {"X-Twilio-Signature": ""}},
        {"body": encode_form([*callback_params(), ("Extra", "1")])},  # body changed after signing
    ]:
        status, body = await tee.post(wrapped, **kwargs)
        assert status == 403, kwargs
        assert twilio_error(body, 403)["code"] == 79040
    assert receiver.received == []
    assert tee.learner.learned == []
    assert {e["outcome"] for e in tee_logs} == {"callback-signature-invalid"}


async def test_unknown_account_is_refused(receiver):
    runner, tee, session = await start_tee(configured={OTHER_ACCOUNT: OTHER_TOKEN})
    try:
        status, body = await tee.post(tee.wrap(receiver.url()))
        assert status == 403
        assert "no auth token" in str(twilio_error(body, 403)["message"])
        assert receiver.received == []
        assert tee.learner.learned == []
    finally:
        await runner.cleanup()
        await session.close()


async def test_a_callback_claiming_another_account_than_its_url_is_refused(tee, receiver, tee_logs):
    other = callback_params(account=OTHER_ACCOUNT)
    no_account = [p for p in callback_params() if p[0] != "AccountSid"]
    malformed = callback_params(account="AC123")
    for params in (other, no_account, malformed):
        status, body = await tee.post(tee.wrap(receiver.url()), params)
        assert status == 403
        assert "AccountSid" in str(twilio_error(body, 403)["message"])
    assert receiver.received == []
    assert tee.learner.learned == []
    assert {e["outcome"] for e in tee_logs} == {"callback-account-mismatch"}
    assert {e["account"] for e in tee_logs} == {ACCOUNT}  # the bound one


async def test_a_forged_callback_on_a_captured_url_with_another_accounts_token_is_refused(
    receiver,
):
    """Both tokens are genuine and known (learned from each account's own sends). A forger
    holding OTHER_ACCOUNT's token, with a callback URL captured from ACCOUNT's send, gets
    nothing learned and nothing forwarded, whichever account the form claims."""
    runner, tee, session = await start_tee(configured={ACCOUNT: TOKEN, OTHER_ACCOUNT: OTHER_TOKEN})
    try:
        captured = tee.wrap(receiver.url())
        claims_other = callback_params(account=OTHER_ACCOUNT, to="+15550001111")
        status, body = await tee.post(captured, claims_other, token=OTHER_TOKEN)
        assert status == 403
        assert twilio_error(body, 403)["code"] == 79040
        status, _ = await tee.post(captured, callback_params(), token=OTHER_TOKEN)
        assert status == 403  # claims the bound account: checked with the bound account's token
        assert receiver.received == []
        assert tee.learner.learned == []
        # The other account's own URLs work with its own token, for its own recipient.
        own = CallbackBinding(OTHER_ACCOUNT, recipient_tag(OTHER_ACCOUNT, TO), "f" + "1" * 40)
        status, _ = await tee.post(
            tee.wrap(receiver.url(), own), callback_params(account=OTHER_ACCOUNT), token=OTHER_TOKEN
        )
        assert status == 204
        assert [s.account_sid for s in tee.learner.learned] == [OTHER_ACCOUNT]
    finally:
        await runner.cleanup()
        await session.close()


async def test_a_callback_about_another_recipient_is_forwarded_but_teaches_nothing(
    tee, receiver, tee_logs
):
    params = callback_params("undelivered", "30006", to="+15550001111")
    status, _ = await tee.post(tee.wrap(receiver.url()), params)
    assert status == 204  # signed with the bound account's token: the app gets it
    assert len(receiver.received) == 1
    assert validates_for_app(receiver.received[0], receiver.url())
    assert tee.learner.learned == []
    [event] = tee_logs
    assert (event["outcome"], event["learn_skipped"]) == ("delivered", "recipient-mismatch")
    assert event["log_level"] == "warning"
    # The bound recipient, spelled as Twilio may spell it, is learned.
    whatsapp = CallbackBinding(ACCOUNT, recipient_tag(ACCOUNT, "whatsapp:" + TO), "k" + "2" * 40)
    params = callback_params("undelivered", "30006", to="whatsapp:" + TO)
    assert (await tee.post(tee.wrap(receiver.url(), whatsapp), params))[0] == 204
    assert [s.to for s in tee.learner.learned] == ["whatsapp:" + TO]


async def test_an_old_unbound_token_is_refused_as_outdated(tee, receiver, tee_logs):
    """Tokens of the first format named no account: refused with a clear 400, not forwarded."""
    raw = receiver.url().encode()
    mac = hmac.new(SECRET, b"sendguard-callback-url-v1\x00" + raw, hashlib.sha256).digest()[:16]
    token = ".".join(base64.urlsafe_b64encode(part).decode().rstrip("=") for part in (raw, mac))
    status, body = await tee.post(tee.codec.callback_prefix + token)
    assert status == 400
    error = twilio_error(body, 400)
    assert error["code"] == 79011
    assert "older sendguard" in str(error["message"])
    assert receiver.received == []
    assert tee.learner.learned == []
    assert tee_logs[-1]["outcome"] == "callback-token-outdated"


async def test_tampered_token_is_refused(tee, receiver):
    wrapped = tee.wrap(receiver.url())
    token = wrapped.rpartition("/")[2]
    url_part, _, mac = token.partition(".")
    evil = base64.urlsafe_b64encode(b"http://169.254.169.254/latest").decode().rstrip("=")
    for bad in [
        f"{url_part}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        f"{evil}.{mac}",
        "garbage",
    ]:
        bad_url = wrapped.replace(token, bad)
        status, body = await tee.post(bad_url)  # validly signed for the URL it was sent to
        assert status == 400
        assert twilio_error(body, 400)["code"] == 79011
    assert receiver.received == []
    assert tee.learner.learned == []


async def test_only_post_is_taken(tee, receiver):
    status, body = await tee.post(tee.wrap(receiver.url()), method="GET", body=b"")
    assert status == 405
    assert twilio_error(body, 405)["code"] == 79042
    assert receiver.received == []


async def test_learner_errors_do_not_block_forwarding(tee, receiver, tee_logs):
    tee.learner.fail = True
    assert (await tee.post(tee.wrap(receiver.url())))[0] == 204
    assert len(receiver.received) == 1
    [event] = tee_logs
    assert (event["outcome"], event["learn_error"]) == ("delivered", "RuntimeError")
    assert event["log_level"] == "warning"


async def test_body_that_is_not_form_data_is_refused(tee, receiver):
    status, body = await tee.post(tee.wrap(receiver.url()), body=b"\xff\xfe=\x80")
    assert status == 400
    assert twilio_error(body, 400)["code"] == 79011
    assert receiver.received == []


async def test_a_bug_in_the_tee_is_a_twilio_shaped_500_logged_with_its_type(
    tee, receiver, tee_logs, monkeypatch
):
    def broken(account_sid: str) -> list[str]:
        raise KeyError(account_sid)

    monkeypatch.setattr(tee.tokens, "tokens_for", broken)
    status, body = await tee.post(tee.wrap(receiver.url()))
    assert status == 500
    assert twilio_error(body, 500)["code"] == 79030
    assert "AC" not in body.decode()  # never the exception's text
    assert receiver.received == []
    [event] = tee_logs
    assert (event["outcome"], event["failure"], event["http_status"]) == (
        "internal-error",
        "KeyError",
        500,
    )
    assert event["log_level"] == "error"


class BrokenDeduper(MemoryCallbackDeduper):
    async def seen(self, idempotency_token: str) -> bool:
        raise ConnectionError("store down")


async def test_deduper_errors_forward_rather_than_drop(receiver, tee_logs):
    runner, tee, session = await start_tee(deduper=BrokenDeduper())
    try:
        headers = {"I-Twilio-Idempotency-Token": "SM-event-1"}
        assert (await tee.post(tee.wrap(receiver.url()), headers=headers))[0] == 204
        assert len(receiver.received) == 1
        assert tee_logs[-1]["dedup_error"] == "ConnectionError"
        assert tee_logs[-1]["log_level"] == "warning"
    finally:
        await runner.cleanup()
        await session.close()


# -- redeliveries and retries ----------------------------------------------------------------


async def test_redelivery_with_the_same_idempotency_token_is_forwarded_once(tee, receiver):
    wrapped = tee.wrap(receiver.url())
    headers = {"I-Twilio-Idempotency-Token": "SM-event-1"}
    assert (await tee.post(wrapped, headers=headers))[0] == 204
    assert (await tee.post(wrapped, headers=headers))[0] == 200
    assert len(receiver.received) == 1
    # another event is another delivery; no token means no dedup
    assert (await tee.post(wrapped, headers={"I-Twilio-Idempotency-Token": "SM-event-2"}))[0] == 204
    assert (await tee.post(wrapped))[0] == 204
    assert (await tee.post(wrapped))[0] == 204
    assert len(receiver.received) == 4


async def test_concurrent_redeliveries_are_forwarded_once(tee, receiver):
    receiver.delay_first = 0.2
    wrapped = tee.wrap(receiver.url())
    headers = {"I-Twilio-Idempotency-Token": "SM-event-1"}
    results = await asyncio.gather(*(tee.post(wrapped, headers=headers) for _ in range(3)))
    assert [status for status, _ in results] == [204, 204, 204]
    assert len(receiver.received) == 1


async def test_app_failing_twice_gets_it_on_the_third_attempt(tee, receiver, tee_logs):
    receiver.fail_first = 2
    headers = {"I-Twilio-Idempotency-Token": "SM-event-1"}
    status, _ = await tee.post(tee.wrap(receiver.url()), headers=headers)
    assert status == 204
    assert len(receiver.received) == 3
    assert all(validates_for_app(got, receiver.url()) for got in receiver.received)
    assert len({got.headers["I-Twilio-Idempotency-Token"] for got in receiver.received}) == 1
    assert tee_logs[-1]["attempts"] == 3


async def test_slow_app_is_retried_after_a_timeout(receiver):
    runner, tee, session = await start_tee(timeout=0.3)
    try:
        receiver.delay_first = 0.6
        assert (await tee.post(tee.wrap(receiver.url())))[0] == 204
        assert len(receiver.received) == 2
    finally:
        await runner.cleanup()
        await session.close()


async def test_app_down_answers_502_so_twilio_retries(tee, receiver):
    down = f"http://127.0.0.1:{free_port()}/status"
    headers = {"I-Twilio-Idempotency-Token": "SM-event-1"}
    status, body = await tee.post(tee.wrap(down), headers=headers)
    assert status == 502
    assert twilio_error(body, 502)["code"] == 79041
    assert len(tee.learner.learned) == 1  # learned all the same
    # not marked forwarded: Twilio's retry is forwarded once the app is back
    receiver.fail_first = 3
    status, _ = await tee.post(tee.wrap(receiver.url()), headers=headers)
    assert status == 502
    assert len(receiver.received) == 3
    assert (await tee.post(tee.wrap(receiver.url()), headers=headers))[0] == 204


async def test_redirects_are_not_followed(tee, receiver):
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(receiver.url())

    app = web.Application()
    app.router.add_post("/cb", redirect)
    runner, base = await serve(app)
    try:
        status, _ = await tee.post(tee.wrap(f"{base}/cb"))
        assert status == 302  # the app's answer, relayed; a 3xx is below 500: delivered
        assert receiver.received == []
    finally:
        await runner.cleanup()


# -- URLs as Twilio signs them ---------------------------------------------------------------


async def test_signature_over_explicit_default_port_validates(tee, receiver):
    wrapped = tee.wrap(receiver.url())
    with_port = wrapped.replace(PUBLIC, PUBLIC + ":443")
    assert (await tee.post(wrapped, signed_url=with_port))[0] == 204
    assert validates_for_app(receiver.received[0], receiver.url())


async def test_public_url_with_a_path_behind_a_stripping_load_balancer(receiver):
    runner, tee, session = await start_tee("https://edge.example.com/sendguard")
    try:
        wrapped = tee.wrap(receiver.url())
        assert wrapped.startswith("https://edge.example.com/sendguard" + CALLBACK_PATH_PREFIX)
        # the balancer strips /sendguard; Twilio signed the full public URL
        assert (await tee.post(wrapped))[0] == 204
    finally:
        await runner.cleanup()
        await session.close()


async def test_connection_override_fragment_rides_along(tee, receiver):
    original = receiver.url() + "#rc=3&rp=all"
    wrapped = tee.wrap(original)
    assert wrapped.endswith("#rc=3&rp=all")
    assert (await tee.post(wrapped))[0] == 204
    got = receiver.received[0]
    assert got.url == receiver.url()
    assert validates_for_app(got, receiver.url())


async def test_userinfo_becomes_basic_auth_and_is_not_signed(tee, receiver):
    original = receiver.url().replace("http://", "http://user:pa55@")
    assert (await tee.post(tee.wrap(original)))[0] == 204
    got = receiver.received[0]
    assert got.headers["Authorization"] == "Basic " + base64.b64encode(b"user:pa55").decode()
    assert validates_for_app(got, receiver.url())


async def test_json_callback_with_body_sha256(tee, receiver):
    body = json.dumps(
        {
            "AccountSid": ACCOUNT,
            "MessageSid": MESSAGE_SID,
            "MessageStatus": "failed",
            "ErrorCode": 30007,
            "To": TO,
            "From": SENDER,
        }
    ).encode()
    digest = hashlib.sha256(body).hexdigest()
    wrapped = tee.wrap(receiver.url())
    signed = f"{wrapped}?bodySHA256={digest}"
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(signed, {}),
    }
    status, _ = await tee.post(signed, body=body, headers=headers, signed_url=signed)
    assert status == 204
    got = receiver.received[0]
    assert got.body == body
    assert got.headers["Content-Type"] == "application/json"
    assert urlsplit(got.url).query == f"{APP_SECRET_QUERY}&bodySHA256={digest}"
    assert RequestValidator(TOKEN).validate(
        got.url, body.decode(), got.headers["X-Twilio-Signature"]
    )
    assert tee.learner.learned[0].error_code == 30007
    # the body is covered: a changed one is refused
    assert (await tee.post(signed, body=body + b" ", headers=headers, signed_url=signed))[0] == 403
    assert len(receiver.received) == 1


async def test_learned_tokens_verify_callbacks(receiver):
    runner, tee, session = await start_tee(configured={})
    try:
        wrapped = tee.wrap(receiver.url())
        assert (await tee.post(wrapped))[0] == 403
        tee.tokens.learn_from_authorization(basic_auth())
        assert (await tee.post(wrapped))[0] == 204
    finally:
        await runner.cleanup()
        await session.close()


# -- the in-memory deduper -------------------------------------------------------------------


async def test_memory_deduper_expires_and_is_bounded():
    now = [0.0]
    deduper = MemoryCallbackDeduper(ttl=10, max_entries=3, clock=lambda: now[0])
    await deduper.mark_forwarded("a")
    now[0] = 5
    await deduper.mark_forwarded("b")
    assert await deduper.seen("a")
    now[0] = 10
    assert not await deduper.seen("a")  # expired
    assert await deduper.seen("b")
    for token in "cde":
        await deduper.mark_forwarded(token)
    assert deduper.size == 3
    assert not await deduper.seen("b")  # the oldest made room
    assert all([await deduper.seen(t) for t in "cde"])


# -- end to end with the sandbox sending real callbacks --------------------------------------


async def test_sandbox_callbacks_reach_the_app_resigned(receiver):
    runner, tee, session = await start_tee(None, configured={})
    sandbox_runner, sandbox_url, state = await start_sandbox(
        state=SandboxState(send_callbacks=True)
    )
    try:
        original = receiver.url()
        form = [("To", TO), ("From", SENDER), ("Body", "hello"), ("StatusCallback", original)]
        send = CallbackBinding(ACCOUNT, recipient_tag(ACCOUNT, TO), "f" + "3" * 40)
        rewritten = rewrite_status_callback(form, tee.codec, send)
        assert rewritten is not None
        auth = basic_auth()
        tee.tokens.learn_from_authorization(auth)  # as sendguard does from the send
        state.push_fault(Fault("undelivered", code=30007))
        async with session.post(
            f"{sandbox_url}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
            data=encode_form(rewritten),
            headers={"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 201
            message = await response.json()

        await state.wait_for_callbacks(2)
        assert [attempt.status for attempt in state.callbacks_sent] == [204, 204]
        assert all(attempt.url.startswith(tee.base) for attempt in state.callbacks_sent)
        assert len(receiver.received) == 2
        for got in receiver.received:
            assert got.url == original
            assert validates_for_app(got, original)
        assert [got.form["MessageStatus"] for got in receiver.received] == ["sent", "undelivered"]
        assert [(s.message_sid, s.status, s.error_code) for s in tee.learner.learned] == [
            (message["sid"], "sent", None),
            (message["sid"], "undelivered", 30007),
        ]
    finally:
        await sandbox_runner.cleanup()
        await runner.cleanup()
        await session.close()
