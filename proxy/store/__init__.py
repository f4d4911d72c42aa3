"""Redis state: key names, Lua scripts, the store API and the embedded server."""
