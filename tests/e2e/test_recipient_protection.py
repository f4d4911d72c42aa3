"""Per-recipient limits, the breaker and suppression, end to end through two instances.

The fake Twilio's create count is the ground truth: a refused send never reaches it.
"""

from __future__ import annotations

import asyncio

import pytest

from proxy.sandbox import Fault
from proxy.server.app import METRICS, RUNTIME
from tests.harness import MESSAGES, SENDER, basic_auth, post_send

ALICE, BOB = "+15558675310", "+15558675311"
OPTED_OUT = "+15005550004"  # the sandbox answers 400/21610 for this number

pytestmark = pytest.mark.usefixtures("store_mode")


@pytest.fixture
async def limited(store_mode, proxies, fake_twilio, shared_redis_url):
    """Two instances sharing a store, with 3/min per recipient and a 1 s breaker cooldown."""
    common = {
        "upstream": fake_twilio.url,
        "recipient_limits": "3/min",
        "breaker_cooldown": 1.0,
        "inflight_wait": 1.0,
    }
    first, second = await proxies.start_pair(store_mode, shared_redis_url, **common)
    return first, second


def form(to: str, body: str, sender: str = SENDER) -> dict[str, str]:
    return {"To": to, "From": sender, "Body": body}


async def test_fourth_message_to_one_recipient_is_rate_limited(limited, fake_twilio, http):
    first, second = limited
    for i, proxy in enumerate((first, second, first)):  # the limit counts across instances
        status, headers, _ = await post_send(http, proxy.url, form(ALICE, f"msg {i}"))
        assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, body = await post_send(http, second.url, form(ALICE, "msg 3"))
    assert (status, headers["X-Sendguard-Decision"]) == (429, "rate-limited")
    assert body["code"] == 20429 and body["status"] == 429
    assert int(headers["Retry-After"]) >= 1
    status, headers, _ = await post_send(http, first.url, form(ALICE, "msg 4"))
    assert (status, headers["X-Sendguard-Decision"]) == (429, "breaker-open")
    status, headers, _ = await post_send(http, first.url, form(BOB, "hello bob"))
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 4
    assert (
        first.app[METRICS].value("sendguard_breaker_trips_total")
        + second.app[METRICS].value("sendguard_breaker_trips_total")
        == 1
    )


async def test_after_the_cooldown_one_probe_passes(limited, fake_twilio, http):
    first, second = limited
    for i in range(3):
        await post_send(http, first.url, form(ALICE, f"msg {i}"))
    status, headers, _ = await post_send(http, first.url, form(ALICE, "over"))
    assert headers["X-Sendguard-Decision"] == "rate-limited"
    await asyncio.sleep(1.2)
    fake_twilio.push_fault(Fault("delay", seconds=0.5))  # hold the probe in flight
    probe = asyncio.create_task(post_send(http, first.url, form(ALICE, "probe a")))
    await fake_twilio.wait_for_creates(4)
    status, headers, _ = await post_send(http, second.url, form(ALICE, "probe b"))
    assert (status, headers["X-Sendguard-Decision"]) == (429, "breaker-open")
    assert (await probe)[1]["X-Sendguard-Decision"] == "forwarded"
    assert fake_twilio.creates == 4
    # The probe went out, the breaker closed, the minute window is still full: trips again,
    # with a doubled cooldown.
    status, headers, _ = await post_send(http, first.url, form(ALICE, "after probe"))
    assert (status, headers["X-Sendguard-Decision"]) == (429, "rate-limited")
    assert int(headers["Retry-After"]) == 2


async def test_replays_and_refusals_do_not_count(limited, fake_twilio, http):
    first, _ = limited
    for _ in range(5):
        await post_send(http, first.url, form(ALICE, "same"))  # 1 send + 4 replays
    _status, headers, _ = await post_send(http, first.url, form(ALICE, "two"))
    assert headers["X-Sendguard-Decision"] == "forwarded"
    _status, headers, _ = await post_send(http, first.url, form(ALICE, "three"))
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert fake_twilio.creates == 3


async def test_concurrent_different_messages_to_one_recipient_stop_at_the_limit(
    limited, fake_twilio, http
):
    first, second = limited
    results = await asyncio.gather(
        *(post_send(http, (first, second)[i % 2].url, form(ALICE, f"burst {i}")) for i in range(12))
    )
    decisions = [headers["X-Sendguard-Decision"] for _, headers, _ in results]
    assert decisions.count("forwarded") == 3
    assert set(decisions) <= {"forwarded", "rate-limited", "breaker-open"}
    assert fake_twilio.creates == 3


async def test_report_mode_forwards_but_logs_and_counts(
    proxies, fake_twilio, http, shared_redis_url
):
    from structlog.testing import capture_logs

    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url,
        recipient_limits="3/min", recipient_limits_mode="report",
    )  # fmt: skip
    with capture_logs() as logs:
        for i in range(5):
            status, headers, _ = await post_send(http, proxy.url, form(ALICE, f"m{i}"))
            assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 5
    would = [entry for entry in logs if entry["event"] == "would_block"]
    assert [entry["reason"] for entry in would] == ["recipient-limit-3/min"] * 2
    assert ALICE not in str(logs)
    assert proxy.app[METRICS].value("sendguard_would_block_total", decision="rate-limited") == 2
    assert proxy.app[METRICS].value("sendguard_breaker_trips_total") == 0


async def test_limits_off(proxies, fake_twilio, http, shared_redis_url):
    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, recipient_limits="off"
    )
    for i in range(8):
        assert (await post_send(http, proxy.url, form(ALICE, f"m{i}")))[0] == 201
    assert fake_twilio.creates == 8


