"""Reconciling UNKNOWN sends (SPEC §3.1): only positive evidence resolves one, never a blind
resend. The fake Twilio is sendguard's sandbox (which creates before it fails) or a small
aiohttp server below that answers 500 *without* creating; both count creates."""

from __future__ import annotations

import asyncio

import pytest

from proxy.sandbox import Fault
from proxy.server.app import METRICS, RUNTIME
from tests.harness import ACCOUNT, SENDER, in_thread, post_send, twilio_client

FORM = {"To": "+15558675310", "From": SENDER, "Body": "Your code is 4711"}


def list_calls(fake_twilio) -> int:
    return sum(
        1 for r in fake_twilio.received if r.method == "GET" and r.path.endswith("/Messages.json")
    )


async def test_create_then_500_is_found_in_the_list_and_replayed_with_its_sid(proxies, fake_twilio):
    from twilio.base.exceptions import TwilioRestException

    proxy = await proxies.start(upstream=fake_twilio.url)
    fake_twilio.push_fault(Fault("500-after-create"))
    client = twilio_client(proxy.url)
    with pytest.raises(TwilioRestException) as first:
        await in_thread(client.messages.create, to=FORM["To"], from_=SENDER, body=FORM["Body"])
    assert first.value.status == 500
    (created,) = fake_twilio.messages
    for _ in range(2):
        message = await in_thread(
            client.messages.create, to=FORM["To"], from_=SENDER, body=FORM["Body"]
        )
        assert message.sid == created
        assert client.http_client.last_headers["X-Sendguard-Decision"] == "replayed"
    assert fake_twilio.creates == 1
    assert proxy.app[METRICS].value("sendguard_reconciliations_total", outcome="found-list") == 1


async def test_a_smart_encoded_body_is_still_recognised(proxies, fake_twilio, http):
    proxy = await proxies.start(upstream=fake_twilio.url)
    form = {**FORM, "Body": "It\u2019s here \u2014 \u201cthanks\u201d", "SmartEncoded": "true"}
    fake_twilio.push_fault(Fault("500-after-create"))
    await post_send(http, proxy.url, form)
    (sid,) = fake_twilio.messages
    fake_twilio.messages[sid]["body"] = 'It\'s here - "thanks"'  # what Twilio lists
    status, headers, body = await post_send(http, proxy.url, form)
    assert (status, headers["X-Sendguard-Decision"], body["sid"]) == (201, "replayed", sid)
    assert fake_twilio.creates == 1


async def test_another_message_of_the_same_recipient_is_not_taken_for_it(
    proxies, fake_twilio, http
):
    proxy = await proxies.start(upstream=fake_twilio.url)
    await post_send(http, proxy.url, {**FORM, "Body": "something else"})  # a real, other message
    fake_twilio.push_fault(Fault("500-after-create"))
    await post_send(http, proxy.url, FORM, key="k-1")
    created = [m for m in fake_twilio.messages.values() if m["body"] == FORM["Body"]]
    status, _, body = await post_send(http, proxy.url, FORM, key="k-1")
    assert (status, body["sid"]) == (201, created[0]["sid"])
    # The same content under a new key is a new message; the first one's SID is owned.
    status, headers, body = await post_send(http, proxy.url, FORM, key="k-2")
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 3


async def test_no_evidence_means_409_and_never_a_resend(proxies, silent_twilio, http):
    proxy = await proxies.start(upstream=silent_twilio.url)
    status, headers, _ = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (500, "forwarded")
    for _ in range(3):
        status, headers, body = await post_send(http, proxy.url, FORM)
        assert (status, headers["X-Sendguard-Decision"], body["code"]) == (
            409, "outcome-unknown", 79004,
        )  # fmt: skip
        assert int(headers["Retry-After"]) >= 1
    assert silent_twilio.creates == 0 and silent_twilio.posts == 1
    assert silent_twilio.lists == 1  # at most one look per record every few seconds
    # The look that found nothing is counted on the record, for the operator (records show).
    [(_, record)] = await proxy.app[RUNTIME].store.unknown_ledger()
    assert record.reconciliations == 1


