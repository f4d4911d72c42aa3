"""The admin CLI end to end: `python -m proxy …` in a subprocess, against real sendguard
instances sharing a real Redis, sending through the counting fake Twilio.

The CLI is synchronous, so it runs as a child process (the event loop keeps serving the
proxies meanwhile), with the token in its environment, exactly as an operator runs it.
Every run also checks that the token never appears in what the command printed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import click
import pytest

from proxy.cli.admin_client import AdminClient, Unreachable, default_admin_url
from proxy.sandbox import Fault
from proxy.server.app import METRICS
from tests.environ import env_without_sendguard
from tests.harness import ACCOUNT, MESSAGES, SENDER, ProxyInstance, basic_auth, post_send
from tests.paths import REPO_ROOT
from tests.servers import free_port

ADMIN_TOKEN = "t0k3n-" + secrets.token_hex(12)
ALICE, BOB = "+15558675310", "+15558675311"
OPTED_OUT = "+15005550004"  # the sandbox answers 400/21610 for this number
BUDGET = 1.0  # SPEC §3.3: a kill switch takes effect on every instance within 1 s


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def sendguard(
    *args: str,
    admin: ProxyInstance | None = None,
    token: str | None = ADMIN_TOKEN,
    env: dict[str, str] | None = None,
) -> Ran:
    """Run the real CLI; `admin` sets SENDGUARD_ADMIN_URL to that instance's admin listener."""
    child_env = env_without_sendguard()
    child_env["USER"] = "ops-tester"
    if token is not None:
        child_env["SENDGUARD_ADMIN_TOKEN"] = token
    if admin is not None:
        child_env["SENDGUARD_ADMIN_URL"] = admin.admin_url
    child_env.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env, cwd=REPO_ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    ran = Ran(process.returncode, out.decode(), err.decode())
    for secret in (ADMIN_TOKEN, token or ADMIN_TOKEN):
        assert secret not in ran.stdout + ran.stderr, "the admin token was printed"
    return ran


def ok(ran: Ran) -> Ran:
    assert (ran.code, ran.stderr) == (0, ""), ran
    return ran


def labelled(text: str) -> list[tuple[str, str]]:
    """`label  value` lines (labels may hold single spaces; the gap is two or more)."""
    return [(label, value.strip()) for label, value in (line.split("  ", 1) for line in text.splitlines())]  # fmt: skip


def form(to: str = ALICE, body: str = "hello", sender: str = SENDER) -> dict[str, str]:
    return {"To": to, "From": sender, "Body": body}


async def decision_within(
    http: aiohttp.ClientSession, proxy: ProxyInstance, wanted: str, budget: float, to: str = ALICE
) -> tuple[float, int, dict[str, str]]:
    """Send fresh messages until one gets `wanted`; returns (seconds taken, status, headers)."""
    start = time.monotonic()
    i = 0
    while True:
        i += 1
        status, headers, _ = await post_send(http, proxy.url, form(to, f"probe {i} {start}"))
        elapsed = time.monotonic() - start
        if headers["X-Sendguard-Decision"] == wanted:
            return elapsed, status, headers
        assert elapsed < budget, f"still {headers['X-Sendguard-Decision']} after {elapsed:.2f} s"
        await asyncio.sleep(0.02)


@pytest.fixture
async def pair(proxies, fake_twilio, shared_redis_url) -> tuple[ProxyInstance, ProxyInstance]:
    """Two instances of one fleet: one shared Redis, both in front of the fake Twilio."""
    common = {
        "upstream": fake_twilio.url,
        "redis_url": shared_redis_url,
        "admin_token": ADMIN_TOKEN,
        "recipient_limits": "off",
    }
    return await proxies.start(**common), await proxies.start(**common)


# -- kill switches ----------------------------------------------------------------------------


