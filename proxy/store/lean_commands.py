"""The lean client's vocabulary: commands, scripts, packing (hiredis, in C) and error replies.

Error classes subclass redis-py's own, so code that tests for `redis.exceptions.NoScriptError`
keeps working whichever client ran the command (proxy/store/lean.py says why there are two).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final, cast

import hiredis
from redis import exceptions as redis_exceptions

Arg = bytes | str | int | float | memoryview
Command = Sequence[Arg]  # e.g. (b"EVALSHA", sha, 2, key1, key2, arg1)

DEFAULT_PORT: Final = 6379


# -- errors ---------------------------------------------------------------------------------


class ResponseError(redis_exceptions.ResponseError):
    """An error reply from the server; the message is the server's own (`ERR …`, `WRONGTYPE …`)."""


class NoScriptError(ResponseError, redis_exceptions.NoScriptError):
    """NOSCRIPT: the server does not know this script (restarted, or SCRIPT FLUSH)."""


class LeanConnectionError(redis_exceptions.ConnectionError, OSError):
    """The link failed: no answer to this caller's commands, which may or may not have run."""


class LeanTimeoutError(LeanConnectionError):
    """No reply within the reply timeout (or no connection within the connect timeout)."""


class LeanAuthenticationError(LeanConnectionError):
    """The handshake (AUTH / SELECT / CLIENT SETNAME) was refused."""


def reply_error(message: str) -> Exception:
    """hiredis calls this for every error reply (only for errors: no cost on the others)."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


# -- scripts --------------------------------------------------------------------------------


class Script:
    """A Lua script by its SHA1: EVALSHA commands, and EVAL for the NOSCRIPT fallback."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str | bytes) -> None:
        self.source = source.encode() if isinstance(source, str) else source
        self.sha = hashlib.sha1(self.source, usedforsecurity=False).hexdigest().encode()

    def evalsha(self, keys: Sequence[Arg], args: Sequence[Arg] = ()) -> tuple[Arg, ...]:
        return (b"EVALSHA", self.sha, len(keys), *keys, *args)

    def eval(self, keys: Sequence[Arg], args: Sequence[Arg] = ()) -> tuple[Arg, ...]:
        return (b"EVAL", self.source, len(keys), *keys, *args)

    def call(self, keys: Sequence[Arg], args: Sequence[Arg] = ()) -> ScriptCall:
        return ScriptCall(self, keys, args)


class ScriptCall:
    """One run of a script in `execute_steps`: EVALSHA, re-run as EVAL on NOSCRIPT."""

    __slots__ = ("args", "keys", "script")

    def __init__(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg] = ()) -> None:
        self.script = script
        self.keys = keys
        self.args = args


Step = Command | ScriptCall


# hiredis' stub types the argument as a 1-tuple; it takes a tuple of any length.
pack_command = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)


def pack_commands(commands: Sequence[Command]) -> bytes:
    pack = pack_command
    return b"".join([pack(c if type(c) is tuple else tuple(c)) for c in commands])
