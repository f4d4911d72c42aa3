"""Counting the calls of coroutine methods in place: how a test counts round trips (a pool's
`get_connection`, a lean client's `execute_batch`) without a mock standing in for them."""

from __future__ import annotations

from typing import Any


class CallCounter:
    """One count for every coroutine method it wraps; set `count` to 0 to start again."""

    def __init__(self) -> None:
        self.count = 0

    def wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        async def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        setattr(owner, name, counting)