async def test_engage_on_one_instance_stops_sends_on_the_other_and_release_restores(
    pair, fake_twilio, http
):
    first, second = pair
    engaged = ok(
        await sendguard(
            "kill-switch", "engage", "--scope", "global", "--reason", "incident 42: retry loop",
            admin=first,
        )
    )  # fmt: skip
    done = time.monotonic()
    assert engaged.stdout.splitlines()[0] == "kill switch engaged: global"
    assert "incident 42: retry loop" in engaged.stdout
    assert "ops-tester@" in engaged.stdout  # default author: $USER@hostname
    assert "never (until released)" in engaged.stdout
    assert engaged.stdout.splitlines()[-1] == (
        "release with: sendguard kill-switch release --scope global"
    )

    _, status, headers = await decision_within(http, second, "killed", BUDGET)
    assert time.monotonic() - done < BUDGET
    assert status == 503 and int(headers["Retry-After"]) >= 1
    async with http.get(second.url + MESSAGES, headers={"Authorization": basic_auth()}) as got:
        assert (got.status, got.headers["X-Sendguard-Decision"]) == (200, "passthrough")
    forwarded_while_waiting = fake_twilio.creates

    table, raw = await asyncio.gather(
        sendguard("kill-switch", "list", admin=second),
        sendguard("kill-switch", "list", "--json", admin=second),
    )
    header, row = ok(table).stdout.splitlines()
    assert header.split() == ["SCOPE", "REASON", "AUTHOR", "SINCE", "EXPIRES", "SOURCE"]
    assert row.startswith("global ") and "incident 42: retry loop" in row
    assert row.split()[-2:] == ["never", "store"]
    listed = ok(raw).json()
    assert listed["synced"] is True
    assert [(s["scope"], s["reason"], s["expires_at"]) for s in listed["kill_switches"]] == [
        ("global", "incident 42: retry loop", None)
    ]
    assert listed["kill_switches"][0]["author"].startswith("ops-tester@")

    released = ok(
        await sendguard(
            "kill-switch", "release", "--scope", "global", "--reason", "loop fixed",
            "--author", "alice@example.com", admin=second,
        )
    )  # fmt: skip
    assert released.stdout.strip() == "kill switch released: global"
    _, status, _ = await decision_within(http, first, "forwarded", BUDGET)
    assert status == 201
    assert fake_twilio.creates == forwarded_while_waiting + 1

    again = ok(await sendguard("kill-switch", "release", "--scope", "global", admin=first))
    assert again.stdout.strip() == "global: not engaged (nothing to release)"
    assert ok(await sendguard("kill-switch", "list", admin=first)).stdout.strip() == (
        "no kill switch engaged"
    )


async def test_a_switch_with_a_ttl_releases_itself(pair, http):
    first, second = pair
    engaged = ok(
        await sendguard(
            "kill-switch", "engage", "--scope", "global", "--reason", "brief pause",
            "--ttl", "2s", "--json", admin=first,
        )
    )  # fmt: skip
    switch = engaged.json()["kill_switch"]
    assert switch["expires_at"] == pytest.approx(switch["created_at"] + 2)
    _, status, headers = await decision_within(http, second, "killed", BUDGET)
    assert status == 503 and headers["Retry-After"] in ("1", "2")
    _, status, _ = await decision_within(http, second, "forwarded", 4.0)
    assert status == 201
    listed = ok(await sendguard("kill-switch", "list", "--json", admin=second)).json()
    assert listed["kill_switches"] == []


async def test_a_recipient_scope_is_url_encoded_and_stops_only_that_recipient(pair, http):
    first, second = pair
    scope = f"recipient:{ALICE}"  # ':' and '+' in the DELETE path
    ok(await sendguard("kill-switch", "engage", "--scope", scope, "--reason", "complaint", admin=first))  # fmt: skip
    await decision_within(http, second, "killed", BUDGET, to=ALICE)
    assert (await post_send(http, second.url, form(BOB, "to bob")))[1]["X-Sendguard-Decision"] == (
        "forwarded"
    )
    released = ok(await sendguard("kill-switch", "release", "--scope", scope, admin=second))
    assert released.stdout.strip() == f"kill switch released: {scope}"
    await decision_within(http, first, "forwarded", BUDGET, to=ALICE)


# -- suppressions, breakers, records ----------------------------------------------------------


