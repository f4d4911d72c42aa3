"""The admin API on its own port: auth, every endpoint, bad input, and metrics that move.

Real instances, a real store, the fake Twilio counting creates.
"""

from __future__ import annotations

import functools
import re

import pytest

from proxy.sandbox import Fault
from tests.harness import ACCOUNT, MESSAGES, SENDER, admin_call, post_send

TOKEN = "admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALICE = "+15558675310"
OPTED_OUT = "+15005550004"  # the sandbox answers 400/21610


@pytest.fixture
async def guarded(proxies, fake_twilio, shared_redis_url):
    return await proxies.start(
        upstream=fake_twilio.url,
        redis_url=shared_redis_url,
        admin_token=TOKEN,
        recipient_limits="2/min",
        breaker_cooldown=60.0,
    )


call = functools.partial(admin_call, headers=AUTH)


def send_form(to: str = ALICE, body: str = "hello") -> dict[str, str]:
    return {"To": to, "From": SENDER, "Body": body}


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": "Bearer"}, {"Authorization": f"Bearer {TOKEN}x"}],
)  # fmt: skip
async def test_v1_needs_the_bearer_token(guarded, http, headers):
    for method, path in [("GET", "/v1/status"), ("GET", "/v1/kill-switches"),
                         ("POST", "/v1/kill-switches"), ("DELETE", "/v1/kill-switches/global"),
                         ("GET", "/v1/records?message_sid=x"),
                         ("GET", "/v1/records?state=unknown"),
                         ("POST", f"/v1/records/r{'0' * 24}.k{'0' * 40}/resolve")]:  # fmt: skip
        status, body = await call(http, method, guarded.admin_url + path, headers=headers)
        assert status == 401, (method, path)
        assert body["error"]["status"] == 401


async def test_without_a_configured_token_every_v1_call_is_refused(proxies, fake_twilio, http):
    open_proxy = await proxies.start(upstream=fake_twilio.url)
    for presented in ({}, {"Authorization": "Bearer "}, AUTH):
        status, _ = await call(http, "GET", open_proxy.admin_url + "/v1/status", headers=presented)
        assert status == 401


async def test_probes_and_metrics_are_open(guarded, http):
    assert await call(http, "GET", guarded.admin_url + "/healthz", headers={}) == (
        200, {"status": "ok"},
    )  # fmt: skip
    status, ready = await call(http, "GET", guarded.admin_url + "/readyz", headers={})
    assert (status, ready["ready"], ready["store_mode"]) == (200, True, "shared")
    async with http.get(guarded.admin_url + "/metrics") as response:
        assert response.status == 200
        assert "sendguard_requests_total" in await response.text()


async def test_readyz_fails_once_shutdown_begins(guarded, http):
    guarded.stopping = True
    status, body = await call(http, "GET", guarded.admin_url + "/readyz", headers={})
    assert (status, body["ready"], body["shutting_down"]) == (503, False, True)


# -- kill switches ----------------------------------------------------------------------------


async def test_kill_switch_engage_list_release(guarded, fake_twilio, http):
    url = guarded.admin_url + "/v1/kill-switches"
    status, body = await call(http, "POST", url, json={
        "scope": "account:" + ACCOUNT, "reason": "runaway loop", "author": "oncall", "ttl": "10m"
    })  # fmt: skip
    assert status == 201
    assert body["kill_switch"]["scope"] == "account:" + ACCOUNT
    assert body["kill_switch"]["expires"] is not None
    status, body = await call(http, "GET", url)
    assert status == 200 and [s["scope"] for s in body["kill_switches"]] == ["account:" + ACCOUNT]
    status, headers, error = await post_send(http, guarded.url, send_form())
    assert (status, headers["X-Sendguard-Decision"], error["code"]) == (503, "killed", 79020)
    assert 1 <= int(headers["Retry-After"]) <= 600
    status, body = await call(http, "DELETE", f"{url}/account:{ACCOUNT}", json={"reason": "fixed"})
    assert (status, body["released"]) == (200, True)
    status, body = await call(http, "DELETE", f"{url}/account:{ACCOUNT}")
    assert (status, body["released"]) == (200, False)
    status, headers, _ = await post_send(http, guarded.url, send_form())
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"reason": "no scope"},
        {"scope": "global"},  # no reason
        {"scope": "everything", "reason": "x"},
        {"scope": "recipient:12345", "reason": "x"},
        {"scope": "global", "reason": "x", "ttl": "soon"},
        {"scope": "global", "reason": "x", "ttl": "-5"},
        {"scope": ["global"], "reason": "x"},
        {"scope": "global", "reason": "x" * 600},
    ],
)
async def test_kill_switch_bad_input_is_a_clear_400(guarded, http, payload):
    status, body = await call(http, "POST", guarded.admin_url + "/v1/kill-switches", json=payload)
    assert status == 400
    assert body["error"]["message"]
    assert "12345" not in body["error"]["message"] or "recipient" in body["error"]["message"]


