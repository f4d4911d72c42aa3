"""The benchmark's child processes: start, pin, watch (CPU, event loop), stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.loadgen import ROOT, child_setup


class Children:
    """Every child process of the run; `stop_all` terminates them whatever happened."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], core: int | None) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDGUARD_")}
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children in order
            preexec_fn=child_setup(core),
        )
        self.procs[name] = proc
        return proc

    def wait_listening(self, name: str, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                break
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start listening on {port}:\n{self.log_tail(name)}")

    def log_tail(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]

    def cpu_seconds(self, name: str) -> float:
        fields = Path(f"/proc/{self.procs[name].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def event_loop(self, name: str) -> str:
        """`uvloop` when the process has uvloop's loop module mapped, else `asyncio`. Neither
        proxy imports uvloop unless it runs on it (proxy/server/eventloop.py)."""
        maps = Path(f"/proc/{self.procs[name].pid}/maps").read_text()
        return "uvloop" if "/uvloop/loop." in maps else "asyncio"

    def stop_all(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut this short
            signal.signal(signum, signal.SIG_IGN)
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pick_cores() -> tuple[int | None, int | None]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print("warning: fewer than 2 cores, nothing is pinned", file=sys.stderr)
        return None, None
    return cores[0], cores[1]
