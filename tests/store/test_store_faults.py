"""No store fault may ever cost a duplicate send (SPEC §3.4, §3.1; issue 9).

Two sendguard instances share one real valkey-server, reached through a TCP fault proxy
(tests/faultproxy.py) that loses, delays or refuses what the store says. The ground truth is
the fake Twilio's own count of created messages, per logical send (each has its own Body).

For every logical send the `Ledger` checks: at most one create, at most one `forwarded`
decision over all its attempts, and every other answer one of

    201 replayed | 409 in-flight | 409 outcome-unknown | 503 store-unavailable

(never a sendguard 500). A retry is made on the same instance and on the other one.
Scripts are loaded into the server first, so the first answer to an EVALSHA is the script's
own (never NOSCRIPT): a lost answer is always that of a script that ran.

redis-py's standalone client as sendguard configures it retries a ConnectionError once (not a
TimeoutError), re-running the command: a fault meant to defeat the request's store call hits
twice (`times=2`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from proxy.sandbox import Fault
from proxy.server.app import METRICS
from proxy.settings import Settings
from proxy.store import scripts
from tests.faultproxy import FaultProxy, contains, evalsha, script_sha
from tests.harness import MESSAGES, SENDER, ProxyInstance, basic_auth, post_send
from tests.servers import ServerProcess

RETRY_ANSWERS = {
    (201, "replayed"),
    (409, "in-flight"),
    (409, "outcome-unknown"),
    (503, "store-unavailable"),
}
STORE_MODES = ("shared", "local", "closed", "open")
_SETTINGS = set(Settings.model_fields)


def supported(**settings: Any) -> dict[str, Any]:
    """Settings this build knows (the store-outage work adds some): others are left out."""
    return {name: value for name, value in settings.items() if name in _SETTINGS}


async def load_scripts(port: int) -> None:
    """SCRIPT LOAD every store script, so no EVALSHA is first answered NOSCRIPT."""
    async with Redis(port=port) as client:
        for name in dir(scripts):
            value = getattr(scripts, name)
            if name.isupper() and isinstance(value, str) and "redis.call" in value:
                assert await client.script_load(value) == script_sha(name)


# -- the ledger: every attempt of every logical send ------------------------------------------


@dataclass
class Attempt:
    send: str
    instance: str
    status: int  # 0: the client saw a connection error
    decision: str
    sid: str | None = None
    code: int | None = None


@dataclass
class Ledger:
    names: dict[str, str] = field(default_factory=dict)  # instance url -> "first"/"second"
    attempts: list[Attempt] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def name(self, instance: ProxyInstance, label: str) -> None:
        self.names[instance.url] = label

    def form(self, send: str, to: str = "+15558675310") -> dict[str, str]:
        return {"To": to, "From": SENDER, "Body": f"logical send {send}"}

    async def send(
        self,
        http: aiohttp.ClientSession,
        instance: ProxyInstance,
        send: str,
        *,
        key: str | None = None,
        to: str = "+15558675310",
    ) -> Attempt:
        try:
            status, headers, body = await post_send(
                http, instance.url, self.form(send, to), key=key
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            attempt = Attempt(send, self._label(instance), 0, f"client-error:{type(exc).__name__}")
        else:
            payload = body if isinstance(body, dict) else {}
            attempt = Attempt(
                send,
                self._label(instance),
                status,
                headers.get("X-Sendguard-Decision", "?"),
                payload.get("sid"),
                payload.get("code"),
            )
        self.attempts.append(attempt)
        return attempt

    def _label(self, instance: ProxyInstance) -> str:
        return self.names.get(instance.url, instance.url)

    def of(self, send: str) -> list[Attempt]:
        return [a for a in self.attempts if a.send == send]

    def creates(self, fake: Any) -> Counter[str]:
        return Counter(
            m["body"].removeprefix("logical send ")
            for m in fake.messages.values()
            if m["body"].startswith("logical send ")
        )

    def problems(self, fake: Any) -> list[str]:
        creates = self.creates(fake)
        found = []
        for send in dict.fromkeys([a.send for a in self.attempts] + list(creates)):
            attempts = self.of(send)
            forwarded = [a for a in attempts if a.decision == "forwarded"]
            odd = [
                a
                for a in attempts
                if a.decision != "forwarded" and (a.status, a.decision) not in RETRY_ANSWERS
            ]
            if creates[send] > 1 or len(forwarded) > 1 or odd:
                trail = ", ".join(f"{a.instance}:{a.status} {a.decision}" for a in attempts)
                found.append(f"send {send}: {creates[send]} creates; attempts: {trail}")
        return found

    def check(self, fake: Any) -> None:
        problems = self.problems(fake)
        assert not problems, "duplicate or unexpected answers:\n  " + "\n  ".join(problems)

    def trail(self, send: str) -> str:
        return ", ".join(f"{a.instance}:{a.status} {a.decision}" for a in self.of(send))


class ModeWatch:
    """Samples each instance's `sendguard_store_mode` every few ms: any mode but `shared`
    that was ever in force is remembered (a flip and back is still a flip)."""

    def __init__(self, instances: Iterable[tuple[str, ProxyInstance]]) -> None:
        self.instances = list(instances)
        self.seen: dict[str, set[str]] = {label: set() for label, _ in self.instances}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for label, instance in self.instances:
            metrics = instance.app[METRICS]
            for mode in STORE_MODES:
                if metrics.value("sendguard_store_mode", mode=mode) == 1:
                    self.seen[label].add(mode)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.005)

    def __enter__(self) -> ModeWatch:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sample()

    def left_shared(self) -> dict[str, set[str]]:
        return {
            label: modes - {"shared"} for label, modes in self.seen.items() if modes - {"shared"}
        }


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
async def valkey():
    with ServerProcess() as server:
        await load_scripts(server.port)
        yield server


@pytest.fixture
async def link(valkey):
    """The fault proxy between sendguard and its store."""
    async with FaultProxy("127.0.0.1", valkey.port) as proxy:
        yield proxy


@dataclass
class Rig:
    first: ProxyInstance
    second: ProxyInstance
    link: FaultProxy
    fake: Any
    http: aiohttp.ClientSession
    ledger: Ledger
    valkey: ServerProcess

    def instance(self, which: str) -> ProxyInstance:
        return self.first if which == "same" else self.second


def instance_settings(fake: Any, link: FaultProxy, **overrides: Any) -> dict[str, Any]:
    return {
        "upstream": fake.url,
        "redis_url": link.url,
        "recipient_limits": "off",
        "admin_token": "t",
        "inflight_wait": 0.5,
        "upstream_read_timeout": 2.0,
        # longer than any single fault here: none of them is an outage
        **supported(store_outage_after=10.0),
        **overrides,
    }


async def make_rig(link, proxies, fake_twilio, http, valkey, **overrides: Any) -> Rig:
    settings = instance_settings(fake_twilio, link, **overrides)
    first = await proxies.start(**settings)
    second = await proxies.start(**settings)
    ledger = Ledger()
    ledger.name(first, "first")
    ledger.name(second, "second")
    return Rig(first, second, link, fake_twilio, http, ledger, valkey)


@pytest.fixture
async def rig_factory(link, proxies, fake_twilio, http, valkey):
    """Builds the two instances with per-test settings; the link is healed before teardown."""

    async def build(**overrides: Any) -> Rig:
        return await make_rig(link, proxies, fake_twilio, http, valkey, **overrides)

    yield build
    link.pass_through()


async def retry_answers(rig: Rig, send: str, on: str, *, key: str | None, times: int = 2) -> None:
    """The client's retries: 0.3 s apart, on `on` ("same" or "other")."""
    for _ in range(times):
        await asyncio.sleep(0.3)
        await rig.ledger.send(rig.http, rig.instance(on), send, key=key)


