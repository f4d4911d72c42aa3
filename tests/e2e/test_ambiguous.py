"""Ambiguous upstream outcomes never become a blind second send; definite non-sends do retry.

Each test makes the fake Twilio fail in one way, then retries the same send, and counts creates.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.sandbox import Fault, start_sandbox
from tests.harness import SENDER, in_thread, post_send, twilio_client
from tests.servers import free_port

FORM = {"To": "+15558675310", "From": SENDER, "Body": "Your order shipped"}

pytestmark = pytest.mark.usefixtures("store_mode")


@pytest.mark.parametrize(
    ("fault", "status", "decision", "code"),
    [
        (Fault("500-after-create"), 500, "forwarded", 20500),
        (Fault("hang", seconds=30), 504, "outcome-unknown", 79005),
        (Fault("reset"), 502, "outcome-unknown", 79006),
    ],
    ids=["500-after-create", "hang-past-read-timeout", "reset-after-body"],
)
async def test_ambiguous_outcome_blocks_the_retry(
    two_proxies, fake_twilio, http, fault, status, decision, code
):
    first, second = two_proxies
    fake_twilio.push_fault(fault)
    got_status, headers, body = await post_send(http, first.url, FORM)
    assert (got_status, headers["X-Sendguard-Decision"]) == (status, decision)
    assert body["code"] == code
    assert fake_twilio.creates == 1

    # Twilio did create it (the fake creates before failing): a retry finds it in the
    # account's list, and it and every later duplicate replay that message, never a resend.
    (created,) = fake_twilio.messages
    for proxy in (first, second, first):
        got_status, headers, body = await post_send(http, proxy.url, FORM)
        assert (got_status, headers["X-Sendguard-Decision"]) == (201, "replayed")
        assert body["sid"] == created
    assert fake_twilio.creates == 1


async def test_ambiguous_outcome_with_a_key_blocks_the_keyed_retry(two_proxies, fake_twilio, http):
    first, second = two_proxies
    fake_twilio.push_fault(Fault("500-after-create"))
    await post_send(http, first.url, FORM, key="k-500")
    status, headers, body = await post_send(http, second.url, FORM, key="k-500")
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert body["sid"] in fake_twilio.messages
    assert fake_twilio.creates == 1


async def test_sdk_retry_after_timeout_creates_nothing_more(two_proxies, fake_twilio):
    from twilio.base.exceptions import TwilioRestException

    first, second = two_proxies
    fake_twilio.push_fault(Fault("hang", seconds=30))
    with pytest.raises(TwilioRestException) as first_error:
        await in_thread(
            twilio_client(first.url).messages.create, to="+15558675310", from_=SENDER, body="x"
        )
    assert first_error.value.status == 504
    message = await in_thread(
        twilio_client(second.url).messages.create, to="+15558675310", from_=SENDER, body="x"
    )
    assert message.sid in fake_twilio.messages  # found in Twilio's list: the original SID
    assert fake_twilio.creates == 1


async def test_429_then_success_is_retried_inside_sendguard(two_proxies, fake_twilio, http):
    first, _ = two_proxies
    fake_twilio.push_fault(Fault("429", seconds=1))
    status, headers, _body = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert len(fake_twilio.create_requests()) == 2  # the 429'd attempt, then the create
    assert fake_twilio.creates == 1


async def test_persistent_429_goes_back_released_and_a_later_retry_sends_once(
    two_proxies, fake_twilio, http, proxies
):
    first, _ = two_proxies
    impatient = await proxies.start(
        redis_url=first.store_url, upstream=fake_twilio.url, upstream_429_budget=0.6
    )
    fake_twilio.push_fault(Fault("429"), times=100)
    started = asyncio.get_running_loop().time()
    status, headers, body = await post_send(http, impatient.url, FORM)
    elapsed = asyncio.get_running_loop().time() - started
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (429, "forwarded", 20429)
    assert 0.2 < elapsed < 3  # backoffs of ~0.1 s then ~0.2 s at least
    assert len(fake_twilio.create_requests()) >= 3  # backed off and retried, within the budget
    assert fake_twilio.creates == 0
    fake_twilio.clear_faults()
    status, headers, _ = await post_send(http, impatient.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, _ = await post_send(http, first.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert fake_twilio.creates == 1


async def test_a_retry_after_beyond_the_budget_is_answered_at_once(two_proxies, fake_twilio, http):
    first, _ = two_proxies
    fake_twilio.push_fault(Fault("429", seconds=30))
    started = asyncio.get_running_loop().time()
    status, headers, _ = await post_send(http, first.url, FORM)
    assert (status, headers["Retry-After"]) == (429, "30")
    assert asyncio.get_running_loop().time() - started < 1
    assert fake_twilio.creates == 0


async def test_connect_refused_releases_and_the_retry_sends_once(
    proxies, http, shared_redis_url, store_mode
):
    port = free_port()
    redis_url = None if store_mode == "embedded" else shared_redis_url
    proxy = await proxies.start(upstream=f"http://127.0.0.1:{port}", redis_url=redis_url)
    status, headers, body = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (
        502,
        "upstream-unreachable",
        79007,
    )

    runner, _url, state = await start_sandbox(port=port)  # Twilio is back on the same address
    try:
        status, headers, _ = await post_send(http, proxy.url, FORM)
        assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
        status, headers, _ = await post_send(http, proxy.url, FORM)
        assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
        assert state.creates == 1
    finally:
        await runner.cleanup()


async def test_duplicate_waiting_on_an_attempt_that_turns_unknown_gets_409(
    two_proxies, fake_twilio, http
):
    first, second = two_proxies
    fake_twilio.push_fault(Fault("hang", seconds=30))
    original = asyncio.create_task(post_send(http, first.url, FORM))
    await fake_twilio.wait_for_creates(1)
    status, headers, _ = await post_send(http, second.url, FORM)  # waits, then sees UNKNOWN
    # ... which it reconciles: the fake created the message before it hung.
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert (await original)[0] == 504
    assert fake_twilio.creates == 1


async def test_a_claim_whose_answer_was_lost_and_retried_is_recognised_as_ours(
    proxies, fake_twilio, http, shared_redis_url, monkeypatch
):
    """The store ran the claim, the answer was lost, the client retried: the second run finds
    a claim holding our own token. That is not a duplicate in flight: nothing was sent yet."""
    from proxy.store.send_store import SendStore

    original = SendStore.claim
    lost = []

    async def claim_twice(self, ref, request):
        if not lost:  # the first claim's answer is lost once, then the client's retry runs
            lost.append(await original(self, ref, request))
        return await original(self, ref, request)

    monkeypatch.setattr(SendStore, "claim", claim_twice)
    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, inflight_wait=0.5
    )
    status, headers, _ = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, _ = await post_send(http, proxy.url, FORM)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert fake_twilio.creates == 1
