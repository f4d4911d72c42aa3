"""Redis Cluster events under load never cost a duplicate send (SPEC §1 "Scale-out", §3.4).

A real 3-master cluster (a replica each, 1 s node timeout) of valkey-server processes
(tests/servers.py ClusterTopology), two sendguard instances with `redis_cluster=True` and every
node as a seed, the counting fake Twilio as ground truth. A retrying client load runs while a
master is killed with SIGKILL (its replica takes over), while a slot is migrated (ASK,
TRYAGAIN, then MOVED), or all at once (a burst larger than a node's usual pool). The ledger
(tests/store/test_store_faults.py) checks every logical send: at most one create, at most one
`forwarded`, every other answer 201 replayed / 409 / 503, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis

from tests.servers import ClusterTopology, ServerProcess
from tests.store.test_store_faults import Attempt, Ledger

pytestmark = pytest.mark.slow

DEFINITE = {(201, "forwarded"), (201, "replayed"), (409, "outcome-unknown")}


@pytest.fixture
def cluster():
    topology = ClusterTopology(masters=3, replicas=1, node_timeout_ms=1000)
    topology.start()
    yield topology
    topology.stop()


async def two_instances(proxies, fake, cluster: ClusterTopology, **overrides: Any) -> tuple:
    settings = {
        "upstream": fake.url,
        "redis_url": cluster.seed_urls,
        "redis_cluster": True,
        **overrides,
    }
    first = await proxies.start(**settings)
    second = await proxies.start(**settings)
    return first, second


def recipient(index: int) -> str:
    return f"+1555{index:07d}"


async def patient_send(
    ledger: Ledger,
    http: Any,
    instances: tuple,
    name: str,
    *,
    key: str | None,
    to: str,
    tries: int = 10,
) -> Attempt:
    """A client that retries (alternating instances) until it has a definite answer."""
    attempt: Attempt | None = None
    for number in range(tries):
        attempt = await ledger.send(http, instances[number % 2], name, key=key, to=to)
        if (attempt.status, attempt.decision) in DEFINITE:
            return attempt
        await asyncio.sleep(min(0.2 * (number + 1), 1.0))
    assert attempt is not None
    return attempt


async def run_load(
    ledger: Ledger,
    http: Any,
    instances: tuple,
    sends: list[tuple[str, str | None, str]],
    *,
    workers: int,
    on_progress: Callable[[int], None] | None = None,
) -> list[Attempt]:
    """`sends` (name, key, to) through `workers` concurrent patient clients."""
    queue: asyncio.Queue[tuple[str, str | None, str]] = asyncio.Queue()
    for item in sends:
        queue.put_nowait(item)
    finals: list[Attempt] = []

    async def worker() -> None:
        while not queue.empty():
            name, key, to = queue.get_nowait()
            finals.append(await patient_send(ledger, http, instances, name, key=key, to=to))
            if on_progress is not None:
                on_progress(len(finals))

    await asyncio.gather(*(worker() for _ in range(workers)))
    return finals


async def verify_round(ledger: Ledger, http: Any, instances: tuple, sends: list) -> None:
    """Every logical send once more on each instance: replayed, 409 or 503, never forwarded."""
    for instance in instances:
        await asyncio.gather(
            *(ledger.send(http, instance, name, key=key, to=to) for name, key, to in sends)
        )


def summary(ledger: Ledger, fake: Any) -> str:
    decisions = Counter((a.status, a.decision) for a in ledger.attempts)
    creates = ledger.creates(fake)
    twice = sum(1 for n in creates.values() if n > 1)
    # Not a duplicate, but worth seeing: logical sends that were never made (a patient client
    # gave up: blocked by a claim that failed, or UNKNOWN).
    never = sorted({a.send for a in ledger.attempts if not creates[a.send]})
    trails = "; ".join(f"{name}: {ledger.trail(name)}" for name in never[:5])
    return (
        f"creates={fake.creates} created-twice={twice} answers={dict(decisions)} "
        f"never-sent={len(never)} {trails}"
    )


def check(ledger: Ledger, fake: Any) -> None:
    """The ledger's check, with the whole run's counts first (and at most 15 sends' trails)."""
    problems = ledger.problems(fake)
    assert not problems, f"{summary(ledger, fake)}; {len(problems)} sends wrong:\n  " + "\n  ".join(
        problems[:15]
    )


def workload(count: int, prefix: str) -> list[tuple[str, str | None, str]]:
    """Half keyed, half deduped by fingerprint; one recipient each (default limits apply)."""
    return [
        (f"{prefix}{i}", f"key-{prefix}{i}" if i % 2 == 0 else None, recipient(i))
        for i in range(count)
    ]


async def test_kill_9_of_a_master_under_retrying_load(cluster, proxies, fake_twilio, http):
    """~200 logical sends, 20 at a time, each retried until definite; a third of the way in,
    the master of slot 0 is SIGKILLed (its replica takes over after ~1-2 s), later it comes
    back as a replica. No message may be created twice."""
    instances = await two_instances(proxies, fake_twilio, cluster)
    ledger = Ledger()
    ledger.name(instances[0], "first")
    ledger.name(instances[1], "second")
    sends = workload(200, "k")
    killed = asyncio.Event()
    done_at: dict[str, int] = {}

    def progress(done: int) -> None:
        done_at["now"] = done
        if done >= 60:
            killed.set()

    async def chaos() -> tuple[ServerProcess, ServerProcess]:
        await killed.wait()
        victim = await asyncio.to_thread(cluster.kill_master)
        done_at["kill"] = done_at["now"]
        successor = await asyncio.to_thread(cluster.wait_for_failover, victim)
        done_at["failover"] = done_at["now"]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.restart, victim)
        return victim, successor

    chaos_task = asyncio.ensure_future(chaos())
    finals = await run_load(ledger, http, instances, sends, workers=20, on_progress=progress)
    victim, successor = await asyncio.wait_for(chaos_task, 60)
    assert victim.port != successor.port
    assert done_at["failover"] < len(sends), f"the load ended before the failover: {done_at}"
    await verify_round(ledger, http, instances, sends)
    check(ledger, fake_twilio)
    undecided = [a for a in finals if (a.status, a.decision) not in DEFINITE]
    print(summary(ledger, fake_twilio), f"undecided={len(undecided)} progress={done_at}")


