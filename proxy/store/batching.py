"""Auto-pipelining: store calls made in the same event-loop turn leave as one pipeline.

Under load, many sends reach their claim or completion in the same turn of the loop. One
pipeline for all of them is one socket write and one read of the answers, instead of one
request/answer exchange each: redis-py's per-exchange machinery (connection checkout, retry
wrapper, parsing loop, loop wake-ups) was most of a guarded send's CPU. Nothing waits to
fill a batch: the flush is scheduled for the next turn, so a lone send goes out at once.

Each caller gets exactly the answers to its own steps, in order; an answer that is an error
is handed back as a value (the caller decides: NOSCRIPT is reloaded, others raise). A failure
of the exchange itself (connection lost) is raised to every caller in the batch: for each of
them it means what it meant before batching, "the store could not answer".
Standalone Redis only: a cluster pipeline cannot carry scripts. Since the lean client
(lean_path.py) took over sendguard's hot path on a standalone or embedded store, this carries
what stays on redis-py there: claims that WAIT for replicas (`store_min_replicas`), and every
call of a SendStore made without a lean client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

# A script with its keys and args, or a plain command queued on the pipeline.
Step = tuple[AsyncScript, Sequence[str], Sequence[str | int | bytes]] | Callable[[Any], Any]
_Waiter = tuple[Sequence[Step], "asyncio.Future[list[Any]]"]

MAX_BATCH_CALLS = 128  # bounds one pipeline's size; more go out in the next one


class AutoPipeline:
    def __init__(self, redis: Redis, max_calls: int = MAX_BATCH_CALLS) -> None:
        self._redis = redis
        self._max_calls = max_calls
        self._waiting: list[_Waiter] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()

    async def execute(self, steps: Sequence[Step]) -> list[Any]:
        """The answers to `steps` (errors as values), sent with whatever else is ready."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((steps, future))
        if len(self._waiting) >= self._max_calls:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, batch: list[_Waiter]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for steps, _ in batch:
                    for step in steps:
                        _queue(pipe, step)
                answers: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, future in batch:
                if not future.done():  # a caller cancelled meanwhile has no one to tell
                    future.set_exception(exc)
            return
        offset = 0
        for steps, future in batch:
            if not future.done():
                future.set_result(answers[offset : offset + len(steps)])
            offset += len(steps)

    async def drain(self) -> None:
        """Wait for batches already sent (before the client closes)."""
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._in_flight)


def _queue(pipe: Any, step: Step) -> None:
    if isinstance(step, tuple):
        # EVALSHA as a plain command: a Script object would make the pipeline run
        # `SCRIPT EXISTS` first, a hidden extra round trip.
        script, script_keys, script_args = step
        pipe.evalsha(script.sha, len(script_keys), *script_keys, *script_args)
    else:
        step(pipe)
