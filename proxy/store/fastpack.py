"""Redis command encoding in C for the asyncio client.

redis-py's asyncio connections encode every command in pure Python (the sync client uses
hiredis when present). Each guarded send packs two scripts with a dozen arguments, one of them
the stored answer: measured at about a tenth of sendguard's CPU per send. hiredis (already a
dependency, through `redis[hiredis]`) packs the same RESP bytes in C.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool


class _HiredisPacking:
    def pack_command(self, *args: Any) -> list[bytes]:
        # redis-py splits a multi-word command name ("SCRIPT LOAD") into separate arguments.
        first = args[0]
        if isinstance(first, str) and " " in first:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


def use_hiredis_packing(pool: ConnectionPool) -> None:
    """Make the pool's connections (TCP, TLS or unix socket alike) pack commands in C."""
    base: type[AbstractConnection] = pool.connection_class
    if issubclass(base, _HiredisPacking):
        return
    pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})
