"""The status-callback tee wired into sendguard, end to end on real sockets.

The app sends through sendguard with its own StatusCallback; the fake Twilio (the sandbox) sends
real signed callbacks to whatever StatusCallback reached it, i.e. sendguard's tee URL. The
"app" is a small aiohttp server that checks every callback with twilio-python's own
`RequestValidator`, as a real app would.
"""

from __future__ import annotations

import aiohttp
import pytest

from proxy.sandbox.faults import Fault
from proxy.sandbox.state import CallbackAttempt
from proxy.tee import CALLBACK_PATH_PREFIX
from tests.harness import ACCOUNT, SENDER, TOKEN, post_send
from tests.servers import free_port
from tests.webapps import SignatureCheckingApp, serving

TO = "+15558675310"
APP_PATH = "/twilio/status?tenant=7"


@pytest.fixture
async def app_receiver():
    """The app's status-callback endpoint (POST /twilio/status only)."""
    receiver = SignatureCheckingApp()
    async with serving(receiver.handle, method="POST", path="/twilio/status") as base:
        receiver.url = f"{base}{APP_PATH}"
        yield receiver


@pytest.fixture
async def teed(proxies, fake_twilio, shared_redis_url):
    """Two instances behind one public URL (the first one's address), one shared store. The
    second knows the auth token from configuration only: it has seen no send."""
    port = free_port()
    common = {
        "upstream": fake_twilio.url,
        "redis_url": shared_redis_url,
        "public_url": f"http://127.0.0.1:{port}",
    }
    first = await proxies.start(port=port, **common)
    second = await proxies.start(twilio_auth_tokens={ACCOUNT: TOKEN}, **common)
    fake_twilio.send_callbacks = True
    return first, second


def send_form(app_url: str, body: str = "Your code is 1234") -> list[tuple[str, str]]:
    return [("To", TO), ("From", SENDER), ("Body", body), ("StatusCallback", app_url)]


def callback_to_app(receiver: SignatureCheckingApp, status: str) -> tuple[dict[str, str], bool]:
    matching = [item for item in receiver.received if item[0].get("MessageStatus") == status]
    assert len(matching) == 1, receiver.received
    return matching[0]


async def replay_attempt(
    http: aiohttp.ClientSession, base: str, attempt: CallbackAttempt, **changes: str
) -> tuple[int, bytes, str]:
    """Re-deliver a callback the sandbox sent, to `base` (an instance), optionally altered:
    status, body and sendguard's decision."""
    path = attempt.url.split("://", 1)[1].split("/", 1)[1]
    headers = {**attempt.headers, **changes}
    async with http.post(f"{base}/{path}", data=attempt.params, headers=headers) as response:
        return response.status, await response.read(), response.headers["X-Sendguard-Decision"]


async def test_a_30007_callback_reaches_the_app_re_signed_and_suppresses_the_resend(
    teed, fake_twilio, app_receiver, http
):
    first, _ = teed
    fake_twilio.push_fault(Fault("undelivered", code=30007))
    status, headers, body = await post_send(http, first.url, send_form(app_receiver.url), key="k1")
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    # Twilio was given sendguard's URL, the app keeps seeing its own.
    sent_callback = fake_twilio.create_requests()[0].form_value("StatusCallback")
    assert sent_callback.startswith(first.url + CALLBACK_PATH_PREFIX)
    assert body["sid"].startswith("SM")

    await fake_twilio.wait_for_callbacks(2)
    assert [a.status for a in fake_twilio.callbacks_sent] == [204, 204]
    form, valid = callback_to_app(app_receiver, "undelivered")
    assert valid, "RequestValidator must accept the tee's signature for the app's own URL"
    assert (form["ErrorCode"], form["MessageSid"]) == ("30007", body["sid"])
    assert callback_to_app(app_receiver, "sent")[1]

    # The app retries the failed message under a fresh key: carriers filtered it, so no.
    status, headers, error = await post_send(http, first.url, send_form(app_receiver.url), key="k2")
    assert (status, headers["X-Sendguard-Decision"], error["code"]) == (400, "suppressed", 30007)
    # Other content to that recipient is not this message: it still goes.
    status, headers, _ = await post_send(
        http, first.url, send_form(app_receiver.url, "A different text"), key="k3"
    )
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 2


