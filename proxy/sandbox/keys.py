"""Typed keys for what the sandbox keeps on its app and on each request."""

from __future__ import annotations

import asyncio

from aiohttp import web

from proxy.sandbox.auth import Credentials
from proxy.sandbox.callbacks import CallbackSender
from proxy.sandbox.state import SandboxState

SANDBOX_STATE = web.AppKey("sandbox_state", SandboxState)
CALLBACK_SENDER = web.AppKey("sandbox_callback_sender", CallbackSender)
# Set on shutdown so held (delayed / hung) requests let the server stop promptly.
STOPPING = web.AppKey("sandbox_stopping", asyncio.Event)

REQUEST_STARTED = web.RequestKey("sandbox_request_started", float)
REQUEST_FORM = web.RequestKey("sandbox_request_form", list[tuple[str, str]])
REQUEST_AUTH = web.RequestKey("sandbox_request_auth", Credentials)
