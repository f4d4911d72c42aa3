"""The event loop: uvloop when installed, plain asyncio otherwise, chosen once by `serve`."""

from __future__ import annotations

import asyncio
import sys

import pytest

from proxy.server import eventloop, run
from proxy.settings import Settings


def test_uvloop_is_chosen_when_installed():
    uvloop = pytest.importorskip("uvloop", reason="uvloop is a dependency on Linux and macOS")
    name, factory = eventloop.choose_loop()
    assert (name, factory) == ("uvloop", uvloop.new_event_loop)


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop has no Windows build")
def test_uvloop_is_installed_where_it_is_a_dependency():
    # pyproject.toml: `uvloop; sys_platform != 'win32'`; a venv without it runs the slow loop.
    assert eventloop.choose_loop()[0] == "uvloop"


def test_plain_asyncio_without_uvloop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert eventloop.choose_loop() == ("asyncio", None)
    with asyncio.Runner(loop_factory=None) as runner:
        assert runner.run(_running_loop_name()) == "asyncio"


def test_running_loop_name_says_uvloop_on_a_uvloop_loop():
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(_running_loop_name()) == "uvloop"


@pytest.mark.parametrize("installed", [True, False])
def test_serve_runs_on_the_chosen_loop(monkeypatch, installed):
    if installed:
        pytest.importorskip("uvloop")
    else:
        monkeypatch.setitem(sys.modules, "uvloop", None)
    seen: list[str] = []

    async def fake_run_until_signalled(settings: Settings) -> int:
        seen.append(eventloop.running_loop_name())
        return 0

    monkeypatch.setattr(run, "run_until_signalled", fake_run_until_signalled)
    monkeypatch.setattr(run, "configure_logging", lambda level, fmt: None)
    assert run.serve(Settings()) == 0
    assert seen == ["uvloop" if installed else "asyncio"]


async def _running_loop_name() -> str:
    return eventloop.running_loop_name()