async def test_the_fingerprint_is_the_apps_form_so_a_duplicate_is_still_replayed(
    teed, fake_twilio, app_receiver, http
):
    first, second = teed
    status, headers, body = await post_send(http, first.url, send_form(app_receiver.url))
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, again = await post_send(http, second.url, send_form(app_receiver.url))
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert again["sid"] == body["sid"]
    assert fake_twilio.creates == 1


async def test_a_redelivered_callback_is_forwarded_once_by_any_instance(
    teed, fake_twilio, app_receiver, http
):
    first, second = teed
    await post_send(http, first.url, send_form(app_receiver.url))
    await fake_twilio.wait_for_callbacks(2)
    assert len(app_receiver.received) == 2
    delivered = fake_twilio.callbacks_sent[-1]
    # Twilio retries the same event (same idempotency token) at the other instance.
    status, _, decision = await replay_attempt(http, second.url, delivered)
    assert (status, decision) == (200, "callback")
    status, _, _ = await replay_attempt(http, first.url, delivered)
    assert status == 200
    assert len(app_receiver.received) == 2
    # A new event (new token) with the same signature is a new delivery: forwarded.
    new_token = {"I-Twilio-Idempotency-Token": "another-event"}
    status, _, decision = await replay_attempt(http, second.url, delivered, **new_token)
    assert (status, decision) == (204, "callback")  # the app's own answer
    assert len(app_receiver.received) == 3


async def test_a_bad_signature_is_refused_and_nothing_is_forwarded(
    teed, fake_twilio, app_receiver, http
):
    first, second = teed
    await post_send(http, first.url, send_form(app_receiver.url))
    await fake_twilio.wait_for_callbacks(2)
    attempt = fake_twilio.callbacks_sent[0]
    forged = {"X-Twilio-Signature": "Zm9yZ2VkIHNpZ25hdHVyZQ==", "I-Twilio-Idempotency-Token": "x"}
    for base in (first.url, second.url):
        status, body, decision = await replay_attempt(http, base, attempt, **forged)
        assert (status, decision) == (403, "refused")
        assert b"79040" in body
    assert len(app_receiver.received) == 2


async def test_a_tampered_callback_token_is_refused(teed, fake_twilio, app_receiver, http):
    first, _ = teed
    await post_send(http, first.url, send_form(app_receiver.url))
    await fake_twilio.wait_for_callbacks(2)
    attempt = fake_twilio.callbacks_sent[0]
    _, token = attempt.url.split(CALLBACK_PATH_PREFIX)
    encoded_url, mac = token.split(".")
    evil = "aHR0cDovL2V2aWwuZXhhbXBsZS9zdGVhbA"  # base64url("http://evil.example/steal")
    for tampered in (f"{evil}.{mac}", f"{encoded_url}.{mac[:-2]}AA", encoded_url, "garbage"):
        path = f"{CALLBACK_PATH_PREFIX}{tampered}"
        async with http.post(first.url + path, data=attempt.params, headers=attempt.headers) as r:
            assert r.status == 400, tampered
            assert r.headers["X-Sendguard-Decision"] == "invalid-request"
    assert len(app_receiver.received) == 2


async def test_a_send_without_status_callback_is_forwarded_untouched(
    teed, fake_twilio, app_receiver, http
):
    first, _ = teed
    form = [("To", TO), ("From", SENDER), ("Body", "no callback")]
    status, _, _ = await post_send(http, first.url, form)
    assert status == 201
    assert fake_twilio.create_requests()[0].form_value("StatusCallback") is None


async def test_callbacks_are_refused_when_the_tee_is_off(proxies, fake_twilio, http):
    plain = await proxies.start(upstream=fake_twilio.url)
    async with http.post(plain.url + CALLBACK_PATH_PREFIX + "x.y", data={"a": "b"}) as response:
        assert response.status == 404
        assert (await response.json())["code"] == 79043
    assert fake_twilio.received == []  # not forwarded to Twilio either