async def send_until_forwarded(
    rig: Rig, send: str, *, key: str | None, seconds: float = 6.0, on: str = "same"
) -> bool:
    """A patient client: retry until the send went out (or was replayed); True if it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        attempt = await rig.ledger.send(rig.http, rig.instance(on), send, key=key)
        if attempt.status == 201:
            return True
        await asyncio.sleep(0.25)
    return False


def assert_one_create(rig: Rig, send: str) -> None:
    created = rig.ledger.creates(rig.fake)[send]
    assert created == 1, f"send {send}: {created} creates; attempts: {rig.ledger.trail(send)}"


# -- a. the answer of the complete (or mark-unknown) script is lost --------------------------

RETRY_ON = pytest.mark.parametrize("retry_on", ["same", "other"])
POLICY = pytest.mark.parametrize("policy", ["closed", "local"])


async def lose_the_reply_then_retry(
    rig: Rig, script: str, send: str, first_status: int, retry_on: str
) -> None:
    """`script` runs on the server but its answer is lost (on both of redis-py's tries): the
    client still gets Twilio's `first_status`, and the retry is never forwarded again."""
    rig.link.drop_after_reply(evalsha(script_sha(script)), times=2)
    first = await rig.ledger.send(rig.http, rig.first, send, key=f"key-{send}")
    assert (first.status, first.decision) == (first_status, "forwarded")
    await rig.link.wait_until(lambda p: p.replies_dropped >= 1, what="a lost answer")
    await retry_answers(rig, send, retry_on, key=f"key-{send}")
    rig.ledger.check(rig.fake)
    assert_one_create(rig, send)


@RETRY_ON
@POLICY
async def test_lost_reply_of_the_complete_script(rig_factory, retry_on, policy):
    """COMPLETE ran on the server, its answer never came back (both of redis-py's tries): the
    client still gets Twilio's answer, and a retry 0.3 s later is never forwarded again."""
    rig = await rig_factory(on_store_error=policy)
    await lose_the_reply_then_retry(rig, "COMPLETE", "a", 201, retry_on)


@RETRY_ON
@POLICY
async def test_lost_reply_of_the_mark_unknown_script_after_an_upstream_500(
    rig_factory, retry_on, policy
):
    """Twilio answered 500 (it may have created the message): MARK_UNKNOWN ran, its answer was
    lost. The retry must not be forwarded: it is UNKNOWN, or in flight, or refused."""
    rig = await rig_factory(on_store_error=policy)
    rig.fake.push_fault(Fault("500-after-create"))
    await lose_the_reply_then_retry(rig, "MARK_UNKNOWN", "a5", 500, retry_on)


@RETRY_ON
@pytest.mark.parametrize("lost", ["reply", "request"])
async def test_a_lost_release(rig_factory, retry_on, lost):
    """Twilio answered 429 (never processed), and RELEASE's answer was lost on both of
    redis-py's tries (it ran), or RELEASE never reached the store (it did not run). The client
    gets the 429; the claim must not block the message, and the retry sends it exactly once."""
    rig = await rig_factory(upstream_429_budget=0, on_store_error="closed")
    rig.fake.push_fault(Fault("429"))
    if lost == "reply":
        rig.link.drop_after_reply(evalsha(script_sha("RELEASE")), times=2)
    else:
        rig.link.cut_request(script_sha("RELEASE"), times=2)
    first = await rig.ledger.send(rig.http, rig.first, "r", key="key-r")
    assert (first.status, first.decision) == (429, "forwarded")
    assert await send_until_forwarded(rig, "r", key="key-r", on=retry_on)
    # (Two `forwarded` answers are right here: the first one reached Twilio and was refused.)
    assert_one_create(rig, "r")
    assert rig.ledger.trail("r").endswith("201 forwarded")


@RETRY_ON
async def test_an_outcome_whose_write_failed_is_written_once_the_store_answers(
    rig_factory, retry_on
):
    """SPEC §3.4: a store error after sending never loses the outcome. Here the COMPLETE never
    reaches the server (both tries cut): the instance keeps the outcome, answers duplicates
    from memory, and retries the (compare-and-set) write until the store takes it. So the
    send is soon replayed everywhere with its original SID, instead of waiting for the lease
    to end and turning UNKNOWN."""
    rig = await rig_factory(on_store_error="closed")
    rig.link.cut_request(script_sha("COMPLETE"), times=2)
    first = await rig.ledger.send(rig.http, rig.first, "w", key="key-w")
    assert (first.status, first.decision) == (201, "forwarded")
    await rig.link.wait_until(lambda p: p.requests_cut >= 1, what="a cut request")
    await retry_answers(rig, "w", retry_on, key="key-w", times=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        again = await rig.ledger.send(rig.http, rig.instance(retry_on), "w", key="key-w")
        if (again.status, again.decision) == (201, "replayed"):
            break
        assert loop.time() < deadline, f"never replayed: {rig.ledger.trail('w')}"
        await asyncio.sleep(0.25)
    assert again.sid == first.sid
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "w")


# -- b. replies stalled longer than the store timeout -----------------------------------------


@RETRY_ON
@pytest.mark.parametrize("during", ["claim", "complete"])
async def test_replies_stalled_past_the_store_timeout(rig_factory, retry_on, during):
    """Every store reply held 3 s (the store timeout is 2 s, the outage threshold longer): one
    slow store is no outage, so the mode stays `shared` (default policy), and nothing is sent
    twice. `claim`: the stall begins before the send; `complete`: once Twilio has created the
    message (the complete script runs, its answer is late)."""
    rig = await rig_factory()
    with ModeWatch([("first", rig.first), ("second", rig.second)]) as modes:
        if during == "claim":
            rig.link.stall(3.0)
            await rig.ledger.send(rig.http, rig.first, "b", key="key-b")
        else:
            rig.fake.push_fault(Fault("delay", seconds=0.3))
            pending = asyncio.ensure_future(rig.ledger.send(rig.http, rig.first, "b", key="key-b"))
            await rig.fake.wait_for_creates(1)
            rig.link.stall(3.0)
            first = await pending
            assert (first.status, first.decision) == (201, "forwarded")
        await retry_answers(rig, "b", retry_on, key="key-b")
        rig.link.unstall()
        await send_until_forwarded(rig, "b", key="key-b", seconds=3, on=retry_on)
    rig.ledger.check(rig.fake)
    assert modes.left_shared() == {}, f"one slow reply changed the store mode: {modes.seen}"


async def test_replies_slower_than_usual_but_within_the_timeout_are_not_a_fault(rig_factory):
    rig = await rig_factory()
    rig.link.set_latency(0.4)
    with ModeWatch([("first", rig.first)]) as modes:
        first = await rig.ledger.send(rig.http, rig.first, "slow", key="key-slow")
        again = await rig.ledger.send(rig.http, rig.second, "slow", key="key-slow")
    assert (first.status, first.decision) == (201, "forwarded")
    assert (again.status, again.decision) == (201, "replayed")
    assert modes.left_shared() == {}
    rig.ledger.check(rig.fake)


# -- c. new connections refused for 2 s around the claim or the complete -----------------------


@RETRY_ON
@pytest.mark.parametrize("during", ["claim", "complete"])
async def test_reconnects_refused_for_two_seconds(rig_factory, retry_on, during):
    """Every pooled connection reset, and new ones refused for 2 s (a store restart, a network
    blip): shorter than the outage threshold. `claim`: before the send; `complete`: once Twilio
    has created the message. Retries 0.3 s apart during and after the blip, then until sent."""
    rig = await rig_factory()
    with ModeWatch([("first", rig.first), ("second", rig.second)]) as modes:
        if during == "claim":
            rig.link.reset_all()
            rig.link.refuse(2.0, how="unlisten")
            await rig.ledger.send(rig.http, rig.first, "c", key="key-c")
        else:
            rig.fake.push_fault(Fault("delay", seconds=0.3))
            pending = asyncio.ensure_future(rig.ledger.send(rig.http, rig.first, "c", key="key-c"))
            await rig.fake.wait_for_creates(1)
            rig.link.reset_all()
            rig.link.refuse(2.0, how="unlisten")
            first = await pending
            assert (first.status, first.decision) == (201, "forwarded")
        await retry_answers(rig, "c", retry_on, key="key-c", times=3)
        await send_until_forwarded(rig, "c", key="key-c", seconds=4, on=retry_on)
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "c")
    assert modes.left_shared() == {}, f"a 2 s blip changed the store mode: {modes.seen}"