async def test_kill_switch_body_that_is_not_json(guarded, http):
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        status, _ = await call(http, "POST", guarded.admin_url + "/v1/kill-switches", data=raw)
        assert status == 400, raw
    status, _ = await call(http, "DELETE", guarded.admin_url + "/v1/kill-switches/nope:x")
    assert status == 400


async def test_a_configured_switch_cannot_be_released_over_the_api(
    proxies, fake_twilio, http, shared_redis_url
):
    pinned = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, admin_token=TOKEN,
        kill_switch="prefix:+44",
    )  # fmt: skip
    status, _ = await call(http, "DELETE", pinned.admin_url + "/v1/kill-switches/prefix:+44")
    assert status == 409
    status, headers, _ = await post_send(http, pinned.url, send_form("+447700900123"))
    assert (status, headers["X-Sendguard-Decision"]) == (503, "killed")


# -- suppressions, breakers, records ----------------------------------------------------------


async def test_suppressions_list_and_clear(guarded, fake_twilio, http):
    status, _, body = await post_send(http, guarded.url, send_form(OPTED_OUT))
    assert (status, body["code"]) == (400, 21610)
    query = {"account": ACCOUNT, "to": OPTED_OUT}
    status, listed = await call(http, "GET", guarded.admin_url + "/v1/suppressions", params=query)
    assert status == 200
    assert [(s["scope"], s["code"], s["active"]) for s in listed["suppressions"]] == [
        ("sender", 21610, True)
    ]
    assert OPTED_OUT not in str(listed) and SENDER not in str(listed)  # masked
    status, headers, body = await post_send(http, guarded.url, send_form(OPTED_OUT, "again"))
    assert (status, headers["X-Sendguard-Decision"]) == (400, "suppressed")
    masked_field = listed["suppressions"][0]["field"]
    status, _ = await call(http, "DELETE", guarded.admin_url + "/v1/suppressions",
                           json={**query, "field": masked_field})  # fmt: skip
    assert status == 404  # the masked form names nothing: clearing needs the sender in full
    status, cleared = await call(http, "DELETE", guarded.admin_url + "/v1/suppressions",
                                 json={**query, "reason": "re-subscribed", "author": "support"})  # fmt: skip
    assert (status, cleared["cleared"]) == (200, 1)
    attempts = len(fake_twilio.create_requests())
    status, headers, _ = await post_send(http, guarded.url, send_form(OPTED_OUT, "third"))
    assert headers["X-Sendguard-Decision"] == "forwarded"  # reaches Twilio again
    assert len(fake_twilio.create_requests()) == attempts + 1


async def test_breaker_inspect_and_reset(guarded, fake_twilio, http):
    for i in range(3):
        await post_send(http, guarded.url, send_form(body=f"m{i}"))
    query = {"account": ACCOUNT, "to": ALICE}
    status, breaker = await call(http, "GET", guarded.admin_url + "/v1/breakers", params=query)
    assert status == 200
    assert (breaker["state"], breaker["trips"], breaker["sends_in_windows"]) == (
        "open", 1, {"2/min": 2},
    )  # fmt: skip
    status, headers, _ = await post_send(http, guarded.url, send_form(body="m9"))
    assert headers["X-Sendguard-Decision"] == "breaker-open"
    status, reset = await call(http, "DELETE", guarded.admin_url + "/v1/breakers",
                               json={**query, "reason": "false alarm"})  # fmt: skip
    assert (status, reset["reset"]) == (200, True)
    status, headers, _ = await post_send(http, guarded.url, send_form(body="after reset"))
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 3


@pytest.mark.parametrize(
    "query",
    [{}, {"account": ACCOUNT}, {"to": ALICE}, {"account": "ACnope", "to": ALICE},
     {"account": ACCOUNT, "to": ""}],
)  # fmt: skip
async def test_recipient_endpoints_need_account_and_to(guarded, http, query):
    for path in ("/v1/suppressions", "/v1/breakers"):
        for method in ("GET", "DELETE"):
            status, body = await call(http, method, guarded.admin_url + path, params=query)
            assert status == 400, (method, path, query)
            assert body["error"]["message"]