async def test_suppressions_list_and_clear(pair, fake_twilio, http):
    first, second = pair
    status, headers, body = await post_send(http, first.url, form(OPTED_OUT, "hi"))
    assert (status, headers["X-Sendguard-Decision"], body["code"]) == (400, "forwarded", 21610)
    status, headers, _ = await post_send(http, second.url, form(OPTED_OUT, "hi again"))
    assert (status, headers["X-Sendguard-Decision"]) == (400, "suppressed")
    recipient = ("--account", ACCOUNT, "--to", OPTED_OUT)

    table, raw = await asyncio.gather(
        sendguard("suppressions", "list", *recipient, admin=second),
        sendguard("suppressions", "list", *recipient, "--json", admin=second),
    )
    lines = ok(table).stdout.splitlines()
    assert lines[0] == "suppressions for +150******04:"
    assert lines[1].split() == ["FIELD", "SCOPE", "SENDER", "CODE", "SOURCE", "UNTIL", "ACTIVE"]
    assert len(lines) == 3 and " 21610 " in lines[2] and lines[2].endswith("yes")
    assert OPTED_OUT not in table.stdout + raw.stdout  # the API masks the number
    listed = ok(raw).json()
    [suppression] = listed["suppressions"]
    assert (suppression["code"], suppression["active"]) == (21610, True)

    missing_reason, masked, other = await asyncio.gather(
        sendguard("suppressions", "clear", *recipient, admin=first),
        # What `list` shows of a sender is masked: the CLI refuses it rather than clear nothing.
        sendguard("suppressions", "clear", *recipient, "--field", "from:+150******06", "--reason", "x", admin=first),
        sendguard("suppressions", "clear", *recipient, "--field", "to", "--reason", "x", admin=first),
    )  # fmt: skip
    assert missing_reason.code == 2 and "--reason" in missing_reason.stderr
    assert masked.code == 2 and "the sender in full" in masked.stderr
    assert other.code == 1 and "no such suppression" in other.stderr  # 404: names nothing
    cleared = ok(
        await sendguard(
            "suppressions", "clear", *recipient, "--field", f"from:{SENDER}",
            "--reason", "re-subscribed by SMS", admin=first,
        )
    )  # fmt: skip
    assert cleared.stdout.strip() == "cleared 1 suppression for +150******04"
    after = ok(await sendguard("suppressions", "list", *recipient, admin=first))
    assert after.stdout.strip() == "no suppressions for +150******04"
    nothing = ok(await sendguard("suppressions", "clear", *recipient, "--reason", "x", admin=first))
    assert nothing.stdout.strip() == "no suppressions to clear for +150******04"

    creates_before = len(fake_twilio.create_requests())
    _, headers, _ = await post_send(http, second.url, form(OPTED_OUT, "welcome back"))
    assert headers["X-Sendguard-Decision"] == "forwarded"  # reached Twilio again
    assert len(fake_twilio.create_requests()) == creates_before + 1


async def test_breakers_show_and_reset(proxies, fake_twilio, http, shared_redis_url):
    proxy = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, admin_token=ADMIN_TOKEN,
        recipient_limits="2/min",
    )  # fmt: skip
    for i in range(2):
        assert (await post_send(http, proxy.url, form(ALICE, f"m{i}")))[1][
            "X-Sendguard-Decision"
        ] == "forwarded"
    assert (await post_send(http, proxy.url, form(ALICE, "m2")))[1]["X-Sendguard-Decision"] == (
        "rate-limited"
    )
    assert (await post_send(http, proxy.url, form(ALICE, "m3")))[1]["X-Sendguard-Decision"] == (
        "breaker-open"
    )
    recipient = ("--account", ACCOUNT, "--to", ALICE)

    table, raw = await asyncio.gather(
        sendguard("breakers", "show", *recipient, admin=proxy),
        sendguard("breakers", "show", *recipient, "--json", admin=proxy),
    )
    lines = ok(table).stdout.splitlines()
    assert lines[0].split() == ["recipient", "+155******10"]
    assert lines[1].startswith("breaker") and " open until " in lines[1]
    assert lines[2].split() == ["trips", "1"]
    assert lines[-2].split() == ["LIMIT", "SENDS", "IN", "WINDOW"]
    assert lines[-1].split() == ["2/min", "2"]
    assert ALICE not in table.stdout + raw.stdout
    shown = ok(raw).json()
    assert (shown["state"], shown["trips"], shown["sends_in_windows"]) == ("open", 1, {"2/min": 2})

    reset = ok(
        await sendguard("breakers", "reset", *recipient, "--reason", "false alarm", admin=proxy)
    )
    assert reset.stdout.strip() == "breaker reset for +155******10: closed, recent sends forgotten"
    closed = ok(await sendguard("breakers", "show", *recipient, "--json", admin=proxy)).json()
    assert (closed["state"], closed["sends_in_windows"]) == ("closed", {"2/min": 0})
    _, headers, _ = await post_send(http, proxy.url, form(ALICE, "after reset"))
    assert headers["X-Sendguard-Decision"] == "forwarded"
    assert fake_twilio.creates == 3


