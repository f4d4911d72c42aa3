"""The incident, replayed: a scheduler re-sends 7 pending notifications every minute for four
hours (`seeds/postmortem-570-sms.txt`: ~570 SMS per person). Through sendguard, with default
settings, each of the 7 people gets exactly one message.

Time is compressed: the 240 "minutes" run back to back. A second test adds the crash the
postmortem names: the first send reaches Twilio (created), and the sidecar that sent it is
killed with SIGKILL before it can answer or record the outcome; the scheduler goes on through
the surviving sidecar and a restarted one. A third scales the dedup window down so that the
retry loop outlives it many times over, proving the window slides; a fourth makes every resend
different (a bug that defeats dedup) and shows the per-recipient limit stopping it.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from types import SimpleNamespace

import aiohttp
import pytest

from proxy.sandbox import Fault
from tests.harness import SENDER, post_send
from tests.processes import start_serve

PEOPLE = [f"+1555010{n:04d}" for n in range(7)]
ROUNDS = 240  # every minute for four hours
OBAN_RETRIES = 3  # each scheduler run retried the job up to 3 times


def notification(to: str) -> dict[str, str]:
    return {"To": to, "From": SENDER, "Body": "Your invoice #4411 is ready"}


def messages_per_person(fake) -> Counter[str]:
    return Counter(request.form_value("To") for request in fake.create_requests())


async def scheduler(http, sidecars, rounds: int, body_for, pause: float = 0.0) -> Counter[str]:
    """Every round, every pending row is sent again (the row never leaves `pending`)."""
    answers: Counter[str] = Counter()
    for minute in range(rounds):
        sends = [
            post_send(http, sidecars[(minute + attempt) % len(sidecars)].url, body_for(to, minute))
            for to in PEOPLE
            for attempt in range(OBAN_RETRIES)
        ]
        for status, headers, _ in await asyncio.gather(*sends):
            answers[f"{status} {headers['X-Sendguard-Decision']}"] += 1
        if pause:
            await asyncio.sleep(pause)
    return answers


async def test_the_570_sms_incident_sends_each_person_one_message(
    proxies, fake_twilio, http, shared_redis_url
):
    sidecars = [
        await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url) for _ in range(2)
    ]
    answers = await scheduler(http, sidecars, ROUNDS, lambda to, _: notification(to))
    assert messages_per_person(fake_twilio) == Counter(dict.fromkeys(PEOPLE, 1))
    assert fake_twilio.creates == 7
    assert answers["201 forwarded"] == 7
    # Every other answer sends nothing: the replay, or (while the first send is in flight, or
    # when a slow machine makes the store miss its timeout) a refusal to retry later.
    assert sum(answers.values()) == 7 * ROUNDS * OBAN_RETRIES
    assert set(answers) <= {"201 forwarded", "201 replayed", "409 in-flight",
                            "503 store-unavailable"}, answers  # fmt: skip
    assert answers["201 replayed"] >= 0.9 * sum(answers.values()), answers


async def test_the_incident_with_a_sidecar_killed_after_twilio_created_the_message(
    proxies, fake_twilio, http, shared_redis_url
):
    """kill -9 between Twilio's create and sendguard's record of it: the claim outlives its
    owner, so every later retry (on any sidecar) is answered in-flight, then outcome-unknown,
    or replayed once reconciliation finds the message; never sent again."""
    flags = ("--upstream", fake_twilio.url, "--redis-url", shared_redis_url,
             "--upstream-connect-timeout", "0.5", "--upstream-read-timeout", "1")  # fmt: skip
    doomed = await start_serve(*flags)
    fake_twilio.push_fault(Fault("hang", seconds=60))  # created, never answered
    first = asyncio.create_task(post_send(http, doomed.url, notification(PEOPLE[0])))
    await fake_twilio.wait_for_creates(1, timeout=10)
    doomed.process.send_signal(signal.SIGKILL)
    await doomed.process.wait()
    with pytest.raises(aiohttp.ClientError):  # the app saw its connection die: it will retry
        await first
    restarted = await start_serve(*flags)  # the pod comes back, on the same store
    survivor = await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url)
    try:
        sidecars = [survivor, SimpleNamespace(url=restarted.url)]
        answers = await scheduler(http, sidecars, ROUNDS, lambda to, _: notification(to))
    finally:
        restarted.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(restarted.process.wait(), 20)
    assert messages_per_person(fake_twilio) == Counter(dict.fromkeys(PEOPLE, 1))
    assert fake_twilio.creates == 7
    assert answers["201 forwarded"] == 6  # the other six people; the first was sent before
    # The crashed send is never forwarded again: held, then UNKNOWN or reconciled and replayed.
    held = answers["409 in-flight"] + answers["409 outcome-unknown"] + answers["201 replayed"]
    assert held == 7 * ROUNDS * OBAN_RETRIES - 6


async def test_the_dedup_window_slides_for_as_long_as_the_loop_runs(
    proxies, fake_twilio, http, shared_redis_url
):
    sidecar = await proxies.start(
        upstream=fake_twilio.url, redis_url=shared_redis_url, dedup_window=1.5
    )
    # 30 rounds, 0.25 s apart: the loop runs ~5x longer than the window itself (a window long
    # enough that a round slowed down by a busy CI machine still lands inside it).
    await scheduler(http, [sidecar], 30, lambda to, _: notification(to), pause=0.25)
    assert messages_per_person(fake_twilio) == Counter(dict.fromkeys(PEOPLE, 1))


async def test_a_loop_that_defeats_dedup_is_stopped_by_the_recipient_limit(
    proxies, fake_twilio, http, shared_redis_url
):
    sidecars = [
        await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url) for _ in range(2)
    ]

    def changing(to: str, minute: int) -> dict[str, str]:
        return {**notification(to), "Body": f"Your invoice #4411 is ready (attempt {minute})"}

    answers = await scheduler(http, sidecars, 60, changing)
    per_person = messages_per_person(fake_twilio)
    assert set(per_person) == set(PEOPLE)
    assert max(per_person.values()) <= 5  # the default 5/min; the breaker holds the rest
    assert answers["429 rate-limited"] + answers["429 breaker-open"] > 0
