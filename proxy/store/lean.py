"""A lean RESP client for the store's hot path: one multiplexed connection, hiredis in C.

Status: wired in. A guarded send's hot path on a standalone or embedded store runs on it
(lean_path.py, send_store.py; tests/store/test_lean_hot_path.py): the claim with its index
writes, the outcome write, release, mark-unknown, the record read and the account ceilings.
Cluster, sentinel and claims that WAIT for replicas (`store_min_replicas`) stay on redis-py, as
does everything off the hot path. Measured in bench/store_clients.py, tested against a real
server in tests/store/test_lean_client.py.

Why (docs/contract.md#budget, issue 14; numbers in bench/store_clients.py): a guarded send's
store calls are a few scripts a request, yet through redis-py each one pays for its Python
machinery: connection checkout, the retry wrapper, per-command response callbacks, a pipeline
object per batch and a task per flush (batching.AutoPipeline). This client keeps only what the
hot path needs:

- **one connection**, multiplexed: every caller's commands go out on it and the answers come
  back in order (RESP is strictly ordered per connection), matched to callers by a FIFO;
- **one socket write per loop turn**: commands submitted in the same turn of the event loop are
  packed (hiredis, in C) into one buffer, written by one callback scheduled with `call_soon`
  (no task, no lock); nothing waits to fill a batch, so a lone call leaves at once;
- **hiredis.Reader** parses the answers; each caller's future is resolved with its own replies.

Replies are what RESP2 carries, as redis-py returns them with `decode_responses=False` and no
response callbacks: bulk strings as `bytes`, integers as `int`, nil as `None`, arrays as
(nested) lists, status replies as `bytes` (`SET` answers `b"OK"`, not `True`). An error reply
is an exception *value* in `execute_batch` (like redis-py's `raise_on_error=False`):
`ResponseError`, or `NoScriptError` for NOSCRIPT; `execute` raises it. Both subclass redis-py's
own classes, so code that tests for `redis.exceptions.NoScriptError` keeps working.

Failures of the link itself raise `LeanConnectionError` (an `OSError`, and a redis-py
`ConnectionError`) in every caller whose answer has not arrived: the connection was lost, the
server closed it, a reply did not arrive within `reply_timeout` (`LeanTimeoutError`; the
connection is dropped, since later answers could no longer be matched: the callers behind it
whose own time was not up get a plain LeanConnectionError), or a connect/handshake
failed. A command whose caller got such an error may or may not have run (the store's scripts
are safe to run twice). The next call reconnects (lazily: no background task, no backoff; the
store's prober paces reconnects while the server is away).

Not for blocking commands (WAIT, BLPOP, CLIENT PAUSE's victims…): on a multiplexed connection
every answer queued behind one waits with it (`WAIT` for `store_min_replicas` would hold all
sends' answers for up to its timeout; keep it on redis-py or a connection of its own). Not here
either: cluster slot routing (MOVED/ASK), sentinel discovery, pub/sub, RESP3. Those stay on
redis-py, which remains the client for everything off the hot path.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from proxy.store.lean_commands import (
    DEFAULT_PORT,
    Arg,
    Command,
    LeanAuthenticationError,
    LeanConnectionError,
    LeanTimeoutError,
    NoScriptError,
    ResponseError,
    Script,
    ScriptCall,
    Step,
    pack_command,
    pack_commands,
)
from proxy.store.lean_connection import LeanConnection, abort_transport

__all__ = [
    "DEFAULT_PORT",
    "Arg",
    "Command",
    "LeanAuthenticationError",
    "LeanClient",
    "LeanConnectionError",
    "LeanTimeoutError",
    "NoScriptError",
    "ResponseError",
    "Script",
    "ScriptCall",
    "Step",
]


# -- the client -----------------------------------------------------------------------------


class LeanClient:
    """A store client for the hot path: one multiplexed connection, made on first use and
    again on the first use after it was lost. Safe to share among all tasks of one loop.

    `connect_timeout` bounds connecting plus the handshake; `reply_timeout` bounds the wait
    for each command's reply, counted from when it was submitted (None: wait forever).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        unix_socket_path: str | None = None,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        ssl: ssl_module.SSLContext | None = None,
        client_name: str | None = None,
        connect_timeout: float = 5.0,
        reply_timeout: float | None = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        self.unix_socket_path = unix_socket_path
        self.username = username
        self.password = password
        self.db = db
        self.ssl = ssl
        self.client_name = client_name
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.where = unix_socket_path or f"{host}:{port}"
        self._connection: LeanConnection | None = None
        self._connecting: asyncio.Task[LeanConnection] | None = None
        self._closed = False
        self.connects = 0  # connections made (the first one included)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> LeanClient:
        """`redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS: the default
        context; `?ssl_cert_reqs=none|optional|required&ssl_ca_certs=FILE` as redis-py reads
        them), `unix:///path/to.sock[?db=N&password=…]`; `options` as for the class."""
        parts = urlsplit(url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        scheme = parts.scheme.lower()
        settings: dict[str, Any] = {}
        if parts.username:
            settings["username"] = unquote(parts.username)
        if parts.password is not None:
            settings["password"] = unquote(parts.password)
        if "password" in query:
            settings["password"] = query["password"]
        if "username" in query:
            settings["username"] = query["username"]
        if scheme == "unix":
            settings["unix_socket_path"] = unquote(parts.path)
            db = query.get("db", "0")
        elif scheme in ("redis", "rediss", "valkey", "valkeys"):
            settings["host"] = parts.hostname or "127.0.0.1"
            settings["port"] = parts.port or DEFAULT_PORT
            db = parts.path.lstrip("/") or query.get("db", "0")
            if scheme in ("rediss", "valkeys"):
                settings["ssl"] = _tls_context(query)
        else:
            raise ValueError(f"not a redis URL: {scheme}://")
        settings["db"] = int(db)
        if settings.get("username") == "":
            del settings["username"]
        settings.update(options)
        return cls(**settings)

    @classmethod
    def like(cls, client: Any, **options: Any) -> LeanClient:
        """A lean client to the same server, with the same credentials, db, TLS settings and
        timeouts as a standalone redis-py asyncio client (`redis.asyncio.Redis`, as
        `store_client` makes it); `options` override. ValueError for what this client does
        not do (sentinel-managed or cluster clients, credential providers): keep redis-py."""
        from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
        from redis.asyncio.sentinel import SentinelManagedConnection

        pool = getattr(client, "connection_pool", None)
        if pool is None:
            raise ValueError(f"not a standalone redis-py client: {type(client).__name__}")
        kind = pool.connection_class
        kwargs: dict[str, Any] = pool.connection_kwargs
        if issubclass(kind, SentinelManagedConnection):
            raise ValueError("sentinel-managed connections are not supported")
        if kwargs.get("credential_provider") is not None:
            raise ValueError("credential providers are not supported")
        settings: dict[str, Any] = {
            "username": kwargs.get("username"),
            "password": kwargs.get("password"),
            "db": int(kwargs.get("db") or 0),
            "client_name": kwargs.get("client_name"),
        }
        if kwargs.get("socket_connect_timeout") is not None:
            settings["connect_timeout"] = kwargs["socket_connect_timeout"]
        settings["reply_timeout"] = kwargs.get("socket_timeout")
        if issubclass(kind, UnixDomainSocketConnection):
            settings["unix_socket_path"] = kwargs["path"]
        else:
            settings["host"] = kwargs.get("host", "localhost")
            settings["port"] = int(kwargs.get("port", DEFAULT_PORT))
            if issubclass(kind, SSLConnection):
                query: dict[str, str] = {}
                if kwargs.get("ssl_ca_certs"):
                    query["ssl_ca_certs"] = str(kwargs["ssl_ca_certs"])
                reqs = kwargs.get("ssl_cert_reqs")
                if isinstance(reqs, ssl_module.VerifyMode):
                    reqs = {ssl_module.CERT_NONE: "none", ssl_module.CERT_OPTIONAL: "optional"}.get(
                        reqs, "required"
                    )
                if reqs is not None:
                    query["ssl_cert_reqs"] = str(reqs)
                context = _tls_context(query)
                if kwargs.get("ssl_check_hostname") is False:
                    context.check_hostname = False
                if kwargs.get("ssl_certfile"):
                    context.load_cert_chain(kwargs["ssl_certfile"], kwargs.get("ssl_keyfile"))
                settings["ssl"] = context
        settings.update(options)
        return cls(**settings)

    # -- commands --------------------------------------------------------------------------

    async def execute_batch(self, commands: Sequence[Command]) -> list[Any]:
        """The replies to `commands`, in order, errors as values; the commands leave in this
        loop turn's write together with every other caller's. Raises LeanConnectionError."""
        count = len(commands)
        if count == 1:
            command = commands[0]
            payload = pack_command(command if type(command) is tuple else tuple(command))
        elif count:
            payload = pack_commands(commands)
        else:
            return []
        connection = self._connection
        if connection is None or connection.lost is not None:
            connection = await self._connect_shared()
        return await connection.submit(payload, count)

    async def execute(self, *command: Arg) -> Any:
        """One command's reply; an error reply is raised."""
        (reply,) = await self.execute_batch((command,))
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    async def execute_steps(self, steps: Sequence[Step]) -> list[Any]:
        """Like `execute_batch`, with scripts among the commands: each `ScriptCall` goes as
        EVALSHA, and those answered NOSCRIPT run again as EVAL (one more round trip, after
        which the server knows the script). Other replies, errors included, stand as they were
        (re-running a plain command after the first batch's answer is the caller's call)."""
        commands: list[Command] = []
        scripted = False
        for step in steps:
            if isinstance(step, ScriptCall):
                commands.append(step.script.evalsha(step.keys, step.args))
                scripted = True
            else:
                commands.append(step)
        replies = await self.execute_batch(commands)
        if not scripted:
            return replies
        missing: list[tuple[int, ScriptCall]] = []
        for index, reply in enumerate(replies):
            if type(reply) is NoScriptError:
                step = steps[index]
                if isinstance(step, ScriptCall):
                    missing.append((index, step))
        if missing:
            again = await self.execute_batch([s.script.eval(s.keys, s.args) for _, s in missing])
            for (index, _), reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    async def run_script(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg] = ()
    ) -> Any:
        """One script's reply (EVALSHA, EVAL on NOSCRIPT); an error reply is raised."""
        (reply,) = await self.execute_steps((ScriptCall(script, keys, args),))
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    # -- the connection --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.lost is None

    @property
    def pending(self) -> int:
        """Commands' callers still waiting for answers on the current connection."""
        return self._connection.pending if self._connection is not None else 0

    async def connect(self) -> None:
        """Connect now (otherwise the first command does); raises LeanConnectionError."""
        if not self.connected:
            await self._connect_shared()

    async def drain(self) -> None:
        """Until every answer asked for so far has arrived (before `aclose`)."""
        if self._connection is not None:
            await self._connection.wait_idle()

    async def aclose(self) -> None:
        """Close the connection; callers still waiting get LeanConnectionError, later calls
        too (a closed client does not reconnect)."""
        self._closed = True
        connecting = self._connecting
        if connecting is not None:
            # not cancelled: other callers share it; it sees `_closed` and closes what it made
            await asyncio.wait([connecting])
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> LeanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _connect_shared(self) -> LeanConnection:
        """The current connection, or one made now: concurrent callers share one attempt."""
        if self._closed:
            raise LeanConnectionError(f"{self.where}: client closed")
        connection = self._connection
        if connection is not None and connection.lost is None:
            return connection
        task = self._connecting
        if task is None or task.done():  # (a finished attempt is never reused: a fresh one)
            task = asyncio.get_running_loop().create_task(self._connect())
            task.add_done_callback(self._connect_done)
            self._connecting = task
        # shielded: a caller that gives up does not cancel the others' attempt
        return await asyncio.shield(task)

    def _connect_done(self, task: asyncio.Task[LeanConnection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved: an attempt nobody awaits any more logs nothing

    async def _connect(self) -> LeanConnection:
        loop = asyncio.get_running_loop()
        where = self.where
        transport: asyncio.BaseTransport | None = None

        def factory() -> LeanConnection:
            return LeanConnection(loop, self.reply_timeout, where)

        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.unix_socket_path is not None:
                    transport, connection = await loop.create_unix_connection(
                        factory, self.unix_socket_path
                    )
                else:
                    transport, connection = await loop.create_connection(
                        factory,
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=self.host if self.ssl is not None else None,
                    )
                handshake = self._handshake()
                if handshake:
                    replies = await connection.submit(pack_commands(handshake), len(handshake))
                    for command, reply in zip(handshake, replies, strict=True):
                        if isinstance(reply, Exception):  # (never the password in a message)
                            name = command[0].decode()
                            raise LeanAuthenticationError(f"{where}: {name} refused: {reply}")
        except LeanConnectionError:
            abort_transport(transport)
            raise
        except TimeoutError:
            abort_transport(transport)
            raise LeanTimeoutError(
                f"{where}: no connection within {self.connect_timeout}s"
            ) from None
        except OSError as exc:
            abort_transport(transport)
            raise LeanConnectionError(f"{where}: connect failed: {exc}") from exc
        except BaseException:
            abort_transport(transport)
            raise
        if self._closed:
            await connection.close()
            raise LeanConnectionError(f"{where}: client closed")
        self.connects += 1
        self._connection = connection
        return connection

    def _handshake(self) -> list[tuple[bytes, *tuple[Arg, ...]]]:
        commands: list[tuple[bytes, *tuple[Arg, ...]]] = []
        if self.password is not None:
            if self.username:
                commands.append((b"AUTH", self.username, self.password))
            else:
                commands.append((b"AUTH", self.password))
        if self.db:
            commands.append((b"SELECT", self.db))
        if self.client_name:
            commands.append((b"CLIENT", b"SETNAME", self.client_name))
        return commands


def _tls_context(query: dict[str, str]) -> ssl_module.SSLContext:
    """The default context, with redis-py's URL options `ssl_ca_certs` and `ssl_cert_reqs`
    (`required` by default, `optional`, or `none`: no verification, no hostname check)."""
    context = ssl_module.create_default_context(cafile=query.get("ssl_ca_certs"))
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs == "none":
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
    elif reqs == "optional":
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_OPTIONAL
    elif reqs != "required":
        raise ValueError(f"ssl_cert_reqs must be required, optional or none, not {reqs!r}")
    return context
