"""The UNKNOWN ledger and its resolution by an operator (SPEC §3.1, issue 12 point 4).

Real instances on a real shared Redis, the counting fake Twilio, the app sending with the real
twilio-python client. An UNKNOWN send is made the way it happens: Twilio creates the message
and answers 500 (`500-after-create`); a list lag keeps the message out of Twilio's list, so
no retry can settle it by itself and only the operator's word (or a SID) can.
"""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

import pytest
from structlog.testing import capture_logs
from twilio.base.exceptions import TwilioRestException

from proxy.sandbox import Fault
from proxy.server.app import METRICS
from tests.harness import ACCOUNT, SENDER, admin_call, in_thread, post_send, twilio_client

ADMIN_TOKEN = "ledger-admin-token-0123"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ALICE, BOB = "+15558675310", "+15558675311"
RECORD_ID = re.compile(r"^r[0-9a-f]{24}\.[kf][0-9a-f]{40}$")


@pytest.fixture
async def guarded(proxies, fake_twilio, shared_redis_url):
    fake_twilio.list_lag_seconds = 600.0  # Twilio's list does not show the message yet
    return await proxies.start(
        upstream=fake_twilio.url,
        redis_url=shared_redis_url,
        admin_token=ADMIN_TOKEN,
        recipient_limits="off",
    )


call = functools.partial(admin_call, headers=AUTH)


async def ledger(http, instance) -> list[dict[str, Any]]:
    status, body = await call(http, "GET", instance.admin_url + "/v1/records?state=unknown")
    assert status == 200, body
    return body["records"]


async def ledger_of(http, instance, n: int) -> list[dict[str, Any]]:
    """The ledger once it holds `n` entries (the UNKNOWN mark may follow the answer)."""
    for _ in range(100):
        entries = await ledger(http, instance)
        if len(entries) >= n:
            return entries
        await asyncio.sleep(0.02)
    raise AssertionError(f"the ledger holds {entries}, not {n} entries")


def form(to: str = ALICE, body: str = "Your order shipped") -> dict[str, str]:
    return {"To": to, "From": SENDER, "Body": body}


async def unknown_send(http, instance, fake_twilio, to: str = ALICE, key: str | None = None) -> str:
    """A send Twilio made but answered 500: returns the SID Twilio's console would show."""
    fake_twilio.push_fault(Fault("500-after-create"))
    before = set(fake_twilio.messages)
    status, headers, _ = await post_send(http, instance.url, form(to), key=key)
    assert (status, headers["X-Sendguard-Decision"]) == (500, "forwarded")
    [sid] = set(fake_twilio.messages) - before
    return sid


def resolve(http, instance, record_id: str, **payload: str):
    return call(http, "POST", f"{instance.admin_url}/v1/records/{record_id}/resolve", json=payload)


# -- the ledger -------------------------------------------------------------------------------


async def test_the_ledger_lists_unknown_sends_oldest_first_masked(guarded, fake_twilio, http):
    await unknown_send(http, guarded, fake_twilio, ALICE, key="order-1")
    await asyncio.sleep(0.01)
    await unknown_send(http, guarded, fake_twilio, BOB)
    status, _, _ = await post_send(http, guarded.url, form(ALICE, "a definite one"))
    assert status == 201

    first, second = await ledger_of(http, guarded, 2)
    assert RECORD_ID.match(first["id"]) and RECORD_ID.match(second["id"])
    assert (first["to"], second["to"]) == ("+155******10", "+155******11")  # oldest first
    assert first == {
        "id": first["id"],
        "account": ACCOUNT,
        "to": "+155******10",
        "from": "+150******06",
        "route": "messages",
        "dedup_by": "key",
        "claimed_at": first["claimed_at"],
        "reason": "upstream-500",
        "reconciliations": 0,
        "resolved_sid": None,
    }
    assert second["dedup_by"] == "fingerprint"
    assert first["claimed_at"] <= second["claimed_at"] and first["claimed_at"].endswith("+00:00")
    status, body = await call(http, "GET", guarded.admin_url + "/v1/records?state=unknown&limit=1")
    assert (status, [e["id"] for e in body["records"]], body["truncated"]) == (
        200, [first["id"]], True,
    )  # fmt: skip
    assert ALICE not in str(body) and "order shipped" not in str(body)

    # Record lookups show the same id, and the id finds the record.
    status, by_key = await call(http, "GET", guarded.admin_url + "/v1/records",
                                params={"account": ACCOUNT, "key": "order-1"})  # fmt: skip
    assert (status, by_key["record"]["id"], by_key["record"]["state"]) == (
        200,
        first["id"],
        "unknown",
    )
    status, by_id = await call(http, "GET", guarded.admin_url + "/v1/records",
                               params={"id": second["id"]})  # fmt: skip
    assert (status, by_id["record"]["state"], by_id["record"]["unknown_reason"]) == (
        200, "unknown", "upstream-500",
    )  # fmt: skip


