"""Running sendguard: the proxy and the admin listener in one process, until SIGTERM/SIGINT.

Graceful shutdown (Kubernetes sends SIGTERM, waits terminationGracePeriodSeconds, then
SIGKILL): `/readyz` turns 503 at once so no new traffic is routed here; the proxy stops
accepting connections; requests in flight get `shutdown_grace` to finish and record their
outcome; a send still running after that is cancelled, and the cancel marks its record
UNKNOWN before it lets go (never dropped, never resent). The admin port stays up to the end so
probes and /metrics keep answering while the proxy drains.

Start-up errors (a listen port in use or not available, the embedded store not starting) are
one line on stderr naming the setting to change, and exit code 2, as invalid configuration is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.admin.app import create_admin_app
from proxy.logs import configure_logging, get_logger
from proxy.server.app import METRICS, create_app
from proxy.server.eventloop import choose_loop, running_loop_name
from proxy.server.limits import admin_runner, proxy_runner, raise_open_file_limit
from proxy.store.embedded import EmbeddedStoreError

if TYPE_CHECKING:
    from proxy.settings import Settings

log = get_logger("sendguard")

EXIT_STARTUP_ERROR = 2  # as for invalid configuration (proxy/cli/settings_flags.py)


class StartupError(Exception):
    """sendguard cannot start; the message is one line that names the setting to change."""


class Lifecycle:
    """What `/readyz` reads: whether a stop has begun."""

    def __init__(self) -> None:
        self.stopping = False

    def shutting_down(self) -> bool:
        return self.stopping


async def run_until_signalled(settings: Settings) -> int:
    lifecycle = Lifecycle()
    # Both ports first, before anything starts: a port in use is one clear line, at once.
    listeners = bind_listeners(settings)
    raise_open_file_limit()  # before the connection cap is sized against it
    app = create_app(settings)
    # Client limits (connection cap, head/body/idle deadlines): proxy/server/limits.py.
    runner = proxy_runner(app, settings, app[METRICS], shutdown_timeout=settings.shutdown_grace)
    try:
        await runner.setup()
    except EmbeddedStoreError as exc:
        _close(listeners)
        raise StartupError(_embedded_store_problem(settings, exc)) from None
    admin = admin_runner(create_admin_app(app, lifecycle.shutting_down), settings, app[METRICS])
    await admin.setup()
    try:
        proxy_sockets, admin_sockets = listeners
        for sock in proxy_sockets:
            await web.SockSite(runner, sock).start()
        for sock in admin_sockets:
            await web.SockSite(admin, sock).start()
        log.info("sendguard_started", listen=str(settings.listen),
                 admin_listen=str(settings.admin_listen), loop=running_loop_name(),
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
    _, loop_factory = choose_loop()  # once, for the whole process (proxy/server/eventloop.py)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run_until_signalled(settings))
    except StartupError as exc:
        print(f"sendguard: {exc}", file=sys.stderr)
        return EXIT_STARTUP_ERROR


# -- start-up errors --------------------------------------------------------------------------

Listeners = tuple[list[socket.socket], list[socket.socket]]


def bind_listeners(settings: Settings) -> Listeners:
    """The proxy's and the admin port's listening sockets (one per address the host resolves
    to, as asyncio's own create_server binds them), or StartupError naming the setting."""
    proxy = _bind("listen", settings.listen.host, settings.listen.port)
    try:
        admin = _bind("admin_listen", settings.admin_listen.host, settings.admin_listen.port)
    except StartupError:
        _close((proxy, []))
        raise
    return proxy, admin


def _bind(setting: str, host: str, port: int) -> list[socket.socket]:
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    named = f"{setting} ({'SENDGUARD_' + setting.upper()}, --{setting.replace('_', '-')})"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise StartupError(f"cannot listen on {where}: unknown host; check {named}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, address in dict.fromkeys(
            (family, kind, proto, address) for family, kind, proto, _, address in infos
        ):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"cannot listen on {where}: {_why(exc)}; check {named}") from None
    return sockets


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (another sendguard, or another server on that port)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this machine"
    return exc.strerror or type(exc).__name__


def _close(listeners: Listeners) -> None:
    for sock in (*listeners[0], *listeners[1]):
        with contextlib.suppress(OSError):
            sock.close()


def _embedded_store_problem(settings: Settings, exc: EmbeddedStoreError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[0] if lines else "unknown error"
    if len(lines) > 1:
        detail += f" ... {lines[-1]}"
    if settings.data_dir is not None:
        hint = "check data_dir (SENDGUARD_DATA_DIR)"
    else:
        hint = "or set redis_url (SENDGUARD_REDIS_URL) to a Redis of your own"
    return f"cannot start the embedded store: {detail}; {hint}"