async def test_unknown_resend_after_sends_once_after_the_silence(proxies, silent_twilio, http):
    proxy = await proxies.start(upstream=silent_twilio.url, unknown_resend_after="2s")
    await post_send(http, proxy.url, FORM)
    status, headers, _ = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (409, "outcome-unknown")
    await asyncio.sleep(5.2)  # past resend_after and the reconcile gate
    status, headers, body = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, again = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"], again["sid"]) == (201, "replayed", body["sid"])
    assert silent_twilio.creates == 1
    assert proxy.app[METRICS].value("sendguard_reconciliations_total", outcome="resent") == 1


async def test_fifty_concurrent_retries_make_one_list_call_and_no_create(
    proxies, silent_twilio, http
):
    first = await proxies.start(upstream=silent_twilio.url)
    second = await proxies.start(upstream=silent_twilio.url, redis_url=first.store_url)
    await post_send(http, first.url, FORM)
    silent_twilio.list_delay = 0.3
    answers = await asyncio.gather(
        *(post_send(http, (first, second)[i % 2].url, FORM) for i in range(50))
    )
    assert {(status, headers["X-Sendguard-Decision"]) for status, headers, _ in answers} == {
        (409, "outcome-unknown")
    }
    assert silent_twilio.max_in_flight_lists <= 1
    assert silent_twilio.lists == 1
    assert silent_twilio.creates == 0


async def test_an_unknown_send_is_resolved_by_its_status_callback_without_a_retry(
    proxies, fake_twilio, http
):
    from tests.harness import TOKEN
    from tests.servers import free_port

    port = free_port()
    proxy = await proxies.start(
        port=port,
        upstream=fake_twilio.url,
        public_url=f"http://127.0.0.1:{port}",
        twilio_auth_tokens={ACCOUNT: TOKEN},
    )
    fake_twilio.send_callbacks = True
    fake_twilio.push_fault(Fault("500-after-create"))
    form = [*FORM.items(), ("StatusCallback", "http://127.0.0.1:9/app/status")]
    status, _, _ = await post_send(http, proxy.url, form)
    assert status == 500
    (sid,) = fake_twilio.messages
    metrics = proxy.app[METRICS]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 8
    while metrics.value("sendguard_reconciliations_total", outcome="found-callback") < 1:
        assert loop.time() < deadline, "the callback did not resolve the UNKNOWN send"
        await asyncio.sleep(0.05)
    lists_before = list_calls(fake_twilio)
    status, headers, body = await post_send(http, proxy.url, form)
    assert (status, headers["X-Sendguard-Decision"], body["sid"]) == (201, "replayed", sid)
    assert list_calls(fake_twilio) == lists_before  # resolved already: no lookup needed
    assert fake_twilio.creates == 1


async def test_a_message_hidden_by_list_lag_is_refused_until_it_shows_then_replayed(
    proxies, fake_twilio, http
):
    """Twilio's list can miss a new message for minutes: absence is no evidence. Retries while
    it is hidden get 409; once it is listed, the replay. Never a second create."""
    proxy = await proxies.start(upstream=fake_twilio.url)
    fake_twilio.push_fault(Fault("500-after-create"))
    status, _, _ = await post_send(http, proxy.url, FORM, headers={"X-Sandbox-List-Lag": "5"})
    assert status == 500
    (sid,) = fake_twilio.messages
    status, headers, _ = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (409, "outcome-unknown")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        await asyncio.sleep(1.0)
        status, headers, body = await post_send(http, proxy.url, FORM)
        if status == 201:
            break
        assert (status, headers["X-Sendguard-Decision"]) == (409, "outcome-unknown")
        assert loop.time() < deadline, "never replayed after the list caught up"
    assert (headers["X-Sendguard-Decision"], body["sid"]) == ("replayed", sid)
    assert fake_twilio.creates == 1