async def test_records_show_by_message_sid_and_by_key(pair, http):
    first, second = pair
    status, _, created = await post_send(http, first.url, form(ALICE, "code 1234"), key="order-77")
    assert status == 201
    sid = created["sid"]

    table, raw, by_key = await asyncio.gather(
        sendguard("records", "show", "--message-sid", sid, admin=second),
        sendguard("records", "show", "--message-sid", sid, "--json", admin=second),
        sendguard("records", "show", "--account", ACCOUNT, "--key", "order-77", "--json", admin=second),
    )  # fmt: skip
    shown = dict(labelled(ok(table).stdout))
    assert (shown["state"], shown["message sid"], shown["upstream status"]) == ("done", sid, "201")
    assert shown["send.to"] == "+155******10"
    assert ALICE not in table.stdout + raw.stdout and "code 1234" not in table.stdout
    record = ok(raw).json()["record"]
    assert (record["message_sid"], record["state"]) == (sid, "done")
    assert ok(by_key).json() == raw.json()

    unknown = await sendguard("records", "show", "--message-sid", "SM" + "0" * 32, admin=second)
    assert unknown.code == 1 and unknown.stdout == ""
    assert unknown.stderr.startswith("sendguard: no record") and "(HTTP 404)" in unknown.stderr
    neither = await sendguard("records", "show", admin=second)
    assert neither.code == 2 and "--message-sid" in neither.stderr
    both = await sendguard("records", "show", "--message-sid", sid, "--key", "k", admin=second)
    assert both.code == 2


async def lost_answer_sends(http, proxy: ProxyInstance, fake_twilio, *recipients: str) -> list[str]:
    """Sends Twilio made but answered 500 (UNKNOWN), hidden from its list: their SIDs."""
    fake_twilio.list_lag_seconds = 600.0
    sids = []
    for to in recipients:
        fake_twilio.push_fault(Fault("500-after-create"))
        before = set(fake_twilio.messages)
        status, _, _ = await post_send(http, proxy.url, form(to, "lost answer"))
        assert status == 500
        [sid] = set(fake_twilio.messages) - before
        sids.append(sid)
    return sids


async def unknown_ledger(proxy: ProxyInstance, n: int) -> list[dict[str, Any]]:
    for _ in range(50):
        entries = ok(await sendguard("records", "unknown", "--json", admin=proxy)).json()["records"]
        if len(entries) >= n:
            return entries
        await asyncio.sleep(0.05)
    raise AssertionError(f"the ledger holds {entries}")


