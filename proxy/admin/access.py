"""What every admin handler reaches for: the proxy's runtime and settings, behind the keys the
admin app is built with (app.py)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.server.app import RUNTIME, SETTINGS, Runtime
from proxy.settings import Settings

PROXY_APP: web.AppKey[web.Application] = web.AppKey("proxy_app", web.Application)
SHUTTING_DOWN: web.AppKey[Callable[[], bool]] = web.AppKey("shutting_down")


def runtime_of(request: web.Request) -> Runtime:
    proxy_app = request.app[PROXY_APP]
    if RUNTIME not in proxy_app:
        raise web.HTTPServiceUnavailable(reason="sendguard is starting")
    return proxy_app[RUNTIME]


def settings_of(request: web.Request) -> Settings:
    return request.app[PROXY_APP][SETTINGS]


def error_response(status: int, message: str) -> web.Response:
    """The admin API's error shape: `{"error": {"status", "message"}}`, never a trace."""
    return web.json_response({"error": {"status": status, "message": message}}, status=status)
