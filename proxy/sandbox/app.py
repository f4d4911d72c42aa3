"""The sandbox app: a network-free Twilio API 2010 for demos and the test suite's fake Twilio.

Every request is recorded before anything else (so tests see even the ones refused), then
routed (unknown → 404 20404), authenticated (HTTP Basic → else 401 20003), and handled.
Responses carry the headers real Twilio answers with.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, MultiDict

from proxy.sandbox import handlers
from proxy.sandbox.auth import authenticate
from proxy.sandbox.callbacks import CallbackSender
from proxy.sandbox.keys import (
    CALLBACK_SENDER,
    REQUEST_AUTH,
    REQUEST_FORM,
    REQUEST_STARTED,
    SANDBOX_STATE,
    STOPPING,
)
from proxy.sandbox.responses import SandboxError, new_sid, not_found
from proxy.sandbox.state import ReceivedRequest, SandboxState

ACCOUNT_PATH = "/2010-04-01/Accounts/{account_sid:AC[0-9a-fA-F]{32}}"
SID = "{sid:[A-Za-z0-9]+}"
_FORM_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "application/octet-stream"})
# Constant response headers of api.twilio.com (docs/twilio-facts.md#headers).
TWILIO_HEADERS = {
    "X-Home-Region": "us1",
    "X-Api-Domain": "api.twilio.com",
    "X-Powered-By": "AT-5000",
    "X-Shenanigans": "none",
}


def create_sandbox_app(state: SandboxState | None = None) -> web.Application:
    app = web.Application(middlewares=[_sandbox_middleware])
    app[SANDBOX_STATE] = state if state is not None else SandboxState()
    app[CALLBACK_SENDER] = CallbackSender(app[SANDBOX_STATE])
    app[STOPPING] = asyncio.Event()
    app.on_response_prepare.append(_add_twilio_headers)
    app.on_shutdown.append(_release_held_requests)
    app.cleanup_ctx.append(_close_callback_sender)
    app.router.add_routes(
        [
            web.post(f"{ACCOUNT_PATH}/Messages.json", handlers.create_message),
            web.get(f"{ACCOUNT_PATH}/Messages.json", handlers.list_messages),
            web.get(f"{ACCOUNT_PATH}/Messages/{SID}.json", handlers.fetch_message),
            web.post(f"{ACCOUNT_PATH}/Messages/{SID}.json", handlers.update_message_handler),
            web.delete(f"{ACCOUNT_PATH}/Messages/{SID}.json", handlers.delete_message),
            web.post(f"{ACCOUNT_PATH}/Calls.json", handlers.create_call),
            web.get(f"{ACCOUNT_PATH}/Calls/{SID}.json", handlers.fetch_call),
        ]
    )
    return app


async def start_sandbox(
    host: str = "127.0.0.1", port: int = 0, state: SandboxState | None = None
) -> tuple[web.AppRunner, str, SandboxState]:
    """Serve the sandbox on a real TCP port (0 = ephemeral); the caller cleans up the runner."""
    state = state if state is not None else SandboxState()
    runner = web.AppRunner(create_sandbox_app(state), shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    netloc_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{netloc_host}:{bound_port}", state


@web.middleware
async def _sandbox_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]
    request[REQUEST_STARTED] = time.monotonic()
    await _record(request, state)
    state.in_flight += 1
    try:
        if request.match_info.http_exception is not None:
            raise not_found(request.path)
        request[REQUEST_AUTH] = authenticate(
            request.headers.get(hdrs.AUTHORIZATION, ""), request.match_info["account_sid"]
        )
        return await handler(request)
    except SandboxError as error:
        return error.response()
    finally:
        state.in_flight -= 1


async def _record(request: web.Request, state: SandboxState) -> None:
    body = await request.read()
    form: list[tuple[str, str]] = []
    if body and request.content_type in _FORM_CONTENT_TYPES:
        form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    request[REQUEST_FORM] = form
    state.record_request(
        ReceivedRequest(
            method=request.method,
            path=request.path,
            query=MultiDict(request.query),
            headers=CIMultiDict(request.headers),
            form=form,
            body=body,
        )
    )


async def _add_twilio_headers(request: web.Request, response: web.StreamResponse) -> None:
    started = request.get(REQUEST_STARTED, time.monotonic())
    response.headers["Twilio-Request-Id"] = new_sid("RQ")
    response.headers["Twilio-Request-Duration"] = f"{time.monotonic() - started:.3f}"
    response.headers["Twilio-Concurrent-Requests"] = str(
        max(request.app[SANDBOX_STATE].in_flight, 1)
    )
    response.headers.update(TWILIO_HEADERS)


async def _release_held_requests(app: web.Application) -> None:
    app[STOPPING].set()


async def _close_callback_sender(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[CALLBACK_SENDER].close()