async def test_a_burst_of_concurrent_sends_on_a_cluster(cluster, proxies, fake_twilio, burst_http):
    """150 keyed sends at once (three store commands each at the same moment: more than a
    node's default pool of 100 connections), then all retried at once on the other instance:
    none created twice, no 500, every retry a replay (or 409/503)."""
    http = burst_http
    instances = await two_instances(proxies, fake_twilio, cluster)
    ledger = Ledger()
    ledger.name(instances[0], "first")
    ledger.name(instances[1], "second")
    sends = [(f"b{i}", f"key-b{i}", recipient(i)) for i in range(150)]
    await asyncio.gather(
        *(ledger.send(http, instances[0], name, key=key, to=to) for name, key, to in sends)
    )
    first_round = Counter((a.status, a.decision) for a in ledger.attempts)
    await verify_round(ledger, http, instances[1:], sends)
    check(ledger, fake_twilio)
    assert not [a for a in ledger.attempts if a.status >= 500 and a.status != 503], summary(
        ledger, fake_twilio
    )
    assert first_round[(201, "forwarded")] == len(sends), f"first round: {dict(first_round)}"


def _slot_of_the_recipient(cluster: ClusterTopology) -> int:
    """The slot holding the (one) recipient's records, found on the servers themselves (the
    warm-up send's dedup record is the only `…:rec:…` key so far)."""
    slots = set()
    for master in cluster.masters():
        with master.client() as client:
            for key in client.scan_iter(match="*:rec:*", count=1000):
                slots.add(int(client.execute_command("CLUSTER", "KEYSLOT", key)))
    assert len(slots) == 1, f"expected one record slot, found {slots}"
    return slots.pop()


