"""At most once, end to end: real clients -> two sendguard instances -> the counting fake Twilio.

The fake's `creates` counter is the ground truth. Every test runs over the embedded store and a
shared server (the `store_mode` parameter).
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from twilio.base.exceptions import TwilioRestException

from proxy.sandbox import Fault
from tests.harness import (
    OTHER_ACCOUNT,
    OTHER_TOKEN,
    SENDER,
    HeaderAddingHttpClient,
    basic_auth,
    in_thread,
    post_send,
    twilio_client,
)

pytestmark = pytest.mark.usefixtures("store_mode")


def form(to: str = "+15558675310", body: str = "Your code is 1234") -> dict[str, str]:
    return {"To": to, "From": SENDER, "Body": body}


async def test_twilio_python_same_send_twice_creates_once(two_proxies, fake_twilio):
    first, _ = two_proxies
    client = twilio_client(first.url)
    one = await in_thread(client.messages.create, to="+15558675310", from_=SENDER, body="hi")
    assert client.http_client.last_headers["X-Sendguard-Decision"] == "forwarded"
    two = await in_thread(client.messages.create, to="+15558675310", from_=SENDER, body="hi")
    replay_headers = client.http_client.last_headers
    assert fake_twilio.creates == 1
    assert two.sid == one.sid and one.sid.startswith("SM")
    assert replay_headers["X-Sendguard-Decision"] == "replayed"
    assert replay_headers["Idempotent-Replayed"] == "true"


async def test_fingerprint_spans_instances_and_ignores_param_order(two_proxies, fake_twilio, http):
    first, second = two_proxies
    status1, _, body1 = await post_send(http, first.url, form())
    reordered = [("Body", "Your code is 1234"), ("From", SENDER), ("To", "+1 555 867 5310")]
    status2, headers2, body2 = await post_send(http, second.url, reordered)
    assert (status1, status2) == (201, 201)
    assert body2["sid"] == body1["sid"]
    assert headers2["X-Sendguard-Decision"] == "replayed"
    assert fake_twilio.creates == 1


async def test_different_content_is_a_different_message(two_proxies, fake_twilio, http):
    first, _ = two_proxies
    await post_send(http, first.url, form(body="a"))
    await post_send(http, first.url, form(body="b"))
    assert fake_twilio.creates == 2


async def test_idempotency_key_across_two_instances(two_proxies, fake_twilio, http):
    first, second = two_proxies
    status1, _, body1 = await post_send(http, first.url, form(), key="order-42")
    status2, headers2, body2 = await post_send(http, second.url, form(), key='"order-42"')
    assert (status1, status2) == (201, 201)
    assert body2 == body1
    assert headers2["X-Sendguard-Decision"] == "replayed"
    assert fake_twilio.creates == 1

    status3, headers3, body3 = await post_send(http, second.url, form(body="other"), key="order-42")
    assert status3 == 422
    assert headers3["X-Sendguard-Decision"] == "key-mismatch"
    assert body3["code"] == 79002 and body3["status"] == 422
    assert fake_twilio.creates == 1


async def test_new_key_same_content_is_a_new_message(two_proxies, fake_twilio, http):
    first, second = two_proxies
    await post_send(http, first.url, form(), key="k1")
    await post_send(http, second.url, form(), key="k2")
    assert fake_twilio.creates == 2


@pytest.mark.parametrize("bad_key", ["", "has space", "x" * 256, "ключ"])
async def test_malformed_key_is_400_and_nothing_sent(two_proxies, fake_twilio, http, bad_key):
    first, _ = two_proxies
    headers = {"Idempotency-Key": bad_key.encode("utf-8").decode("latin-1")}
    status, got, body = await post_send(http, first.url, form(), headers=headers)
    assert status == 400
    assert got["X-Sendguard-Decision"] == "invalid-key"
    assert body["code"] == 79001
    assert fake_twilio.creates == 0


async def test_another_credential_never_gets_the_first_ones_response(
    two_proxies, fake_twilio, http
):
    first, second = two_proxies
    status, _, original = await post_send(http, first.url, form(), key="shared-key")
    assert status == 201
    # Same account, other token: a different tenant boundary; same key and payload.
    other_token = basic_auth(token="0" * 32)
    status, headers, body = await post_send(
        http, second.url, form(), key="shared-key", auth=other_token
    )
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert body["sid"] != original["sid"]
    # Another account entirely, same key: its own path, its own scope.
    other_path = f"/2010-04-01/Accounts/{OTHER_ACCOUNT}/Messages.json"
    status, headers, body = await post_send(
        http, second.url, form(), key="shared-key",
        auth=basic_auth(OTHER_ACCOUNT, OTHER_TOKEN), path=other_path,
    )  # fmt: skip
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert body["sid"] != original["sid"]
    # Keyless fingerprints are scoped by credential too.
    await post_send(http, first.url, form(body="fp"))
    _, headers, _ = await post_send(http, first.url, form(body="fp"), auth=other_token)
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert fake_twilio.creates == 5


async def test_fifty_concurrent_duplicates_across_two_instances(two_proxies, fake_twilio, http):
    first, second = two_proxies
    fake_twilio.push_fault(Fault("delay", seconds=1.0))
    results = await asyncio.gather(
        *(post_send(http, (first, second)[i % 2].url, form(), key="burst") for i in range(50))
    )
    decisions = [headers["X-Sendguard-Decision"] for _, headers, _ in results]
    assert fake_twilio.creates == 1
    assert decisions.count("forwarded") == 1
    assert set(decisions) <= {"forwarded", "replayed", "in-flight"}
    sids = {body["sid"] for status, _, body in results if status == 201}
    assert len(sids) == 1
    for status, headers, _ in results:
        if headers["X-Sendguard-Decision"] == "in-flight":
            assert status == 409 and int(headers["Retry-After"]) >= 1


async def test_in_flight_duplicate_past_the_wait_gets_409(two_proxies, fake_twilio, http, proxies):
    first, _ = two_proxies
    impatient = await proxies.start(
        redis_url=first.store_url, upstream=fake_twilio.url, inflight_wait=0.2
    )
    fake_twilio.push_fault(Fault("delay", seconds=1.5))
    original = asyncio.create_task(post_send(http, first.url, form()))
    await fake_twilio.wait_for_creates(1)
    status, headers, body = await post_send(http, impatient.url, form())
    assert status == 409
    assert headers["X-Sendguard-Decision"] == "in-flight"
    assert body["code"] == 79003 and headers["Retry-After"]
    assert (await original)[0] == 201
    status, headers, _ = await post_send(http, impatient.url, form())
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    assert fake_twilio.creates == 1


async def test_4xx_is_stored_and_replayed(two_proxies, fake_twilio, http):
    first, second = two_proxies
    status, _, body = await post_send(http, first.url, form(to="+15005550004"))  # 21610 magic
    assert status == 400 and body["code"] == 21610
    status, headers, body = await post_send(http, second.url, form(to="+15005550004"))
    assert status == 400 and body["code"] == 21610
    assert headers["X-Sendguard-Decision"] == "replayed"
    assert len(fake_twilio.create_requests()) == 1


async def test_sdk_sees_key_mismatch_as_its_normal_rest_exception(two_proxies, fake_twilio):
    first, _ = two_proxies
    keyed = HeaderAddingHttpClient(lambda: {"Idempotency-Key": "sdk-key"})
    client = twilio_client(first.url, http_client=keyed)
    await in_thread(client.messages.create, to="+15558675310", from_=SENDER, body="one")
    with pytest.raises(TwilioRestException) as raised:
        await in_thread(client.messages.create, to="+15558675310", from_=SENDER, body="two")
    assert raised.value.status == 422 and raised.value.code == 79002
    assert fake_twilio.creates == 1


async def test_credentials_are_hashed_not_stored(two_proxies, http, shared_redis_url, store_mode):
    """The store never holds the Authorization header or the token, in any form we can read."""
    import redis.asyncio as redis

    first, _ = two_proxies
    await post_send(http, first.url, form(), key="secret-check")
    client = redis.Redis.from_url(first.store_url if store_mode == "embedded" else shared_redis_url)
    dump = b""
    async for key in client.scan_iter():
        kind = await client.type(key)
        if kind == b"hash":
            value = b"".join(k + v for k, v in (await client.hgetall(key)).items())
        elif kind == b"zset":
            value = b"".join(await client.zrange(key, 0, -1))
        else:
            value = await client.get(key) or b""
        dump += key + value
    await client.aclose()
    auth = basic_auth().encode()
    assert dump and auth not in dump and auth.split()[1] not in dump
    assert base64.b64decode(auth.split()[1]).split(b":")[1] not in dump
