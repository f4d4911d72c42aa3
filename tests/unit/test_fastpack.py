"""hiredis packing must produce byte-for-byte what redis-py's own packer produces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, ConnectionPool, UnixDomainSocketConnection

from proxy.store.fastpack import use_hiredis_packing

ARG = st.one_of(st.text(), st.binary(), st.integers(min_value=-(2**63), max_value=2**63 - 1))


@given(st.sampled_from(["EVALSHA", "SET", "SCRIPT LOAD", "HGETALL"]), st.lists(ARG, max_size=12))
def test_same_bytes_as_redis_py(command, args):
    plain = ConnectionPool(connection_class=Connection)
    fast = ConnectionPool(connection_class=Connection)
    use_hiredis_packing(fast)
    expected = b"".join(plain.connection_class().pack_command(command, *args))
    assert b"".join(fast.connection_class().pack_command(command, *args)) == expected


def test_every_connection_kind_keeps_its_own_class():
    pool = ConnectionPool(connection_class=UnixDomainSocketConnection, path="/tmp/x.sock")
    use_hiredis_packing(pool)
    use_hiredis_packing(pool)  # idempotent
    assert issubclass(pool.connection_class, UnixDomainSocketConnection)
    assert pool.connection_class.__mro__.count(UnixDomainSocketConnection) == 1