async def test_records_unknown_then_resolve_sent_and_not_sent(pair, fake_twilio, http):
    first, second = pair
    alice_sid, _ = await lost_answer_sends(http, first, fake_twilio, ALICE, BOB)
    alice, bob = await unknown_ledger(second, 2)
    assert (alice["to"], bob["to"]) == ("+155******10", "+155******11")

    listed = ok(await sendguard("records", "unknown", admin=second)).stdout.splitlines()
    assert listed[0].split() == ["ID", "ACCOUNT", "TO", "FROM", "ROUTE", "CLAIMED", "REASON", "LOOKUPS", "SID"]  # fmt: skip
    assert [row.split()[0] for row in listed[1:]] == [alice["id"], bob["id"]]
    assert listed[1].split()[1:5] == [ACCOUNT, "+155******10", "+150******06", "messages"]
    assert "upstream-500" in listed[1] and listed[1].rstrip().endswith("-")  # no SID known
    assert ALICE not in "\n".join(listed) and "lost answer" not in "\n".join(listed)
    shown = dict(labelled(ok(await sendguard("records", "show", "--id", alice["id"], admin=second)).stdout))  # fmt: skip
    assert (shown["id"], shown["state"], shown["reconciliations"]) == (alice["id"], "unknown", "0")

    sent = await sendguard("records", "resolve", alice["id"], "--sent", alice_sid,
                           "--reason", "in the console, INC-9", admin=second)  # fmt: skip
    assert ok(sent).stdout.splitlines()[0] == f"resolved as sent: {alice['id']} is {alice_sid}"
    not_sent = await sendguard("records", "resolve", bob["id"], "--not-sent",
                               "--reason", "not in the console", "--json", admin=first)  # fmt: skip
    body = ok(not_sent).json()
    assert (body["outcome"], body["record"]["id"]) == ("not-sent", bob["id"])
    # Bob's is gone; Alice's stays listed, with its SID, until a retry fetches and replays it.
    listed = ok(await sendguard("records", "unknown", admin=first)).stdout.splitlines()
    assert [row.split()[0] for row in listed[1:-1]] == [alice["id"]]
    assert listed[1].rstrip().endswith(alice_sid) and "next retry" in listed[-1]

    # What the app's retries get now: Alice's replays the message Twilio made, Bob's sends.
    status, headers, replayed = await post_send(http, second.url, form(ALICE, "lost answer"))
    assert (status, headers["X-Sendguard-Decision"], replayed["sid"]) == (
        201,
        "replayed",
        alice_sid,
    )
    assert (
        ok(await sendguard("records", "unknown", admin=first)).stdout.strip() == "no UNKNOWN sends"
    )
    status, headers, _ = await post_send(http, first.url, form(BOB, "lost answer"))
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 3

    again = await sendguard("records", "resolve", bob["id"], "--not-sent", "--reason", "x", admin=first)  # fmt: skip
    assert again.code == 1 and again.stdout == ""
    assert "no UNKNOWN record" in again.stderr and "(HTTP 404)" in again.stderr
    metrics = first.app[METRICS], second.app[METRICS]
    assert [
        m.value("sendguard_reconciliations_total", outcome="resolved-sent") for m in metrics
    ] == [0, 1]
    assert [
        m.value("sendguard_reconciliations_total", outcome="resolved-not-sent") for m in metrics
    ] == [1, 0]


async def test_records_resolve_usage_errors_and_auth(pair, fake_twilio, http):
    first, _ = pair
    [sid] = await lost_answer_sends(http, first, fake_twilio, ALICE)
    [entry] = await unknown_ledger(first, 1)
    record_id = entry["id"]
    neither, both, bad_sid, no_reason, bad_id, wrong_token, no_token, listed_no_token = await asyncio.gather(
        sendguard("records", "resolve", record_id, "--reason", "x", admin=first),
        sendguard("records", "resolve", record_id, "--sent", sid, "--not-sent", "--reason", "x", admin=first),
        sendguard("records", "resolve", record_id, "--sent", "SM123", "--reason", "x", admin=first),
        sendguard("records", "resolve", record_id, "--not-sent", admin=first),
        sendguard("records", "resolve", "r123.k456", "--not-sent", "--reason", "x", admin=first),
        sendguard("records", "resolve", record_id, "--not-sent", "--reason", "x", admin=first, token="wrong-token"),
        sendguard("records", "resolve", record_id, "--sent", sid, "--reason", "x", admin=first, token=None),
        sendguard("records", "unknown", admin=first, token=None),
    )  # fmt: skip
    assert neither.code == 2 and "--sent SM… or --not-sent" in neither.stderr
    assert both.code == 2
    assert bad_sid.code == 2 and "--sent" in bad_sid.stderr
    assert no_reason.code == 2 and "--reason" in no_reason.stderr
    assert bad_id.code == 1 and "not a record id" in bad_id.stderr and "(HTTP 400)" in bad_id.stderr
    for refused in (wrong_token, no_token, listed_no_token):
        assert refused.code == 4 and refused.stdout == "" and "401" in refused.stderr
    # Nothing changed: still UNKNOWN, still one create.
    assert [e["id"] for e in await unknown_ledger(first, 1)] == [record_id]
    assert fake_twilio.creates == 1