async def test_opt_out_21610_suppresses_that_sender_to_that_recipient(limited, fake_twilio, http):
    first, second = limited
    status, headers, body = await post_send(http, first.url, form(OPTED_OUT, "hi"))
    assert (status, body["code"]) == (400, 21610)
    assert headers["X-Sendguard-Decision"] == "forwarded"
    for proxy, text in ((second, "a different body"), (first, "yet another")):
        status, headers, body = await post_send(http, proxy.url, form(OPTED_OUT, text))
        assert (status, headers["X-Sendguard-Decision"], body["code"]) == (400, "suppressed", 21610)
        assert body["message"].startswith("sendguard: ")
    assert len(fake_twilio.create_requests()) == 1
    # Another sender (e.g. a different number the person never opted out of) still goes out.
    other_sender = form(OPTED_OUT, "from elsewhere", sender="+15005550010")
    status, headers, _ = await post_send(http, first.url, other_sender)
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert len(fake_twilio.create_requests()) == 2


async def test_a_duplicate_of_the_opted_out_send_is_still_its_replay(limited, fake_twilio, http):
    first, _ = limited
    await post_send(http, first.url, form(OPTED_OUT, "hi"))
    status, headers, body = await post_send(http, first.url, form(OPTED_OUT, "hi"))
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (400, "replayed", 21610)


async def test_fetched_30007_suppresses_resending_that_message(limited, fake_twilio, http):
    first, second = limited
    fake_twilio.push_fault(Fault("undelivered", code=30007))
    status, _, created = await post_send(http, first.url, form(ALICE, "SALE! 90% off"), key="k1")
    assert status == 201
    fetch = f"{MESSAGES[: -len('.json')]}/{created['sid']}.json"
    headers = {"Authorization": basic_auth(), "Accept-Encoding": "gzip"}
    async with http.get(second.url + fetch, headers=headers) as answer:
        assert (await answer.json())["error_code"] == 30007
        assert answer.headers["X-Sendguard-Decision"] == "passthrough"
    await second.app[RUNTIME].learner.drain()
    status, headers, body = await post_send(http, first.url, form(ALICE, "SALE! 90% off"), key="k2")
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (400, "suppressed", 30007)
    # Message scope: other content to the same person still goes out.
    status, headers, _ = await post_send(http, first.url, form(ALICE, "Your receipt"), key="k3")
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert fake_twilio.creates == 2


async def test_listed_messages_teach_too(limited, fake_twilio, http):
    first, second = limited
    fake_twilio.push_fault(Fault("undelivered", code=30006))  # landline: recipient scope
    await post_send(http, first.url, form(BOB, "hello"))
    async with http.get(second.url + MESSAGES, headers={"Authorization": basic_auth()}) as answer:
        assert answer.status == 200
    await second.app[RUNTIME].learner.drain()
    status, headers, body = await post_send(http, first.url, form(BOB, "anything else"))
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (400, "suppressed", 30006)
    assert fake_twilio.creates == 1


async def test_suppression_report_mode(proxies, fake_twilio, http, shared_redis_url):
    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, suppression_mode="report"
    )
    await post_send(http, proxy.url, form(OPTED_OUT, "hi"))
    _status, headers, _ = await post_send(http, proxy.url, form(OPTED_OUT, "again"))
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert proxy.app[METRICS].value("sendguard_would_block_total", decision="suppressed") == 1
    assert len(fake_twilio.create_requests()) == 2


# -- the per-account ceiling -------------------------------------------------------------------


async def test_the_account_ceiling_counts_across_instances_and_recipients(
    store_mode, proxies, fake_twilio, http, shared_redis_url
):
    common = {"upstream": fake_twilio.url, "account_limits": "4/h", "recipient_limits": "off"}
    first, second = await proxies.start_pair(store_mode, shared_redis_url, **common)
    recipients = [f"+1555867{5400 + i}" for i in range(6)]
    for i, to in enumerate(recipients[:4]):
        status, headers, _ = await post_send(http, (first, second)[i % 2].url, form(to, "hi"))
        assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, body = await post_send(http, second.url, form(recipients[4], "hi"))
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (429, "rate-limited", 20429)
    assert "account" in body["message"]
    assert 1 <= int(headers["Retry-After"]) <= 3600
    # Refused sends are not counted, and replays never are: a duplicate still gets its answer.
    assert (await post_send(http, first.url, form(recipients[5], "hi")))[0] == 429
    status, headers, _ = await post_send(http, first.url, form(recipients[0], "hi"))
    assert (status, headers["X-Sendguard-Decision"]) == (201, "replayed")
    # Another account has its own ceiling.
    other = "AC" + "fedcba9876543210" * 2
    other_path = MESSAGES.replace("AC" + "0123456789abcdef" * 2, other)
    status, _, _ = await post_send(
        http,
        first.url,
        form(recipients[4], "hi"),
        path=other_path,
        auth=basic_auth(other, "x" * 32),
    )
    assert status == 201
    assert fake_twilio.creates == 5


async def test_the_account_ceiling_in_report_mode_forwards_and_counts(
    proxies, fake_twilio, http, shared_redis_url
):
    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, recipient_limits="off",
        account_limits="2/min", account_limits_mode="report",
    )  # fmt: skip
    for i in range(4):
        status, headers, _ = await post_send(http, proxy.url, form(f"+1555867{5500 + i}", "x"))
        assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 4
    assert proxy.app[METRICS].value("sendguard_would_block_total", decision="rate-limited") == 2
