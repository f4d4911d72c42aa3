"""Only what Twilio accepted (or may have) counts against a recipient's limits and the account
ceiling (SPEC §3.2): five sends refused 401 must not open a victim's breaker."""

from __future__ import annotations

from tests.harness import OTHER_ACCOUNT, OTHER_TOKEN, SENDER, basic_auth, post_send

VICTIM = "+15558670001"
WRONG = basic_auth(OTHER_ACCOUNT, OTHER_TOKEN)  # another account's credential: Twilio says 401


async def test_refused_sends_do_not_use_up_a_recipients_budget(proxies, fake_twilio, http):
    proxy = await proxies.start(upstream=fake_twilio.url, recipient_limits="5/min")
    for attempt in range(6):
        form = {"To": VICTIM, "From": SENDER, "Body": f"bad credentials {attempt}"}
        status, headers, _ = await post_send(http, proxy.url, form, auth=WRONG)
        assert (status, headers["X-Sendguard-Decision"]) == (401, "forwarded")
    status, headers, body = await post_send(
        http, proxy.url, {"To": VICTIM, "From": SENDER, "Body": "your code is 123456"}
    )
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert body["sid"].startswith("SM")
    # A refused send's record stays for replay: the same bad request is answered, not resent.
    form = {"To": VICTIM, "From": SENDER, "Body": "bad credentials 0"}
    status, headers, _ = await post_send(http, proxy.url, form, auth=WRONG)
    assert (status, headers["X-Sendguard-Decision"]) == (401, "replayed")


async def test_accepted_sends_still_count(proxies, fake_twilio, http):
    proxy = await proxies.start(upstream=fake_twilio.url, recipient_limits="2/min")
    for attempt in range(2):
        form = {"To": VICTIM, "From": SENDER, "Body": f"accepted {attempt}"}
        status, _, _ = await post_send(http, proxy.url, form)
        assert status == 201
    status, headers, _ = await post_send(
        http, proxy.url, {"To": VICTIM, "From": SENDER, "Body": "one too many"}
    )
    assert (status, headers["X-Sendguard-Decision"]) == (429, "rate-limited")


async def test_refused_sends_do_not_count_against_the_account_ceiling(proxies, fake_twilio, http):
    proxy = await proxies.start(
        upstream=fake_twilio.url, recipient_limits="off", account_limits="2/min"
    )
    for attempt in range(4):
        form = {"To": f"+1555867{attempt:04d}", "From": SENDER, "Body": "bad credentials"}
        status, headers, _ = await post_send(http, proxy.url, form, auth=WRONG)
        assert (status, headers["X-Sendguard-Decision"]) == (401, "forwarded")
    for attempt in range(2):
        form = {"To": f"+1555868{attempt:04d}", "From": SENDER, "Body": "accepted"}
        status, headers, _ = await post_send(http, proxy.url, form)
        assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded"), attempt
    form = {"To": "+15558689999", "From": SENDER, "Body": "accepted"}
    status, headers, _ = await post_send(http, proxy.url, form)
    assert (status, headers["X-Sendguard-Decision"]) == (429, "rate-limited")
