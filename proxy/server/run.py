"""Running sendguard: the proxy and the admin listener in one process, until SIGTERM/SIGINT.

Graceful shutdown (Kubernetes sends SIGTERM, waits terminationGracePeriodSeconds, then
SIGKILL): `/readyz` turns 503 at once so no new traffic is routed here; the proxy stops
accepting connections; requests in flight get `shutdown_grace` to finish and record their
outcome; a send still running after that is cancelled, and the cancel marks its record
UNKNOWN before it lets go (never dropped, never resent). The admin port stays up to the end so
probes and /metrics keep answering while the proxy drains.
"""

from __future__ import annotations

import asyncio
import signal
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.admin.app import create_admin_app
from proxy.logs import configure_logging, get_logger
from proxy.server.app import create_app

if TYPE_CHECKING:
    from proxy.settings import Settings

log = get_logger("sendguard")


class Lifecycle:
    """What `/readyz` reads: whether a stop has begun."""

    def __init__(self) -> None:
        self.stopping = False

    def shutting_down(self) -> bool:
        return self.stopping


async def run_until_signalled(settings: Settings) -> int:
    lifecycle = Lifecycle()
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=settings.shutdown_grace)
    await runner.setup()
    admin = web.AppRunner(
        create_admin_app(app, lifecycle.shutting_down), handle_signals=False, access_log=None
    )
    await admin.setup()
    try:
        await web.TCPSite(runner, settings.listen_host, settings.listen_port).start()
        await web.TCPSite(admin, settings.admin_listen_host, settings.admin_listen_port).start()
        log.info("sendguard_started", listen=settings.listen, admin_listen=settings.admin_listen,
                 settings=settings.redacted_dict())  # fmt: skip
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        lifecycle.stopping = True
        log.info("sendguard_stopping", grace_s=settings.shutdown_grace)
    finally:
        await runner.cleanup()  # stop accepting, drain within the grace, then cancel
        await admin.cleanup()
    log.info("sendguard_stopped")
    return 0


def serve(settings: Settings) -> int:
    configure_logging(settings.log_level, settings.effective_log_format)
    return asyncio.run(run_until_signalled(settings))