# -- d. the claim ran, its answer was lost ----------------------------------------------------


@RETRY_ON
@POLICY
async def test_lost_reply_of_the_claim_script(rig_factory, retry_on, policy):
    """CLAIM ran on the server (the record is in flight under a token nobody holds), both
    answers lost: nothing was sent, so nothing may be sent twice, and SPEC §3.1 "a store
    error before anything was sent never leaves a record that blocks the message": a patient
    client gets its message out, once."""
    rig = await rig_factory(on_store_error=policy)
    rig.link.drop_after_reply(evalsha(script_sha("CLAIM")), times=2)
    await rig.ledger.send(rig.http, rig.first, "d", key="key-d")
    await rig.link.wait_until(lambda p: p.replies_dropped >= 1, what="a lost answer")
    await retry_answers(rig, "d", retry_on, key="key-d")
    sent = await send_until_forwarded(rig, "d", key="key-d", on=retry_on)
    rig.ledger.check(rig.fake)
    assert sent, f"the lost claim blocks the message: {rig.ledger.trail('d')}"
    assert_one_create(rig, "d")


async def test_lost_reply_of_a_keyless_claim(rig_factory):
    """The same for a fingerprint-deduped send (a plain EVALSHA, no key index)."""
    rig = await rig_factory(on_store_error="closed")
    rig.link.drop_after_reply(evalsha(script_sha("CLAIM")), times=2)
    await rig.ledger.send(rig.http, rig.first, "d2", key=None)
    await retry_answers(rig, "d2", "other", key=None)
    sent = await send_until_forwarded(rig, "d2", key=None)
    rig.ledger.check(rig.fake)
    assert sent, f"the lost claim blocks the message: {rig.ledger.trail('d2')}"
    assert_one_create(rig, "d2")