@pytest.mark.parametrize(
    "query",
    [{"state": "done"}, {"state": "unknown", "limit": "0"}, {"state": "unknown", "limit": "501"},
     {"state": "unknown", "limit": "ten"}, {"state": "unknown", "key": "k"},
     {"id": "r" + "0" * 24}, {"id": "r" + "0" * 24 + ".x" + "0" * 40},
     {"id": "r" + "0" * 24 + ".k" + "0" * 39}, {"id": "R" + "0" * 24 + ".k" + "0" * 40}],
)  # fmt: skip
async def test_bad_ledger_and_lookup_queries_are_400(guarded, http, query):
    status, body = await call(http, "GET", guarded.admin_url + "/v1/records", params=query)
    assert status == 400, query
    assert body["error"]["status"] == 400 and body["error"]["message"]


async def test_an_empty_ledger_and_an_unknown_id(guarded, http):
    assert await ledger(http, guarded) == []
    status, _ = await call(http, "GET", guarded.admin_url + "/v1/records",
                           params={"id": "r" + "0" * 24 + ".f" + "0" * 40})  # fmt: skip
    assert status == 404


# -- resolving --------------------------------------------------------------------------------


async def test_resolved_sent_retries_replay_that_message_and_nothing_is_sent_again(
    guarded, fake_twilio, http
):
    app = twilio_client(guarded.url)
    fake_twilio.push_fault(Fault("500-after-create"))
    with pytest.raises(TwilioRestException) as first_try:
        await in_thread(app.messages.create, to=ALICE, from_=SENDER, body="Your code is 1234")
    assert first_try.value.status == 500
    [sid] = fake_twilio.messages  # Twilio's console shows it; its list does not yet
    [entry] = await ledger_of(http, guarded, 1)

    with capture_logs() as logs:
        status, body = await resolve(http, guarded, entry["id"], outcome="sent",
                                     message_sid=sid, reason="seen in console, INC-7", author="ana")  # fmt: skip
    assert status == 200, body
    assert (body["outcome"], body["record"]["id"], body["record"]["resolved_sid"]) == (
        "sent", entry["id"], sid,
    )  # fmt: skip
    [audit] = [log for log in logs if log["event"] == "record_resolved"]
    assert (audit["outcome"], audit["record_id"], audit["message_sid"]) == (
        "resolved-sent", entry["id"], sid,
    )  # fmt: skip
    assert (audit["author"], audit["reason"], audit["to"]) == ("ana", "seen in console, INC-7", "+155******10")  # fmt: skip
    assert ALICE not in str(logs)
    metrics = guarded.app[METRICS]
    assert metrics.value("sendguard_reconciliations_total", outcome="resolved-sent") == 1

    # The next retry fetches that SID from Twilio (its own credential) and replays it.
    for _ in range(2):
        message = await in_thread(
            app.messages.create, to=ALICE, from_=SENDER, body="Your code is 1234"
        )
        assert message.sid == sid
        assert app.http_client.last_headers["X-Sendguard-Decision"] == "replayed"
    assert fake_twilio.creates == 1
    assert await ledger(http, guarded) == []


async def test_a_resolution_takes_effect_on_the_very_next_retry(guarded, fake_twilio, http):
    sid = await unknown_send(http, guarded, fake_twilio)
    [entry] = await ledger_of(http, guarded, 1)
    status, _, error = await post_send(http, guarded.url, form())  # the app keeps retrying
    assert (status, error["code"]) == (409, 79004)
    status, _ = await resolve(http, guarded, entry["id"], outcome="sent", message_sid=sid,
                              reason="seen in console")  # fmt: skip
    assert status == 200
    status, headers, replayed = await post_send(http, guarded.url, form())
    assert (status, headers["X-Sendguard-Decision"], replayed["sid"]) == (201, "replayed", sid)
    assert fake_twilio.creates == 1


