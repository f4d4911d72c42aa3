"""Real store servers for tests: a valkey-server process on a loopback TCP port.

Never a Python imitation of Redis. `SENDGUARD_TEST_REDIS_BINARY` picks another server binary
(e.g. Debian's redis-server); `SENDGUARD_TEST_REDIS_URL` points the suite at a running server.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from proxy.store.embedded import find_server_binary


def free_port(below: int = 65536) -> int:
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below:
            return port
    raise RuntimeError(f"no free port below {below}")


class ServerProcess:
    """One valkey/redis server on 127.0.0.1:<port>; stop() and start() again keep the port."""

    def __init__(self, *, cluster: bool = False) -> None:
        self.binary = os.environ.get("SENDGUARD_TEST_REDIS_BINARY") or find_server_binary()
        # A cluster node also listens on port + 10000 (the cluster bus).
        self.port = free_port(below=55535 if cluster else 65536)
        self.dir = Path(tempfile.mkdtemp(prefix="sendguard-test-redis-"))
        self.cluster = cluster
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            "--loglevel", "warning", "--logfile", str(self.dir / "server.log"),
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                    client.ping()
                    if self.cluster:
                        self._own_all_slots(client)
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)
        raise RuntimeError(f"{self.binary} did not start: {self._log_tail()}")

    def _own_all_slots(self, client: redis.Redis) -> None:
        """A one-node Redis Cluster: real slot checks (CROSSSLOT) with no orchestration."""
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" in text:
                return
            time.sleep(0.05)
        raise RuntimeError("single-node cluster did not become ok")

    def _log_tail(self) -> str:
        log = self.dir / "server.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