# -- d2. the count of an empty lookup is lost ---------------------------------------------------


@pytest.mark.parametrize("lost", ["reply", "request"])
async def test_a_lost_lookup_count_changes_no_verdict(rig_factory, lost):
    """An UNKNOWN send's retry looked in Twilio's list and found nothing (the message is not
    listed yet); NOTE_LOOKUP, which counts that look on the record for the operator, lost its
    answer (it ran) or never reached the store. The count is best effort: the retry is still
    refused with outcome-unknown as a look that found nothing (not a failed one), nothing is
    created, and once the list shows the message a retry gets the original answer replayed."""
    rig = await rig_factory(on_store_error="closed")
    rig.fake.list_lag_seconds = 3.0
    rig.fake.push_fault(Fault("500-after-create"))
    first = await rig.ledger.send(rig.http, rig.first, "n", key="key-n")
    assert (first.status, first.decision) == (500, "forwarded")
    (sid,) = rig.fake.messages
    if lost == "reply":
        rig.link.drop_after_reply(evalsha(script_sha("NOTE_LOOKUP")), times=2)
    else:
        rig.link.cut_request(script_sha("NOTE_LOOKUP"), times=2)
    refused = await rig.ledger.send(rig.http, rig.second, "n", key="key-n")
    assert (refused.status, refused.decision, refused.code) == (409, "outcome-unknown", 79004)
    assert rig.link.armed() == 0, "the lookup was never counted, so the fault never fired"
    # The look itself worked: it is reported as "nothing found", not as a failed reconciliation
    # (which would also skip `unknown_resend_after`'s resend of a silent send).
    outcomes = {
        outcome: rig.second.app[METRICS].value("sendguard_reconciliations_total", outcome=outcome)
        for outcome in ("not-found", "error")
    }
    assert outcomes == {"not-found": 1, "error": 0}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (answer := await rig.ledger.send(rig.http, rig.first, "n", key="key-n")).status != 201:
        assert (answer.status, answer.decision) == (409, "outcome-unknown"), rig.ledger.trail("n")
        assert loop.time() < deadline, f"never replayed: {rig.ledger.trail('n')}"
        await asyncio.sleep(0.5)
    assert (answer.decision, answer.sid) == ("replayed", sid)
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "n")


