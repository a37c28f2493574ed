"""The Redis Lua scripts shipped beside the code (server/storage/lua/)."""

from __future__ import annotations

from importlib import resources


def source(name: str) -> str:
    """The text of lua/`name`."""
    return (resources.files("server.storage") / "lua" / name).read_text()
