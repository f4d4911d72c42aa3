"""The aiohttp shell: middleware, forwarding, guarded sends, app wiring (`app.py`) and the
process lifecycle with the admin listener (`run.py`, imported by the CLI)."""