# -- e. the whole store is down -----------------------------------------------------------------


async def passthrough_status(http: aiohttp.ClientSession, instance: ProxyInstance) -> tuple:
    async with http.get(instance.url + MESSAGES, headers={"Authorization": basic_auth()}) as answer:
        return answer.status, answer.headers.get("X-Sendguard-Decision")


async def test_whole_store_outage_with_the_default_policy_refuses_guarded_sends(rig_factory, http):
    """The default policy is `closed` (SPEC §1): guarded sends 503 store-unavailable (before
    and after the policy engages), passthrough still served, admin still answers, no 500."""
    rig = await rig_factory(**supported(store_outage_after=0.5))
    rig.link.reset_all()
    rig.link.refuse(None, how="unlisten")
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.0  # past the outage threshold
    while loop.time() < until:
        attempt = await rig.ledger.send(rig.http, rig.first, "e", key="key-e")
        assert (attempt.status, attempt.decision) == (503, "store-unavailable"), rig.ledger.trail(
            "e"
        )
        assert await passthrough_status(http, rig.first) == (200, "passthrough")
        await asyncio.sleep(0.2)
    async with http.get(rig.first.admin_url + "/v1/status", headers=ADMIN) as status:
        assert status.status == 200
    assert rig.fake.creates == 0
    rig.link.accept()
    assert await send_until_forwarded(rig, "e", key="key-e"), rig.ledger.trail("e")
    # The second instance finds the store back on its own next probe (it may still refuse
    # until then): its first 201 is the replay, never a second create.
    assert await send_until_forwarded(rig, "e", key="key-e", on="other"), rig.ledger.trail("e")
    assert rig.ledger.of("e")[-1].decision == "replayed", rig.ledger.trail("e")
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "e")


