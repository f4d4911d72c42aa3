"""Keeping the developer's shell out of the tests: a stray SENDGUARD_* variable there must not
change a setting under test, in this process or in a child one."""

from __future__ import annotations

import os

import pytest

PREFIX = "SENDGUARD_"


def _ours(name: str) -> bool:
    return name.upper().startswith(PREFIX)


def clear_sendguard_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every SENDGUARD_* variable for this test (monkeypatch restores them after)."""
    for name in [name for name in os.environ if _ours(name)]:
        monkeypatch.delenv(name)


def env_without_sendguard() -> dict[str, str]:
    """This process's environment minus SENDGUARD_*: the base of a child process's env."""
    return {name: value for name, value in os.environ.items() if not _ours(name)}
