"""A guarded send's answer is read whole, byte for byte, within a total deadline.

Real sendguard instances in front of `RawTwilio` (tests/rawupstream.py), a fake Twilio on a raw
socket that answers the way networks do: a 201 in two TCP writes, chunked, gzip although not
asked, shorter than its Content-Length, or one byte at a time. Clients are a raw aiohttp
session (auto_decompress off, to compare bytes) and the real twilio-python SDK. The fake counts
the creates it received: the ground truth for "at most once".
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from twilio.base.exceptions import TwilioRestException  # type: ignore[import-untyped]

from proxy.server.app import LEASE_MARGIN_SECONDS, SETTINGS, guard_policy
from tests.harness import (
    ACCOUNT,
    MESSAGES,
    SENDER,
    ProxyFactory,
    RecordingHttpClient,
    basic_auth,
    in_thread,
    twilio_client,
)
from tests.rawupstream import Answer, RawTwilio

TO = "+15558675310"
FORM = {"To": TO, "From": SENDER, "Body": "Your order shipped"}
ADMIN_TOKEN = "admin-token-0123456789"
WHOLE_ANSWERS = [Answer.SPLIT, Answer.CHUNKED, Answer.GZIP]
# Small timeouts for the deadline tests: one attempt may take 0.3 + 0.5 s in total.
QUICK: dict[str, Any] = {
    "upstream_connect_timeout": 0.3,
    "upstream_read_timeout": 0.5,
    "upstream_429_budget": 0,
}


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes  # as it came off the wire (no decompression)

    @property
    def decision(self) -> str:
        return self.headers.get("X-Sendguard-Decision", "")

    def json(self) -> Any:
        body = self.body
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return json.loads(body)


@pytest.fixture
async def raw_twilio() -> AsyncIterator[RawTwilio]:
    async with RawTwilio() as fake:
        yield fake


@pytest.fixture
async def raw_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def raw_send(
    http: aiohttp.ClientSession,
    proxy_url: str,
    form: dict[str, str] = FORM,
    *,
    key: str | None = None,
    timeout: float = 10.0,
) -> RawAnswer:
    """A form POST like an SDK's, which accepts gzip (sendguard must ask upstream for identity)."""
    headers = {"Authorization": basic_auth(), "Accept-Encoding": "gzip, deflate"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with http.post(
        proxy_url + MESSAGES,
        data=form,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        return RawAnswer(response.status, response.headers, await response.read())


def sdk(proxy_url: str, key: str | None = None) -> tuple[Any, RecordingHttpClient]:
    http = RecordingHttpClient(extra=(lambda: {"Idempotency-Key": key}) if key else None)
    return twilio_client(proxy_url, http_client=http), http


async def sdk_send(client: Any) -> Any:
    return await in_thread(client.messages.create, to=TO, from_=SENDER, body=FORM["Body"])


async def admin_record(http: aiohttp.ClientSession, admin_url: str, **params: str) -> Any:
    async with http.get(
        admin_url + "/v1/records",
        params=params,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as response:
        return response.status, await response.json(content_type=None)


def assert_identity_asked(fake: RawTwilio) -> None:
    """Every guarded send reached Twilio asking for an unencoded answer, whatever the client
    accepts (here gzip): a stored answer is replayed to any client."""
    assert fake.create_requests
    for request in fake.create_requests:
        assert request.headers.getall("Accept-Encoding") == ["identity"]


def assert_same_answer(replay: RawAnswer, first: RawAnswer) -> None:
    assert (replay.status, replay.decision) == (first.status, "replayed")
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.body == first.body
    for name in ("Content-Type", "Content-Encoding"):
        assert replay.headers.get(name) == first.headers.get(name), name


async def test_guarded_sends_ask_upstream_for_identity(
    proxies: ProxyFactory, raw_twilio: RawTwilio, raw_http: aiohttp.ClientSession
) -> None:
    proxy = await proxies.start(upstream=raw_twilio.url)
    sent = await raw_send(raw_http, proxy.url, key="identity-1")  # the client accepts gzip
    assert (sent.status, sent.decision) == (201, "forwarded")
    message = await sdk_send(sdk(proxy.url)[0])  # requests accepts gzip too
    assert message.sid == raw_twilio.created[1].sid
    assert raw_twilio.creates == 2
    assert_identity_asked(raw_twilio)


# -- whole bodies, replayed byte for byte --------------------------------------------------------


@pytest.mark.parametrize("answer", WHOLE_ANSWERS)
async def test_keyed_send_stores_and_replays_the_whole_answer(
    proxies: ProxyFactory, raw_twilio: RawTwilio, raw_http: aiohttp.ClientSession, answer: Answer
) -> None:
    raw_twilio.answer = answer
    proxy = await proxies.start(upstream=raw_twilio.url, admin_token=ADMIN_TOKEN)

    first = await raw_send(raw_http, proxy.url, key="order-1")
    assert (first.status, first.decision) == (201, "forwarded")
    created = raw_twilio.created[0]
    assert first.body == created.wire_body  # every byte, not what happened to be buffered
    assert first.json()["sid"] == created.sid
    assert first.headers.get("Content-Encoding") == ("gzip" if answer is Answer.GZIP else None)

    assert_same_answer(await raw_send(raw_http, proxy.url, key="order-1"), first)

    client, http = sdk(proxy.url, key="order-1")
    message = await sdk_send(client)
    assert message.sid == created.sid
    assert http.last_headers["Idempotent-Replayed"] == "true"
    assert json.loads(http.responses[-1].text) == created.message

    assert raw_twilio.creates == 1
    assert_identity_asked(raw_twilio)
    if answer is not Answer.GZIP:  # (a gzip body's SID is not parsed: see the report)
        status, found = await admin_record(raw_http, proxy.admin_url, message_sid=created.sid)
        assert (status, found["record"]["state"]) == (200, "done")


@pytest.mark.parametrize("answer", WHOLE_ANSWERS)
async def test_keyless_retry_is_replayed_the_whole_answer(
    proxies: ProxyFactory, raw_twilio: RawTwilio, raw_http: aiohttp.ClientSession, answer: Answer
) -> None:
    raw_twilio.answer = answer
    proxy = await proxies.start(upstream=raw_twilio.url)

    client, http = sdk(proxy.url)
    message = await sdk_send(client)
    created = raw_twilio.created[0]
    assert message.sid == created.sid
    assert http.last_headers["X-Sendguard-Decision"] == "forwarded"
    assert json.loads(http.responses[-1].text) == created.message

    again = await sdk_send(client)  # the SDK's retry: same send, no key -> same fingerprint
    assert again.sid == created.sid
    assert http.last_headers["Idempotent-Replayed"] == "true"
    assert json.loads(http.responses[-1].text) == created.message

    replay = await raw_send(raw_http, proxy.url)
    assert (replay.status, replay.decision) == (201, "replayed")
    assert replay.body == created.wire_body
    assert replay.headers["Content-Type"] == "application/json; charset=utf-8"
    assert replay.headers.get("Content-Encoding") == ("gzip" if answer is Answer.GZIP else None)
    assert_same_answer(await raw_send(raw_http, proxy.url), replay)

    assert raw_twilio.creates == 1
    assert_identity_asked(raw_twilio)


# -- answers that are not whole: ambiguous, never stored as a result -----------------------------


@pytest.mark.parametrize("key", [None, "short-1"], ids=["fingerprint", "key"])
async def test_a_body_shorter_than_its_length_is_ambiguous(
    proxies: ProxyFactory,
    raw_twilio: RawTwilio,
    raw_http: aiohttp.ClientSession,
    key: str | None,
) -> None:
    raw_twilio.answer_next(Answer.SHORT)
    proxy = await proxies.start(upstream=raw_twilio.url, admin_token=ADMIN_TOKEN)

    first = await raw_send(raw_http, proxy.url, key=key)
    assert (first.status, first.decision) == (502, "outcome-unknown")
    assert first.json()["code"] == 79006
    assert raw_twilio.creates == 1
    if key is not None:
        status, found = await admin_record(raw_http, proxy.admin_url, account=ACCOUNT, key=key)
        assert (status, found["record"]["state"]) == (200, "unknown")
        assert found["record"]["message_sid"] is None
        assert found["record"]["unknown_reason"] == "upstream-reset"

    retry = await raw_send(raw_http, proxy.url, key=key)
    assert (retry.status, retry.decision) == (409, "outcome-unknown")
    assert retry.json()["code"] == 79004
    client, _ = sdk(proxy.url, key=key)
    with pytest.raises(TwilioRestException) as refused:
        await sdk_send(client)
    assert (refused.value.status, refused.value.code) == (409, 79004)
    assert raw_twilio.creates == 1


@pytest.mark.parametrize("answer", [Answer.NORMAL, Answer.CHUNKED], ids=["length", "chunked"])
async def test_an_answer_larger_than_max_body_is_ambiguous(
    proxies: ProxyFactory, raw_twilio: RawTwilio, raw_http: aiohttp.ClientSession, answer: Answer
) -> None:
    raw_twilio.answer_next(answer)
    proxy = await proxies.start(upstream=raw_twilio.url, max_body_bytes=600)

    first = await raw_send(raw_http, proxy.url)
    assert len(raw_twilio.created[0].wire_body) > 600
    assert (first.status, first.decision) == (502, "outcome-unknown")
    retry = await raw_send(raw_http, proxy.url)
    assert (retry.status, retry.decision) == (409, "outcome-unknown")
    assert raw_twilio.creates == 1


# -- the total deadline, and the lease derived from it -------------------------------------------


async def test_the_lease_is_the_total_send_deadline_plus_a_margin(
    proxies: ProxyFactory, raw_twilio: RawTwilio
) -> None:
    from proxy.upstream.client import guarded_send_deadline

    proxy = await proxies.start(upstream=raw_twilio.url, **QUICK)
    policy = guard_policy(proxy.app[SETTINGS])
    assert guarded_send_deadline(0.3, 0.5, 0) == pytest.approx(0.8)
    assert policy.lease == pytest.approx(0.8 + LEASE_MARGIN_SECONDS)


async def test_a_trickling_answer_is_cut_at_the_deadline_and_a_late_duplicate_refused(
    proxies: ProxyFactory, raw_twilio: RawTwilio, raw_http: aiohttp.ClientSession
) -> None:
    """Each byte comes well within the read timeout, so only a total deadline ends the send.
    Without one the owner was still reading when its in-flight record (2 x lease, the
    fingerprint window being shorter) expired, and the late duplicate was sent again."""
    raw_twilio.trickle_every = 0.1  # < the 0.5 s read timeout: per-read timeouts never fire
    raw_twilio.answer_next(Answer.TRICKLE)  # ~90 s for the whole body
    proxy = await proxies.start(upstream=raw_twilio.url, dedup_window=1, **QUICK)
    lease = guard_policy(proxy.app[SETTINGS]).lease
    loop = asyncio.get_running_loop()
    started = loop.time()
    answered: list[float] = []

    async def original() -> RawAnswer:
        answer = await raw_send(raw_http, proxy.url, timeout=120)
        answered.append(loop.time() - started)
        return answer

    first = asyncio.create_task(original())
    try:
        await raw_twilio.wait_for_creates(1)
        await asyncio.sleep(2 * lease + 0.5)  # the in-flight record's whole life, and more
        late = await raw_send(raw_http, proxy.url)
        assert raw_twilio.creates == 1, "the late duplicate was sent again"
        assert (late.status, late.decision) == (409, "outcome-unknown")
        assert late.json()["code"] == 79004

        assert first.done()
        cut = await first
        assert (cut.status, cut.decision) == (504, "outcome-unknown")
        assert cut.json()["code"] == 79005
        assert answered[0] < lease  # cut at its deadline (0.8 s), inside its lease
    finally:
        first.cancel()


async def test_passthrough_downloads_have_no_total_deadline(
    proxies: ProxyFactory, raw_twilio: RawTwilio, raw_http: aiohttp.ClientSession
) -> None:
    raw_twilio.fetch_answer = Answer.TRICKLE
    raw_twilio.trickle_every, raw_twilio.trickle_bytes = 0.2, 100  # ~1.8 s > the 0.8 s deadline
    proxy = await proxies.start(upstream=raw_twilio.url, **QUICK)
    sent = await raw_send(raw_http, proxy.url)
    created = raw_twilio.created[0]
    assert sent.json()["sid"] == created.sid
    async with raw_http.get(
        proxy.url + created.message["uri"],
        headers={"Authorization": basic_auth(), "Accept-Encoding": "gzip"},
    ) as response:
        assert (response.status, response.headers["X-Sendguard-Decision"]) == (200, "passthrough")
        assert await response.read() == created.json_bytes
    fetch = raw_twilio.requests[-1]
    assert (fetch.method, fetch.headers["Accept-Encoding"]) == ("GET", "gzip")  # untouched