async def test_a_slot_migration_under_load(cluster, proxies, fake_twilio, http):
    """Every send goes to one recipient (limits off), so all their records share one slot;
    that slot is migrated to another master while 10 clients send and retry (the claim script
    meets ASK and TRYAGAIN while its keys are split between the nodes, then MOVED)."""
    instances = await two_instances(
        proxies, fake_twilio, cluster, recipient_limits="off", inflight_wait=1.0
    )
    ledger = Ledger()
    ledger.name(instances[0], "first")
    ledger.name(instances[1], "second")
    to = recipient(1)
    warm = await ledger.send(http, instances[0], "m-warm", key=None, to=to)
    assert (warm.status, warm.decision) == (201, "forwarded")
    slot = await asyncio.to_thread(_slot_of_the_recipient, cluster)
    source = await asyncio.to_thread(cluster.master_of_slot, slot)
    target = next(m for m in await asyncio.to_thread(cluster.masters) if m is not source)
    sends = [(f"m{i}", f"key-m{i}" if i % 2 == 0 else None, to) for i in range(120)]
    started = asyncio.Event()

    def progress(done: int) -> None:
        if done >= 20:
            started.set()

    async def migrate() -> int:
        await started.wait()
        return await asyncio.to_thread(
            cluster.migrate_slot, slot, target, batch=3, pause=0.05, hold=0.3
        )

    migration = asyncio.ensure_future(migrate())
    await run_load(ledger, http, instances, sends, workers=10, on_progress=progress)
    moved = await asyncio.wait_for(migration, 60)
    assert moved > 0
    assert (await asyncio.to_thread(cluster.master_of_slot, slot)) is target
    await verify_round(ledger, http, instances, [("m-warm", None, to), *sends])
    check(ledger, fake_twilio)
    print(summary(ledger, fake_twilio), f"keys moved={moved}")


async def test_sendguard_starts_with_some_seeds_down_and_sends_once(
    cluster, proxies, fake_twilio, http
):
    """SPEC §1: sendguard starts while some seeds are down (here the first one listed)."""
    victim = await asyncio.to_thread(cluster.kill_master)
    await asyncio.to_thread(cluster.wait_for_failover, victim)
    instances = await two_instances(proxies, fake_twilio, cluster)
    ledger = Ledger()
    first = await patient_send(ledger, http, instances, "s1", key="key-s1", to=recipient(9))
    assert (first.status, first.decision) == (201, "forwarded"), ledger.trail("s1")
    again = await ledger.send(http, instances[1], "s1", key="key-s1", to=recipient(9))
    assert (again.status, again.decision) == (201, "replayed")
    check(ledger, fake_twilio)


def test_the_topology_helper_fails_over_and_migrates():
    """The fixture itself: a kill -9 is followed by a promotion, a restarted master rejoins
    as a replica, a coordinated failover hands the slots back, a slot moves with its keys."""
    with ClusterTopology(masters=3, replicas=1, node_timeout_ms=1000) as topology:
        seed = topology.nodes[1]
        client = redis.RedisCluster(host="127.0.0.1", port=seed.port)
        try:
            for i in range(30):
                client.set(f"{{t}}:{i}", i)
            slot = topology.slot_of("t")
            victim = topology.master_of_slot(slot)
            topology.kill_master(victim)
            successor = topology.wait_for_failover(victim)
            assert successor is not victim
            topology.restart(victim)
            assert victim in topology.replicas_of(successor)
            topology.failover(victim)
            assert topology.master_of_slot(slot) is victim
            target = next(m for m in topology.masters() if m is not victim)
            assert topology.migrate_slot(slot, target, batch=7) == 30
            assert topology.master_of_slot(slot) is target
            with contextlib.suppress(redis.RedisError):
                client.get("{t}:0")  # the first answer may be MOVED-refreshed
            assert client.get("{t}:29") == b"29"
        finally:
            client.close()
