"""Which event loop sendguard runs on: uvloop when it is installed, else plain asyncio.

uvloop is a runtime dependency wherever it builds (not on Windows). Its libuv-based loop costs
less CPU per socket wake-up than asyncio's selector loop, and a proxy is little but socket
wake-ups (client, upstream, store). The choice is made once, when sendguard starts serving;
`running_loop_name` then says which loop actually runs (the started log line carries it), so
a process started some other way (a test's own runner) still reports the truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def choose_loop() -> tuple[str, LoopFactory | None]:
    """("uvloop", its loop factory) when uvloop imports, else ("asyncio", None): the default
    loop of `asyncio.Runner`."""
    try:
        import uvloop  # a dependency, but not on every platform (no Windows build)
    except ImportError:
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def running_loop_name() -> str:
    """`uvloop` or `asyncio`: the implementation of the loop running now."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".", 1)[0] == "uvloop" else "asyncio"
