"""A TCP fault proxy for tests: real sockets between a client and a server, with faults on cue.

    client (sendguard)  ->  FaultProxy 127.0.0.1:<random>  ->  target host:port (valkey, Twilio)

It forwards bytes both ways and, when told, misbehaves in the ways a network or a store does.
It knows nothing of the protocol, except that a request can be recognised by a substring of its
bytes (`contains(b"EVALSHA", sha)`) and that a RESP command starts at `*` (`cut_request`). So it
serves the store link (RESP) and the upstream link (HTTP) alike.

Faults (each method documents what it does; all can be combined, `pass_through()` clears them):

- `set_latency(s)`      every server->client chunk is delivered `s` seconds after it arrived
                        (order kept). Requests are never delayed.
- `stall(s)`            hold every server->client byte (already queued or arriving) until `s`
                        seconds from now, then deliver it all. The commands did run on the
                        server; only the answers are late. `unstall()` ends it early.
- `drop_after_reply(match, times=1)`
                        arm: when a request whose bytes satisfy `match` reaches the server, the
                        next reply on that connection is discarded and both sides of the
                        connection are closed. The command ran, its answer is lost: what a
                        client sees when a connection dies between execution and reply.
                        `times` requests are hit (e.g. 2 to defeat one client-side retry).
- `cut_request(marker, match=None, times=1)`
                        the request holding `marker` is forwarded only up to the start of the
                        RESP command holding it (earlier pipelined commands reach the server
                        and run, that command and the rest never do), then the connection is
                        closed: a pipeline that ran half.
- `reset_all()`         every open connection is reset now (RST to the client, the server side
                        closed). New connections are accepted as before.
- `refuse(s, how=...)`  new connections during the next `s` seconds: `"close"` accept and close
                        at once (FIN), `"reset"` accept and reset (RST), `"unlisten"` stop
                        listening (ECONNREFUSED), listening again on the same port afterwards.
                        `s=None` refuses until `accept()`. Open connections are not touched.
- `split_writes(chunk, delay=0)`
                        every write (both directions) is cut into `chunk`-byte pieces, `delay`
                        seconds apart: exercises parsers on partial frames.

Counters: `connections_total`, `connections_open`, `connections_refused`, `bytes_to_server`,
`bytes_to_client`, `replies_dropped`, `requests_cut`, `resets`, `matches` (requests that
satisfied an armed `drop_after_reply`/`cut_request`).

Two ways to run it:

- `FaultProxy(host, port)`; `await proxy.start()` / `await proxy.stop()`: in the running loop
  (sendguard apps of `tests.harness.ProxyFactory` share the test's loop).
- `ThreadedFaultProxy(host, port)`; `.start()` / `.stop()` (or `with`): its own thread and loop,
  for clients that are subprocesses or blocking code.

Every control method is safe to call from any thread: settings are plain attributes under a
lock, and actions on sockets are handed to the proxy's own loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.store import scripts

Match = Callable[[bytes], bool]

_MAX_REQUEST_WINDOW = 1 << 20  # request bytes kept for matching (since the last reply)
_READ_SIZE = 65536
_HOLD_SLICE = 0.02  # how often held bytes re-check latency/stall (a stall can end early)


def contains(*parts: bytes | str) -> Match:
    """A request predicate: every part occurs in the request's bytes."""
    wanted = [part.encode() if isinstance(part, str) else part for part in parts]
    return lambda data: all(part in data for part in wanted)


def evalsha(sha: str) -> Match:
    """A request predicate: an EVALSHA of the script with this SHA1 (as redis-py sends it)."""
    return contains(b"EVALSHA", sha.encode())


def script_sha(name: str) -> str:
    """The SHA1 EVALSHA names sendguard's store script `name` (proxy/store/scripts.py) by."""
    return hashlib.sha1(getattr(scripts, name).encode()).hexdigest()


def _as_match(match: Match | bytes | str | None) -> Match:
    if match is None:
        return lambda data: True
    if isinstance(match, bytes | str):
        return contains(match)
    return match


@dataclass
class _Rule:
    match: Match
    times: int  # requests still to hit; the rule is spent at 0
    marker: bytes = b""  # cut_request: the command holding this is where the cut goes


