"""Fault injection: what can go wrong around a create, and how a fault is named.

A fault is taken per create request (Messages.json or Calls.json POST), from the request header
`X-Sandbox-Fault` when present (demos) or else from the state's queue (tests). Only `429`
refuses before anything is created; every other kind creates the resource first, which is the
whole point: the client cannot tell from the answer whether the send happened.

`X-Sandbox-List-Lag: <seconds>` on a Messages create hides that message from the list for that
long (SandboxState.list_lag_seconds is the default for every create); it combines with any fault,
so `500-after-create` plus a list lag is the send that reconciliation cannot find at first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

from aiohttp import web

FAULT_HEADER = "X-Sandbox-Fault"
LIST_LAG_HEADER = "X-Sandbox-List-Lag"
MAX_LIST_LAG_SECONDS = 86400.0

DELAY = "delay"
SERVER_ERROR_AFTER_CREATE = "500-after-create"
HANG = "hang"
RATE_LIMITED = "429"
RESET = "reset"
UNDELIVERED = "undelivered"

FAULT_KINDS = frozenset({DELAY, SERVER_ERROR_AFTER_CREATE, HANG, RATE_LIMITED, RESET, UNDELIVERED})

DEFAULT_HANG_SECONDS = 3600.0
DEFAULT_UNDELIVERED_CODE = 30007
# How often a held request checks whether its client is still there.
_HOLD_POLL_SECONDS = 0.05


@dataclass
class Fault:
    kind: str
    seconds: float = 0  # delay / hang duration; Retry-After for 429 (0 = no header)
    code: int = 0  # delivery error code for undelivered (0 = 30007)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown sandbox fault {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if self.seconds < 0:
            raise ValueError("fault seconds must be >= 0")

    @property
    def hang_seconds(self) -> float:
        return self.seconds or DEFAULT_HANG_SECONDS

    @property
    def delivery_error_code(self) -> int:
        return self.code or DEFAULT_UNDELIVERED_CODE


def parse_fault(value: str) -> Fault:
    """`kind[=number]`, e.g. `delay=2`, `429=3`, `undelivered=30007`; raises ValueError."""
    kind, _, argument = value.strip().partition("=")
    kind = kind.strip().lower()
    argument = argument.strip()
    if kind == UNDELIVERED:
        return Fault(kind, code=int(argument) if argument else 0)
    return Fault(kind, seconds=float(argument) if argument else 0)


def parse_list_lag(value: str) -> float:
    """Seconds, e.g. `5` or `0.5` (0 = listed at once); raises ValueError."""
    seconds = float(value.strip())
    if not 0 <= seconds <= MAX_LIST_LAG_SECONDS:  # also refuses nan
        raise ValueError(f"list lag must be 0 to {MAX_LIST_LAG_SECONDS:g} seconds")
    return seconds


async def hold(request: web.Request, seconds: float, stopping: asyncio.Event) -> None:
    """Sleep up to `seconds`, waking early when the client goes away or the app stops.

    aiohttp does not cancel handlers on disconnect by default, and waits for running handlers
    on shutdown, so a plain sleep would keep a hung request (and the test run) alive.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not stopping.is_set() and client_connected(request):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=min(remaining, _HOLD_POLL_SECONDS))


def client_connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP RST and no response, like a load balancer reset."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: close() sends RST instead of a graceful FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
