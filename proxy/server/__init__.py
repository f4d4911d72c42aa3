"""The aiohttp shell: middleware, forwarding, guarded sends, app wiring and process lifecycle."""

from proxy.server.app import create_app, serve

__all__ = ["create_app", "serve"]