async def test_records_by_message_sid_and_by_key(guarded, http):
    _, _, sent = await post_send(http, guarded.url, send_form(body="record me"))
    status, found = await call(http, "GET", guarded.admin_url + "/v1/records",
                               params={"message_sid": sent["sid"]})  # fmt: skip
    assert status == 200
    record = found["record"]
    assert (record["state"], record["message_sid"], record["upstream_status"]) == (
        "done", sent["sid"], 201,
    )  # fmt: skip
    assert record["send"]["to"] == "+155******10" and ALICE not in str(found)
    assert re.fullmatch(r"r[0-9a-f]{24}\.f[0-9a-f]{40}", record["id"])  # keyless: fingerprint
    status, by_id = await call(http, "GET", guarded.admin_url + "/v1/records",
                               params={"id": record["id"]})  # fmt: skip
    assert (status, by_id) == (200, found)
    _, _, keyed = await post_send(http, guarded.url, send_form(body="keyed"), key="order-77")
    status, found = await call(http, "GET", guarded.admin_url + "/v1/records",
                               params={"account": ACCOUNT, "key": "order-77"})  # fmt: skip
    assert (status, found["record"]["message_sid"]) == (200, keyed["sid"])
    assert re.fullmatch(r"r[0-9a-f]{24}\.k[0-9a-f]{40}", found["record"]["id"])
    status, _ = await call(http, "GET", guarded.admin_url + "/v1/records",
                           params={"message_sid": "SM" + "0" * 32})  # fmt: skip
    assert status == 404
    for bad in ({}, {"message_sid": "xyz"}, {"key": "k"}):
        status, _ = await call(http, "GET", guarded.admin_url + "/v1/records", params=bad)
        assert status == 400, bad


async def test_an_unknown_record_shows_why(guarded, fake_twilio, http):
    fake_twilio.push_fault(Fault("500-after-create"))
    _, _, _ = await post_send(http, guarded.url, send_form(body="ambiguous"), key="amb-1")
    status, found = await call(http, "GET", guarded.admin_url + "/v1/records",
                               params={"account": ACCOUNT, "key": "amb-1"})  # fmt: skip
    assert (status, found["record"]["state"]) == (200, "unknown")
    assert found["record"]["unknown_reason"] == "upstream-500"
    status, ledger = await call(http, "GET", guarded.admin_url + "/v1/records",
                                params={"state": "unknown"})  # fmt: skip
    assert status == 200
    assert [entry["id"] for entry in ledger["records"]] == [found["record"]["id"]]


async def test_status_overview(guarded, http):
    await post_send(http, guarded.url, send_form())
    await post_send(http, guarded.url, send_form())
    status, body = await call(http, "GET", guarded.admin_url + "/v1/status")
    assert status == 200
    assert body["store_mode"] == "shared"
    assert body["requests_by_decision"] == {"forwarded": 1.0, "replayed": 1.0}


# -- metrics move -----------------------------------------------------------------------------


async def metric(http, instance, sample: str) -> float:
    """A sample's value as Prometheus scrapes it (0 when absent)."""
    async with http.get(instance.admin_url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


async def test_metrics_move_with_sends_replays_blocks_and_trips(guarded, fake_twilio, http):
    await post_send(http, guarded.url, send_form(body="a"))
    await post_send(http, guarded.url, send_form(body="a"))
    await post_send(http, guarded.url, send_form(body="b"))
    await post_send(http, guarded.url, send_form(body="c"))  # over 2/min: trips
    await post_send(http, guarded.url, send_form(body="d"))  # breaker open
    fake_twilio.push_fault(Fault("500-after-create"))
    await post_send(http, guarded.url, send_form("+15558675399", "unknown"))
    async with http.get(guarded.url + MESSAGES) as _:
        pass
    checks = {
        'sendguard_requests_total{decision="forwarded"}': 3,
        'sendguard_requests_total{decision="replayed"}': 1,
        'sendguard_requests_total{decision="rate-limited"}': 1,
        'sendguard_requests_total{decision="breaker-open"}': 1,
        'sendguard_requests_total{decision="passthrough"}': 1,
        'sendguard_dedup_hits_total{by="fingerprint",kind="replayed"}': 1,
        "sendguard_breaker_trips_total": 1,
        'sendguard_records_unknown_total{reason="500"}': 1,
        f'sendguard_sends_total{{account="{ACCOUNT}"}}': 3,
        'sendguard_upstream_latency_seconds_count{route="messages"}': 3,
        'sendguard_store_mode{mode="shared"}': 1,
        'sendguard_kill_switch_engaged{scope_kind="global"}': 0,
    }
    for name, expected in checks.items():
        assert await metric(http, guarded, name) == expected, name
    await call(http, "POST", guarded.admin_url + "/v1/kill-switches",
               json={"scope": "global", "reason": "drill"})  # fmt: skip
    assert await metric(http, guarded, 'sendguard_kill_switch_engaged{scope_kind="global"}') == 1
    await call(http, "DELETE", guarded.admin_url + "/v1/kill-switches/global")
    assert await metric(http, guarded, 'sendguard_kill_switch_engaged{scope_kind="global"}') == 0