async def test_resolved_not_sent_releases_and_the_next_retry_sends_once(guarded, fake_twilio, http):
    await unknown_send(http, guarded, fake_twilio)
    fake_twilio.messages.clear()  # say Twilio's console shows nothing: the operator's call
    [entry] = await ledger_of(http, guarded, 1)
    status, _, error = await post_send(http, guarded.url, form())
    assert (status, error["code"]) == (409, 79004)

    with capture_logs() as logs:
        status, body = await resolve(http, guarded, entry["id"], outcome="not-sent",
                                     reason=f"no message to {ALICE} in the console after 1 h")  # fmt: skip
    assert status == 200, body
    assert (body["outcome"], body["record"]["resolved_sid"]) == ("not-sent", None)
    [audit] = [log for log in logs if log["event"] == "record_resolved"]
    assert (audit["outcome"], audit["author"], audit["message_sid"]) == (
        "resolved-not-sent", "admin-api", None,
    )  # fmt: skip
    assert audit["reason"] == "no message to +155******10 in the console after 1 h"
    assert ALICE not in str(logs)
    assert await ledger(http, guarded) == []
    metrics = guarded.app[METRICS]
    assert metrics.value("sendguard_reconciliations_total", outcome="resolved-not-sent") == 1

    status, headers, sent = await post_send(http, guarded.url, form())
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    status, headers, again = await post_send(http, guarded.url, form())
    assert (status, headers["X-Sendguard-Decision"], again["sid"]) == (201, "replayed", sent["sid"])
    assert fake_twilio.creates == 2  # the lost one, and the one the release let out

    # Settled: resolving it again is a 404, with either outcome.
    status, body = await resolve(http, guarded, entry["id"], outcome="not-sent", reason="again")
    assert (status, body["error"]["status"]) == (404, 404)


async def test_a_settled_or_unknown_id_is_404(guarded, fake_twilio, http):
    status, _, sent = await post_send(http, guarded.url, form(body="delivered fine"))
    assert status == 201
    status, found = await call(http, "GET", guarded.admin_url + "/v1/records",
                               params={"message_sid": sent["sid"]})  # fmt: skip
    done_id = found["record"]["id"]
    assert RECORD_ID.match(done_id)
    for record_id in (done_id, "r" + "1" * 24 + ".f" + "2" * 40):
        for payload in ({"outcome": "not-sent", "reason": "x"},
                        {"outcome": "sent", "message_sid": "SM" + "a" * 32, "reason": "x"}):  # fmt: skip
            status, body = await resolve(http, guarded, record_id, **payload)
            assert status == 404, (record_id, payload)
            assert "no UNKNOWN record" in body["error"]["message"]
    assert fake_twilio.creates == 1


GOOD_SID = "SM" + "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "payload",
    [
        {"outcome": "sent", "message_sid": GOOD_SID},  # no reason
        {"outcome": "sent", "message_sid": GOOD_SID, "reason": "   "},
        {"outcome": "sent", "message_sid": GOOD_SID, "reason": "x" * 501},
        {"outcome": "sent", "reason": "no sid"},
        {"outcome": "sent", "message_sid": "SMnope", "reason": "x"},
        {"outcome": "sent", "message_sid": "CA" + "0" * 32, "reason": "x"},
        {"outcome": "sent", "message_sid": "SM" + "G" * 32, "reason": "x"},
        {"outcome": "not-sent", "message_sid": GOOD_SID, "reason": "x"},
        {"outcome": "maybe", "reason": "x"},
        {"reason": "no outcome"},
        {"outcome": ["sent"], "reason": "x"},
    ],
)
async def test_bad_resolutions_are_400_and_change_nothing(guarded, fake_twilio, http, payload):
    await unknown_send(http, guarded, fake_twilio)
    [entry] = await ledger_of(http, guarded, 1)
    status, body = await resolve(http, guarded, entry["id"], **payload)
    assert status == 400, payload
    assert body["error"]["status"] == 400 and body["error"]["message"]
    assert await ledger(http, guarded) == [entry]


@pytest.mark.parametrize(
    "record_id", ["nope", "r" + "0" * 24, "r" + "0" * 24 + ".k" + "0" * 41, "r" + "0" * 24 + ".K" + "0" * 40]
)  # fmt: skip
async def test_a_malformed_id_is_400(guarded, http, record_id):
    status, body = await resolve(http, guarded, record_id, outcome="not-sent", reason="x")
    assert status == 400
    assert "record id" in body["error"]["message"]


async def test_the_body_must_be_a_json_object(guarded, fake_twilio, http):
    await unknown_send(http, guarded, fake_twilio)
    [entry] = await ledger_of(http, guarded, 1)
    url = f"{guarded.admin_url}/v1/records/{entry['id']}/resolve"
    for raw in (b"not json", b"[1, 2]"):
        status, _ = await call(http, "POST", url, data=raw)
        assert status == 400


async def test_the_ledger_and_resolve_need_the_bearer_token(guarded, fake_twilio, http):
    await unknown_send(http, guarded, fake_twilio)
    [entry] = await ledger_of(http, guarded, 1)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, body = await call(http, "GET", guarded.admin_url + "/v1/records?state=unknown",
                                  headers=headers)  # fmt: skip
        assert (status, body["error"]["status"]) == (401, 401)
        status, _ = await resolve_as(http, guarded, entry["id"], headers)
        assert status == 401
    assert await ledger(http, guarded) == [entry]


def resolve_as(http, instance, record_id: str, headers: dict[str, str]):
    return call(http, "POST", f"{instance.admin_url}/v1/records/{record_id}/resolve",
                headers=headers, json={"outcome": "not-sent", "reason": "x"})  # fmt: skip
