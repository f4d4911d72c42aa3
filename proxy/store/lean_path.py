"""The hot path of a guarded send on the lean client (lean.py): standalone and embedded stores.

A fresh send's claim and outcome write, and a replay's claim, run here: the scripts as EVALSHA
(EVAL on NOSCRIPT, no SCRIPT EXISTS round trip), with the plain commands that ride along in
the same exchange, on one multiplexed connection shared by every send of the instance.

What stays on redis-py (send_store.py): a cluster (slot routing: one concurrent redis-py call
per slot, as before), sentinel (the master is re-asked on every new connection), a claim
that waits for replicas (`store_min_replicas`: WAIT would hold every other send's answer on a
multiplexed connection) and everything off the hot path (admin, ledger, export/merge, kill
switch, prober).

Failures are what redis-py's would be, so `translate_store_errors` turns them into the same
`StoreError`: an error reply is raised (a `redis.exceptions.ResponseError`), and a dropped
connection is retried once, like redis-py's `Retry(NoBackoff(), 1)` in `store_client` (every
script is safe to run twice: tests/store/test_scripts.py). A reply that timed out is not
retried (nor is redis-py's TimeoutError): a black-holed store must turn into a store error
within the store timeout, not twice that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from proxy.store import scripts
from proxy.store.lean import (
    Arg,
    LeanClient,
    LeanConnectionError,
    LeanTimeoutError,
    ResponseError,
    Script,
    ScriptCall,
    Step,
)


def lean_client_like(client: Any) -> LeanClient | None:
    """A lean client to the same server as a standalone redis-py client (`store_client`'s,
    embedded stores included), or None where the hot path stays on redis-py: a cluster, a
    sentinel-managed master, credential providers."""
    if isinstance(client, RedisCluster):
        return None
    try:
        return LeanClient.like(client)
    except ValueError:
        return None


class LeanPath:
    """The hot path's scripts and commands on one LeanClient, which this path owns."""

    def __init__(self, client: LeanClient) -> None:
        self.client = client
        self.claim = Script(scripts.CLAIM)
        self.complete = Script(scripts.COMPLETE)
        self.release = Script(scripts.RELEASE)
        self.mark_unknown = Script(scripts.MARK_UNKNOWN)
        self.account_admit = Script(scripts.ACCOUNT_ADMIT)
        self.account_unadmit = Script(scripts.ACCOUNT_UNADMIT)

    async def run(self, *steps: Step) -> list[Any]:
        """The replies to `steps`, in one exchange (a NOSCRIPT adds one, for its scripts);
        an error reply is raised, a dropped connection retried once."""
        try:
            replies = await self.client.execute_steps(steps)
        except LeanTimeoutError:
            raise
        except LeanConnectionError:
            replies = await self.client.execute_steps(steps)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        (reply,) = await self.run(ScriptCall(script, keys, args))
        return reply

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        """HGETALL as redis-py answers it (a dict); RESP2 sends the pairs flat."""
        (flat,) = await self.run((b"HGETALL", key))
        pairs = iter(flat)
        return dict(zip(pairs, pairs, strict=True))

    async def drain(self) -> None:
        await self.client.drain()

    async def aclose(self) -> None:
        await self.client.aclose()