async def test_status(pair, http):
    first, _ = pair
    await post_send(http, first.url, form(ALICE, "one"))
    await post_send(http, first.url, form(ALICE, "one"))  # replayed
    ok(await sendguard("kill-switch", "engage", "--scope", "prefix:+44", "--reason", "UK fraud", admin=first))  # fmt: skip

    table, raw = await asyncio.gather(
        sendguard("status", admin=first), sendguard("status", "--json", admin=first)
    )
    lines = ok(table).stdout.splitlines()
    fields = dict(labelled("\n".join(lines[:7])))
    assert fields == {
        "admin url": first.admin_url,
        "ready": "yes",
        "shutting down": "no",
        "store": "standalone Redis, up",
        "store mode": "normal: sends guarded by the standalone store",
        "kill switches": "1 engaged (store sync ok, push live)",
        "status-callback tee": "off",
    }
    assert any(line.startswith("prefix:+44 ") and "UK fraud" in line for line in lines)
    [header] = [i for i, line in enumerate(lines) if line.split() == ["DECISION", "REQUESTS"]]
    counts = dict(line.split() for line in lines[header + 1 :])
    assert (counts["forwarded"], counts["replayed"]) == ("1", "1")
    body = ok(raw).json()
    assert body["readyz"] == {
        "ready": True, "store_kind": "standalone", "store_mode": "shared", "store_up": True,
        "degraded": False, "shutting_down": False,
    }  # fmt: skip
    assert (body["status"]["store_kind"], body["status"]["store_mode"]) == ("standalone", "shared")
    assert [s["scope"] for s in body["status"]["kill_switches"]] == ["prefix:+44"]


# -- exit codes, the admin URL and the token ---------------------------------------------------


async def test_exit_3_when_the_admin_url_cannot_be_reached():
    url = f"http://127.0.0.1:{free_port()}"
    ran = await sendguard("kill-switch", "list", "--admin-url", url)
    assert ran.code == 3 and ran.stdout == ""
    assert url in ran.stderr and "connection refused" in ran.stderr
    assert "--admin-url" in ran.stderr


async def test_exit_4_on_a_wrong_or_missing_token(pair):
    first, _ = pair
    wrong = "wrong-" + secrets.token_hex(8)
    refused, missing, engage = await asyncio.gather(
        sendguard("kill-switch", "list", admin=first, token=wrong),
        sendguard("status", admin=first, token=None),
        sendguard("kill-switch", "engage", "--scope", "global", "--reason", "x", admin=first, token=wrong),
    )  # fmt: skip
    assert refused.code == 4 and refused.stdout == ""
    assert "401" in refused.stderr and "SENDGUARD_ADMIN_TOKEN" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr + engage.stdout + engage.stderr
    assert missing.code == 4 and "set SENDGUARD_ADMIN_TOKEN" in missing.stderr
    assert engage.code == 4
    listed = ok(await sendguard("kill-switch", "list", "--json", admin=first)).json()
    assert listed["kill_switches"] == []


async def test_token_file(pair, tmp_path):
    first, _ = pair
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")  # as a mounted Secret often ends
    by_flag, by_env, missing = await asyncio.gather(
        sendguard("kill-switch", "list", "--token-file", str(token_file), admin=first, token="wrong"),
        sendguard("status", admin=first, token=None, env={"SENDGUARD_ADMIN_TOKEN_FILE": str(token_file)}),
        sendguard("status", "--token-file", str(tmp_path / "nope"), admin=first),
    )  # fmt: skip
    assert ok(by_flag).stdout.strip() == "no kill switch engaged"
    ok(by_env)
    assert missing.code == 2 and "--token-file" in missing.stderr


async def test_exit_1_when_the_api_answers_an_error(pair):
    first, _ = pair
    bad_scope, bad_ttl, bad_account = await asyncio.gather(
        sendguard("kill-switch", "engage", "--scope", "galaxy", "--reason", "x", admin=first),
        sendguard("kill-switch", "engage", "--scope", "global", "--reason", "x", "--ttl", "soon", "--json", admin=first),
        sendguard("breakers", "show", "--account", "AC1", "--to", ALICE, admin=first),
    )  # fmt: skip
    assert bad_scope.code == 1 and bad_scope.stdout == ""
    assert bad_scope.stderr.startswith("sendguard: unknown scope kind 'galaxy'")
    assert bad_scope.stderr.rstrip().endswith("(HTTP 400)")
    assert bad_ttl.code == 1
    assert bad_ttl.json() == {
        "error": {"status": 400, "message": "'ttl' must be a duration like 30m, 2h or 600"}
    }
    assert bad_account.code == 1 and "account SID" in bad_account.stderr
    listed = ok(await sendguard("kill-switch", "list", "--json", admin=first)).json()
    assert listed["kill_switches"] == []


