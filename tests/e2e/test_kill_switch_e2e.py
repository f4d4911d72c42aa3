"""The kill switch through the admin API of one instance, felt by another (same store).

SPEC §3.3: guarded sends get 503 `killed` + Retry-After everywhere within 1 s; everything else
flows; scopes block only themselves; break-glass senders pass; expiry releases; the env switch
works with the store down.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import ACCOUNT, MESSAGES, OTHER_ACCOUNT, SENDER, basic_auth, post_send
from tests.servers import ServerProcess

TOKEN = "admin-token-kill"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OTP_SERVICE = "MG" + "7" * 32


@pytest.fixture
async def pair(proxies, fake_twilio, shared_redis_url):
    common = {
        "upstream": fake_twilio.url,
        "redis_url": shared_redis_url,
        "admin_token": TOKEN,
        "recipient_limits": "off",
        "break_glass_senders": [OTP_SERVICE],
    }
    return await proxies.start(**common), await proxies.start(**common)


async def engage(http, instance, scope: str, **extra) -> None:
    body = {"scope": scope, "reason": "incident drill", "author": "oncall", **extra}
    async with http.post(instance.admin_url + "/v1/kill-switches", json=body, headers=AUTH) as r:
        assert r.status == 201, await r.text()


async def release(http, instance, scope: str) -> None:
    async with http.delete(f"{instance.admin_url}/v1/kill-switches/{scope}", headers=AUTH) as r:
        assert r.status == 200


def form(to: str = "+15558675310", sender: str = SENDER, body: str = "hi") -> dict[str, str]:
    return {"To": to, "From": sender, "Body": body}


async def decision(http, instance, data: dict[str, str], **kwargs) -> str:
    _, headers, _ = await post_send(http, instance.url, data, **kwargs)
    return headers["X-Sendguard-Decision"]


async def test_a_global_switch_reaches_the_other_instance_within_a_second(pair, fake_twilio, http):
    first, second = pair
    loop = asyncio.get_running_loop()
    await engage(http, first, "global")
    engaged_at = loop.time()
    while True:
        status, headers, body = await post_send(http, second.url, form(body=str(loop.time())))
        if headers["X-Sendguard-Decision"] == "killed":
            break
        assert loop.time() - engaged_at < 1.0, "the switch took over a second to arrive"
        await asyncio.sleep(0.02)
    assert (status, body["code"]) == (503, 79020)
    assert int(headers["Retry-After"]) >= 1
    async with http.get(second.url + MESSAGES, headers={"Authorization": basic_auth()}) as listing:
        assert listing.status == 200  # reads still flow
        assert listing.headers["X-Sendguard-Decision"] == "passthrough"
    created = fake_twilio.creates
    await release(http, first, "global")
    await asyncio.sleep(1.0)
    assert await decision(http, second, form(body="after release")) == "forwarded"
    assert fake_twilio.creates == created + 1


async def test_each_scope_blocks_only_its_scope(pair, fake_twilio, http):
    first, second = pair
    other_path = MESSAGES.replace(ACCOUNT, OTHER_ACCOUNT)
    other_auth = basic_auth(OTHER_ACCOUNT, "e" * 32)
    cases = [
        ("account:" + ACCOUNT, {"data": form()},
         {"data": form(), "path": other_path, "auth": other_auth}),
        ("sender:" + SENDER, {"data": form()}, {"data": form(sender="+15005550007")}),
        ("recipient:+15558675310", {"data": form()}, {"data": form(to="+15558675311")}),
        ("prefix:+44", {"data": form(to="+447700900123")}, {"data": form(to="+15558675312")}),
    ]  # fmt: skip
    for n, (scope, blocked, passing) in enumerate(cases):
        await engage(http, first, scope)
        await asyncio.sleep(0.8)
        blocked["data"] = {**blocked["data"], "Body": f"blocked {n}"}
        passing["data"] = {**passing["data"], "Body": f"passing {n}"}
        assert await decision(http, second, **blocked) == "killed", scope
        assert await decision(http, second, **passing) == "forwarded", scope
        await release(http, first, scope)
    assert len(fake_twilio.create_requests()) == len(cases)  # only the passing ones reached it


async def test_a_break_glass_sender_passes_a_global_switch(pair, fake_twilio, http):
    first, second = pair
    await engage(http, first, "global")
    await asyncio.sleep(0.8)
    otp = {"To": "+15558675310", "MessagingServiceSid": OTP_SERVICE, "Body": "code 1234"}
    assert await decision(http, second, otp) == "forwarded"
    assert await decision(http, second, form()) == "killed"
    assert fake_twilio.creates == 1


async def test_an_expiring_switch_releases_itself(pair, fake_twilio, http):
    first, second = pair
    loop = asyncio.get_running_loop()
    engaged = loop.time()
    await engage(http, first, "global", ttl="3s")  # margin for a slow machine: it must be live
    await asyncio.sleep(0.5)
    _, headers, _ = await post_send(http, second.url, form(body="during"))
    assert headers["X-Sendguard-Decision"] == "killed"
    assert 1 <= int(headers["Retry-After"]) <= 3  # the seconds it has left, rounded up
    await asyncio.sleep(max(0.0, engaged + 3.0 + 0.5 - loop.time()))
    assert await decision(http, second, form(body="after")) == "forwarded"


async def test_the_env_switch_blocks_with_the_store_stopped(proxies, fake_twilio, http):
    server = ServerProcess()
    server.start()
    try:
        pinned = await proxies.start(
            upstream=fake_twilio.url, redis_url=server.url, kill_switch="global",
            on_store_error="open",
        )  # fmt: skip
        server.stop()
        for _ in range(2):
            status, headers, _ = await post_send(http, pinned.url, form())
            assert (status, headers["X-Sendguard-Decision"]) == (503, "killed")
        async with http.get(pinned.url + MESSAGES) as listing:
            assert listing.headers["X-Sendguard-Decision"] == "passthrough"
        assert fake_twilio.creates == 0
    finally:
        server.stop()
