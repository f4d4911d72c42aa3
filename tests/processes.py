"""A real `sendguard serve` process for the tests that need one (kill -9, SIGTERM, log capture).

One launcher for every test tier: it picks free ports, starts `python -m proxy serve` with the
arguments given, and returns once the admin port answers `/readyz` 200 (or, with
`ready=False`, once the proxy port accepts a connection: a store that is down keeps
`/readyz` at 503 by design).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from tests.servers import free_port

START_SECONDS = 20


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    url: str  # the proxy port
    admin_url: str


async def start_serve(
    *args: str,
    ready: bool = True,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
    log_level: str = "warning",
) -> ServeProcess:
    """`args` are `sendguard serve` flags (--upstream, --redis-url, …); listen addresses are
    chosen here. `capture` pipes stdout/stderr (a test that reads the logs must drain them)."""
    port, admin_port = free_port(), free_port()
    pipe = asyncio.subprocess.PIPE if capture else None
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve",
        "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}",
        "--log-level", log_level, *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe,
        env=dict(env) if env is not None else None,
    )  # fmt: skip
    started = ServeProcess(process, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}")
    probe = started.admin_url + "/readyz" if ready else started.url + "/start-probe"
    deadline = time.monotonic() + START_SECONDS
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert process.returncode is None, "sendguard exited during startup"
            try:
                async with session.get(probe) as answer:
                    if not ready or answer.status == 200:
                        return started
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    process.kill()
    await process.wait()
    raise RuntimeError("sendguard did not start")