ADMIN = {"Authorization": "Bearer t"}


async def store_mode(http: aiohttp.ClientSession, instance: ProxyInstance) -> str:
    async with http.get(instance.admin_url + "/v1/status", headers=ADMIN) as status:
        return str((await status.json())["store_mode"])


@pytest.mark.parametrize("retry_on", ["same", "other"])
async def test_local_policy_merges_outage_sends_before_the_shared_store_is_used_again(
    rig_factory, http, retry_on
):
    """`on_store_error=local`: a send made on the private store during an outage is still a
    duplicate after the shared store is back (SPEC §3.4: merged before it is used again)."""
    rig = await rig_factory(on_store_error="local", **supported(store_outage_after=0.5))
    rig.link.reset_all()
    rig.link.refuse(None, how="unlisten")
    # A patient client: refused until the policy engages, then sent on the private store.
    assert await send_until_forwarded(rig, "e2", key="key-e2", seconds=8), rig.ledger.trail("e2")
    during = await rig.ledger.send(rig.http, rig.first, "e2", key="key-e2")
    assert (during.status, during.decision) == (201, "replayed")
    rig.link.accept()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await store_mode(http, rig.first) != "shared":
        assert loop.time() < deadline, "never back on the shared store"
        await asyncio.sleep(0.1)
    for _ in range(2):
        await rig.ledger.send(rig.http, rig.instance(retry_on), "e2", key="key-e2")
        await asyncio.sleep(0.3)
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "e2")