async def test_the_token_is_never_sent_to_the_proxy_port_or_another_server(pair, fake_twilio):
    """The proxy port forwards every path upstream: `--admin-url :8080` by mistake must not
    hand the admin token to Twilio. The CLI checks /healthz (no token) before any /v1/ call."""
    first, _ = pair
    proxy_port, not_sendguard = await asyncio.gather(
        sendguard("kill-switch", "engage", "--scope", "global", "--reason", "x", "--admin-url", first.url),
        sendguard("kill-switch", "list", "--admin-url", fake_twilio.url),
    )  # fmt: skip
    assert proxy_port.code == 1 and proxy_port.stdout == ""
    assert "proxy port, not its admin port (the token was not sent)" in proxy_port.stderr
    assert not_sendguard.code == 1
    assert "does not look like a sendguard admin API" in not_sendguard.stderr
    assert ADMIN_TOKEN not in repr(fake_twilio.received)
    assert [r.path for r in fake_twilio.received] == ["/healthz", "/healthz"]


async def test_exit_2_on_usage_errors(pair):
    first, _ = pair
    no_reason, bad_url, credentials = await asyncio.gather(
        sendguard("kill-switch", "engage", "--scope", "global", admin=first),
        sendguard("kill-switch", "list", "--admin-url", "ftp://example.com"),
        sendguard("kill-switch", "list", "--admin-url", f"http://u:{ADMIN_TOKEN}@127.0.0.1:1"),
    )
    assert no_reason.code == 2 and "--reason" in no_reason.stderr
    assert bad_url.code == 2 and "--admin-url" in bad_url.stderr
    assert credentials.code == 2 and "SENDGUARD_ADMIN_TOKEN" in credentials.stderr


async def test_the_default_admin_url_follows_sendguard_admin_listen(pair):
    first, _ = pair
    port = first.admin_url.rsplit(":", 1)[1]
    ran = await sendguard("status", env={"SENDGUARD_ADMIN_LISTEN": f"0.0.0.0:{port}"})
    assert f"http://127.0.0.1:{port}" in ok(ran).stdout.splitlines()[0]
    # SENDGUARD_ADMIN_URL (and --admin-url) win over the listen address.
    closed = f"http://127.0.0.1:{free_port()}"
    ran = await sendguard(
        "status", env={"SENDGUARD_ADMIN_LISTEN": f"0.0.0.0:{port}", "SENDGUARD_ADMIN_URL": closed}
    )
    assert ran.code == 3 and closed in ran.stderr
    ran = await sendguard("status", "--admin-url", first.admin_url, env={"SENDGUARD_ADMIN_URL": closed})  # fmt: skip
    ok(ran)


def test_exit_3_when_the_admin_api_does_not_answer_in_time() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = AdminClient(url, ADMIN_TOKEN, timeout=0.3)
        with pytest.raises(Unreachable) as raised:
            client.call("GET", "/v1/kill-switches")
    assert raised.value.exit_code == 3
    assert raised.value.message == (
        f"cannot reach the admin API at {url} (no answer within 0.3 s); check --admin-url "
        "(or SENDGUARD_ADMIN_URL) and that sendguard is running"
    )


def test_default_admin_url() -> None:
    assert default_admin_url({}) == "http://127.0.0.1:8081"
    assert default_admin_url({"SENDGUARD_ADMIN_LISTEN": "0.0.0.0:9091"}) == "http://127.0.0.1:9091"
    assert default_admin_url({"SENDGUARD_ADMIN_LISTEN": "[::]:9091"}) == "http://[::1]:9091"
    assert default_admin_url({"SENDGUARD_ADMIN_LISTEN": "[::1]:80"}) == "http://[::1]:80"
    assert default_admin_url({"SENDGUARD_ADMIN_LISTEN": "admin.local:81"}) == (
        "http://admin.local:81"
    )
    with pytest.raises(click.UsageError, match="SENDGUARD_ADMIN_LISTEN"):
        default_admin_url({"SENDGUARD_ADMIN_LISTEN": "nowhere"})
