"""SPEC §6 store budget: passthrough 0 round trips, fresh send 2, replay 1.

Counted on both of the proxy's own store clients. redis-py: every command or pipeline takes
one connection from the pool for one request/answer exchange, so connections taken = round
trips. The lean client (the hot path on a standalone store, lean_path.py): every
`execute_batch` is one write of its commands and the wait for their answers on the multiplexed
connection, one round trip (other sends' commands may share the write; here requests are
sequential). A pipelined index write rides along with its script: same exchange, not another
round trip. The kill switch board has its own client, whose background resync is per
instance, not per request.
"""

from __future__ import annotations

from proxy.server.app import REDIS, RUNTIME
from tests.harness import SENDER, post_send
from tests.spies import CallCounter


async def test_store_round_trips_per_request_kind(proxies, fake_twilio, shared_redis_url, http):
    proxy = await proxies.start(upstream=fake_twilio.url, redis_url=shared_redis_url)
    form = {"To": "+15558675310", "From": SENDER, "Body": "budget"}
    keyed = {"To": "+15558675311", "From": SENDER, "Body": "budget"}
    await post_send(http, proxy.url, {**form, "Body": "warm-up"})  # loads the scripts once
    await post_send(http, proxy.url, {**keyed, "Body": "warm-up"}, key="warm-up")
    runtime = proxy.app[RUNTIME]
    await runtime.journal.flush(5)  # the warm-ups' completes are written after their answers
    pool = proxy.app[REDIS].connection_pool
    taken = CallCounter()
    taken.wrap(pool, "get_connection")
    lean = runtime.store.lean
    assert lean is not None, "a standalone store's hot path runs on the lean client"
    taken.wrap(lean.client, "execute_batch")

    async def round_trips(action) -> int:
        taken.count = 0
        await action()
        await runtime.journal.flush(5)  # a fresh send's complete is written after its answer
        return taken.count

    async def passthrough_get() -> None:
        async with http.get(proxy.url + "/2010-04-01/Accounts.json") as answer:
            assert answer.headers["X-Sendguard-Decision"] == "passthrough"

    async def send(decision: str, **kwargs) -> None:
        _, headers, _ = await post_send(http, proxy.url, kwargs.pop("data", form), **kwargs)
        assert headers["X-Sendguard-Decision"] == decision

    assert await round_trips(passthrough_get) == 0
    assert await round_trips(lambda: send("forwarded")) == 2
    assert await round_trips(lambda: send("replayed")) == 1
    assert await round_trips(lambda: send("forwarded", data=keyed, key="k-1")) == 2
    assert await round_trips(lambda: send("replayed", data=keyed, key="k-1")) == 1