@dataclass(eq=False)
class _Link:
    """One client connection and its connection to the target."""

    number: int
    client_reader: asyncio.StreamReader
    client_writer: asyncio.StreamWriter
    server_reader: asyncio.StreamReader | None = None
    server_writer: asyncio.StreamWriter | None = None
    window: bytearray = field(default_factory=bytearray)  # request bytes since the last reply
    doomed: bool = False  # drop the next reply and close
    closed: bool = False
    replies: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _set_linger_zero(writer: asyncio.StreamWriter | None) -> None:
    """So that closing sends RST, not FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy:
    """See the module docstring. `address`/`url` are valid after `start()`."""

    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._sock: socket.socket | None = None
        self._links: set[_Link] = set()
        self._relisten: asyncio.TimerHandle | None = None
        self._stopped = False
        # faults
        self.latency = 0.0
        self.stall_until = 0.0  # loop.time() until which replies are held
        self.refuse_until: float | None = 0.0  # None: until accept()
        self.refuse_how = "close"
        self.split_chunk = 0  # 0 = writes as they come
        self.split_delay = 0.0
        self._drop_rules: list[_Rule] = []
        self._cut_rules: list[_Rule] = []
        # counters
        self.connections_total = 0
        self.connections_refused = 0
        self.bytes_to_server = 0
        self.bytes_to_client = 0
        self.replies_dropped = 0
        self.requests_cut = 0
        self.resets = 0
        self.matches = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._loop = asyncio.get_running_loop()
        await self._serve(self._bind())
        return self

    def _bind(self) -> socket.socket:
        """Listen synchronously, so a connection made right after `accept()` is queued by the
        kernel rather than refused while the asyncio server is being set up."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        return sock

    async def _serve(self, sock: socket.socket) -> None:
        server = await asyncio.start_server(self._accept, sock=sock)
        if self._sock is sock:
            self._server = server
        else:  # refused again meanwhile
            server.close()

    async def stop(self) -> None:
        self._stopped = True
        if self._relisten is not None:
            self._relisten.cancel()
        self._close_listener()
        for link in list(self._links):
            self._close(link, reset=True)
        tasks = [task for link in list(self._links) for task in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        """A redis:// URL through the proxy (for the store link)."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def http_url(self) -> str:
        """An http:// URL through the proxy (for the upstream link)."""
        return f"http://{self.host}:{self.port}"

    @property
    def connections_open(self) -> int:
        return sum(1 for link in list(self._links) if not link.closed)

    # -- faults (callable from any thread) -----------------------------------------------------

    def pass_through(self) -> None:
        """Forward faithfully again: no latency, no stall, no refusal, no armed rule, no split.
        (Connections refused with "unlisten" listen again.)"""
        with self._lock:
            self.latency = 0.0
            self.stall_until = 0.0
            self.split_chunk = 0
            self.split_delay = 0.0
            self._drop_rules.clear()
            self._cut_rules.clear()
        self.accept()

    def set_latency(self, seconds: float) -> None:
        """Deliver each server->client chunk `seconds` after it arrived (0 = off)."""
        with self._lock:
            self.latency = max(0.0, seconds)

    def stall(self, seconds: float) -> None:
        """Hold every reply byte until `seconds` from now, then deliver (commands still run)."""
        now = self._now()
        with self._lock:
            self.stall_until = max(self.stall_until, now + seconds)

    def unstall(self) -> None:
        """End a stall now: held replies go out within a few milliseconds."""
        with self._lock:
            self.stall_until = 0.0

    def drop_after_reply(self, match: Match | bytes | str | None = None, times: int = 1) -> None:
        """Arm: the next `times` requests satisfying `match` (any request if None) run on the
        server, and the reply that follows each is discarded and its connection closed."""
        with self._lock:
            self._drop_rules.append(_Rule(_as_match(match), times))

    def cut_request(
        self, marker: bytes | str, *, match: Match | None = None, times: int = 1
    ) -> None:
        """Arm: the next `times` requests holding `marker` (and satisfying `match`, if given)
        are forwarded only up to the start of the RESP command holding `marker`: earlier
        commands of the pipeline reach the server and run, that one and the rest never do;
        then the connection is closed."""
        raw = marker.encode() if isinstance(marker, str) else marker
        predicate = match or contains(raw)
        with self._lock:
            self._cut_rules.append(_Rule(lambda data: raw in data and predicate(data), times, raw))

    def armed(self) -> int:
        """Requests still to be hit by armed drop/cut rules."""
        with self._lock:
            return sum(rule.times for rule in (*self._drop_rules, *self._cut_rules))

    def reset_all(self) -> None:
        """Reset every open connection now (RST to the client; the server side is closed)."""
        self._in_loop(self._reset_all)

    def refuse(self, seconds: float | None, how: str = "close") -> None:
        """Refuse new connections for `seconds` (None: until `accept()`): "close" (accept and
        close), "reset" (accept and RST) or "unlisten" (connection refused)."""
        if how not in ("close", "reset", "unlisten"):
            raise ValueError(f"unknown refusal {how!r}")
        now = self._now()
        with self._lock:
            self.refuse_until = None if seconds is None else now + seconds
            self.refuse_how = how
        if how == "unlisten":
            self._in_loop(lambda: self._unlisten(seconds))

    def accept(self) -> None:
        """Take new connections again (ends `refuse`)."""
        with self._lock:
            self.refuse_until = 0.0
        self._in_loop(self._listen_again)

    def split_writes(self, chunk: int, delay: float = 0.0) -> None:
        """Cut every write into `chunk`-byte pieces, `delay` seconds apart (chunk 0 = off)."""
        with self._lock:
            self.split_chunk = max(0, chunk)
            self.split_delay = max(0.0, delay)

    # -- waiting (from the test's loop, whichever loop the proxy runs in) -----------------------

    async def wait_until(
        self,
        condition: Callable[[FaultProxy], bool],
        timeout: float = 5.0,
        what: str = "condition",
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"fault proxy: no {what} within {timeout}s ({self.counts()})")
            await asyncio.sleep(0.005)

    def counts(self) -> dict[str, int]:
        return {
            "connections_total": self.connections_total,
            "connections_open": self.connections_open,
            "connections_refused": self.connections_refused,
            "bytes_to_server": self.bytes_to_server,
            "bytes_to_client": self.bytes_to_client,
            "replies_dropped": self.replies_dropped,
            "requests_cut": self.requests_cut,
            "resets": self.resets,
            "matches": self.matches,
        }

    # -- internals -------------------------------------------------------------------------------

    def _now(self) -> float:
        # The proxy loop's clock (monotonic on every platform asyncio supports).
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _in_loop(self, action: Callable[[], Any]) -> None:
        """Run `action` on the proxy's loop, now if we are on it, else wait for it to run."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("fault proxy not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            result = action()
            if asyncio.iscoroutine(result):
                loop.create_task(result)
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                result = action()
                if asyncio.iscoroutine(result):
                    task = loop.create_task(result)
                    task.add_done_callback(lambda _t: done.set_result(None))
                    return
                done.set_result(None)
            except Exception as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        done.result(10)

    def _refusing(self) -> bool:
        with self._lock:
            until = self.refuse_until
        return until is None or self._now() < until

    def _take(self, rules: list[_Rule], window: bytes) -> _Rule | None:
        with self._lock:
            for rule in rules:
                if rule.times > 0 and rule.match(window):
                    rule.times -= 1
                    if rule.times == 0:
                        rules.remove(rule)
                    self.matches += 1
                    return rule
        return None

    def _close_listener(self) -> None:
        """Stop accepting: close the server, or the bare socket it listened on."""
        server, self._server = self._server, None
        sock, self._sock = self._sock, None
        if server is not None:
            server.close()
        elif sock is not None:
            sock.close()

    def _unlisten(self, seconds: float | None) -> None:
        self._close_listener()
        if self._relisten is not None:
            self._relisten.cancel()
            self._relisten = None
        if seconds is not None and self._loop is not None:
            self._relisten = self._loop.call_later(seconds, self._listen_again)

    def _listen_again(self) -> None:
        if self._relisten is not None:
            self._relisten.cancel()
            self._relisten = None
        if self._sock is None and not self._stopped and self._loop is not None:
            task = self._loop.create_task(self._serve(self._bind()))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def _reset_all(self) -> None:
        for link in list(self._links):
            if not link.closed:
                self.resets += 1
                self._close(link, reset=True)

    def _close(self, link: _Link, *, reset: bool = False) -> None:
        if link.closed:
            return
        link.closed = True
        for writer in (link.client_writer, link.server_writer):
            if writer is None:
                continue
            if reset:
                _set_linger_zero(writer)
            with contextlib.suppress(Exception):
                writer.close()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing():
            self.connections_refused += 1
            if self.refuse_how == "reset":
                _set_linger_zero(writer)
            writer.close()
            return
        self.connections_total += 1
        self._links.add(link := _Link(self.connections_total, reader, writer))
        try:
            try:
                link.server_reader, link.server_writer = await asyncio.open_connection(*self.target)
            except OSError:
                self._close(link, reset=True)
                return
            if link.closed:  # reset while connecting
                link.server_writer.close()
                return
            link.tasks = [
                asyncio.ensure_future(self._pump_requests(link)),
                asyncio.ensure_future(self._read_replies(link)),
                asyncio.ensure_future(self._deliver_replies(link)),
            ]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._close(link)
            self._links.discard(link)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        with self._lock:
            chunk, delay = self.split_chunk, self.split_delay
        if chunk <= 0:
            writer.write(data)
        else:
            for start in range(0, len(data), chunk):
                writer.write(data[start : start + chunk])
                await writer.drain()
                if delay:
                    await asyncio.sleep(delay)
        await writer.drain()

    async def _pump_requests(self, link: _Link) -> None:
        assert link.server_writer is not None
        try:
            async for data in _chunks(link, link.client_reader):
                link.window += data
                if len(link.window) > _MAX_REQUEST_WINDOW:
                    del link.window[: len(link.window) - _MAX_REQUEST_WINDOW]
                window = bytes(link.window)
                rule = self._take(self._cut_rules, window) if self._cut_rules else None
                if rule is not None:
                    # Forward up to the RESP array holding the marker, then hang up.
                    already = len(window) - len(data)
                    cut = _command_start(window, window.find(rule.marker)) - already
                    if cut > 0:
                        await self._write(link.server_writer, data[:cut])
                        self.bytes_to_server += cut
                    self.requests_cut += 1
                    link.window.clear()
                    # Give the server the time to read and run what was forwarded.
                    await asyncio.sleep(0.05)
                    self._close(link)
                    return
                if not link.doomed and self._drop_rules and self._take(self._drop_rules, window):
                    # The reply that comes next is the one lost.
                    link.doomed = True
                    link.window.clear()
                await self._write(link.server_writer, data)
                self.bytes_to_server += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if not link.closed:
                self._close(link)

    async def _read_replies(self, link: _Link) -> None:
        assert link.server_reader is not None
        try:
            async for data in _chunks(link, link.server_reader):
                if link.doomed:
                    self.replies_dropped += 1
                    self._close(link)
                    return
                link.window.clear()  # answered: later matches look at later requests
                link.replies.put_nowait((self._now(), data))
        except OSError:
            pass
        # the server hung up: deliver what is queued, then close
        link.replies.put_nowait((self._now(), b""))

    async def _deliver_replies(self, link: _Link) -> None:
        try:
            while not link.closed:
                arrived, data = await link.replies.get()
                await self._hold(arrived)
                if link.closed:
                    return
                if not data:
                    break
                await self._write(link.client_writer, data)
                self.bytes_to_client += len(data)
        except OSError:
            pass
        finally:
            self._close(link)

    async def _hold(self, arrived: float) -> None:
        while True:
            with self._lock:
                target = max(arrived + self.latency, self.stall_until)
            wait = target - self._now()
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, _HOLD_SLICE))


async def _chunks(link: _Link, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """What `reader` receives, chunk by chunk, until its peer hangs up or the link is closed."""
    while not link.closed:
        data = await reader.read(_READ_SIZE)
        if not data:
            return
        yield data


def _command_start(window: bytes, position: int) -> int:
    """Where the RESP command (`*<n>\\r\\n...`) holding `position` starts: the last array
    header before it (a bulk string's `$<len>\\r\\n` header holds no `*`)."""
    if position <= 0:
        return 0
    start = window.rfind(b"\r\n*", 0, position)
    if start >= 0:
        return start + 2
    return 0 if window.startswith(b"*") else position


class ThreadedFaultProxy(FaultProxy):
    """A FaultProxy on its own thread and loop: `start()`/`stop()` are plain calls, every
    fault method works from the caller's thread (e.g. with a subprocess as the client)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._thread: threading.Thread | None = None
        self._own_loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> ThreadedFaultProxy:  # type: ignore[override]
        loop = asyncio.new_event_loop()
        self._own_loop = loop
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            asyncio.set_event_loop(loop)

            async def begin() -> None:
                await FaultProxy.start(self)

            try:
                loop.run_until_complete(begin())
            except BaseException as exc:
                ready.set_exception(exc)
                return
            ready.set_result(None)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    def stop(self) -> None:  # type: ignore[override]
        loop, thread = self._own_loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(FaultProxy.stop(self), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> ThreadedFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
