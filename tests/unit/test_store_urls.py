"""Store URL forms (SPEC §1): standalone, cluster seeds, Sentinel; and what store_min_replicas
accepts. Pure parsing: the topologies themselves are in test_sentinel.py / test_cluster_*.py."""

from __future__ import annotations

import pytest

from proxy.config_values import check_redis_url, parse_sentinel_url
from proxy.settings import ConfigError, load_settings


def test_a_sentinel_url_names_every_sentinel_the_master_and_the_credentials():
    target = parse_sentinel_url("redis+sentinel://app:s%40cret@s1:26379,s2:26380/mymaster/2")
    assert target.sentinels == (("s1", 26379), ("s2", 26380))
    assert (target.master, target.db, target.username, target.password, target.tls) == (
        "mymaster", 2, "app", "s@cret", False,
    )  # fmt: skip
    assert parse_sentinel_url("rediss+sentinel://s1:1/m").tls
    assert parse_sentinel_url("redis+sentinel://:pw@s1:1/m").password == "pw"


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379",  # no master
        "redis+sentinel://s1/m",  # no port
        "redis+sentinel://s1:99999/m",
        "redis+sentinel://s1:1/m/x",  # db not a number
        "redis+sentinel://s1:1/m/0/extra",
    ],
)
def test_malformed_sentinel_urls_are_refused(url):
    with pytest.raises(ValueError):
        check_redis_url(url)


def test_cluster_seeds_are_checked_one_by_one():
    assert check_redis_url("redis://a:1, redis://b:2") == "redis://a:1,redis://b:2"
    with pytest.raises(ValueError):
        check_redis_url("redis://a:1,,redis://b:2")
    with pytest.raises(ValueError):
        check_redis_url("redis://a:1,unix:///tmp/s")


def test_min_replicas_needs_a_replicated_non_cluster_store():
    assert load_settings(redis_url="redis://r:6379/0", store_min_replicas=1).store_min_replicas == 1
    with pytest.raises(ConfigError, match="store_min_replicas"):
        load_settings(redis_url="redis://r:6379", redis_cluster=True, store_min_replicas=1)
    with pytest.raises(ConfigError, match="store_min_replicas"):
        load_settings(store_min_replicas=1)