async def test_an_instance_started_while_the_store_is_down_serves_and_refuses(
    link, proxies, fake_twilio, http
):
    """SPEC §3.4: sendguard starts, serves passthrough and answers probes while its store is
    down; guarded sends are refused (default policy) until the store is back."""
    link.refuse(None, how="unlisten")
    try:
        instance = await asyncio.wait_for(
            proxies.start(**instance_settings(fake_twilio, link)), timeout=15
        )
        ledger = Ledger()
        assert await passthrough_status(http, instance) == (200, "passthrough")
        async with http.get(instance.admin_url + "/healthz") as health:
            assert health.status == 200
        attempt = await ledger.send(http, instance, "s", key="key-s")
        assert (attempt.status, attempt.decision) == (503, "store-unavailable")
        assert fake_twilio.creates == 0
    finally:
        link.pass_through()


# -- f. a keyed claim that ran half -----------------------------------------------------------


@RETRY_ON
async def test_keyed_claim_cut_after_the_key_index_write(rig_factory, retry_on):
    """A keyed claim is one pipeline: SET NX GET of the key index, the CLAIM script, the
    lookup SET. The connection dies after the index write reached the server and before the
    claim did (both tries): nothing was sent, and the leftover index (it names this very
    send) must not block the retry nor let it out twice."""
    rig = await rig_factory(on_store_error="closed")
    rig.link.cut_request(script_sha("CLAIM"), times=2)
    first = await rig.ledger.send(rig.http, rig.first, "f", key="key-f")
    await rig.link.wait_until(lambda p: p.requests_cut >= 1, what="a cut request")
    assert (first.status, first.decision) in {(503, "store-unavailable"), (201, "forwarded")}
    if first.status == 503:
        async with Redis(port=rig.valkey.port) as direct:
            index = [k async for k in direct.scan_iter(match="*:key")]
            records = [k async for k in direct.scan_iter(match="*:rec:*")]
        assert index and not records, "the fault did not cut between the index and the claim"
    await asyncio.sleep(0.3)
    assert await send_until_forwarded(rig, "f", key="key-f", on=retry_on), rig.ledger.trail("f")
    await retry_answers(rig, "f", "same" if retry_on == "other" else "other", key="key-f")
    rig.ledger.check(rig.fake)
    assert_one_create(rig, "f")


# -- a full connection pool ---------------------------------------------------------------------


async def test_a_burst_over_a_slow_store_never_sends_twice(rig_factory, burst_http):
    """150 concurrent keyed sends while every store reply takes 0.3 s (connections stay busy,
    the pool fills): each is answered, none with a 500, none created twice; then each is
    retried on the other instance and replayed (or refused), never forwarded again."""
    rig = await rig_factory()
    rig.http = burst_http
    rig.link.set_latency(0.3)
    names = [f"burst-{i}" for i in range(150)]
    await asyncio.gather(
        *(
            rig.ledger.send(rig.http, rig.first, name, key=f"key-{name}", to=f"+1555010{i:04d}")
            for i, name in enumerate(names)
        )
    )
    rig.link.set_latency(0)
    await asyncio.gather(
        *(
            rig.ledger.send(rig.http, rig.second, name, key=f"key-{name}", to=f"+1555010{i:04d}")
            for i, name in enumerate(names)
        )
    )
    rig.ledger.check(rig.fake)
    decisions = Counter(a.decision for a in rig.ledger.attempts)
    assert decisions["forwarded"] == rig.fake.creates, decisions


def test_the_fault_helpers_match_the_scripts_redis_py_sends():
    """A guard against the tests silently targeting nothing: the SHAs are what redis-py uses."""
    from redis.commands.core import AsyncScript

    class _Registrar:
        def get_encoder(self) -> Any:
            from redis.asyncio.connection import Encoder

            return Encoder("utf-8", "strict", False)

    for name in ("CLAIM", "COMPLETE", "MARK_UNKNOWN", "RELEASE"):
        assert AsyncScript(_Registrar(), getattr(scripts, name)).sha == script_sha(name)  # type: ignore[arg-type]
    assert contains(b"EVALSHA")(b"*3\r\n$7\r\nEVALSHA\r\n")
