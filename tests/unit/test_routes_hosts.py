"""Guarded-route matching and upstream host selection (the no-open-relay rule)."""

import pytest

from proxy.errors import UpstreamRefused
from proxy.guard.routes import RouteSpec, RouteTable
from proxy.upstream.hosts import Upstream, select_upstream
from tests.identities import ACCOUNT

TABLE = RouteTable(
    [
        RouteSpec("messages", "POST", "/2010-04-01/Accounts/{AccountSid}/Messages.json", 600),
        RouteSpec("calls", "POST", "/2010-04-01/Accounts/{AccountSid}/Calls.json", 60),
    ]
)


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json", "messages"),
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages", "messages"),
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.xml", "messages"),
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/messages.JSON", "messages"),
        ("POST", f"//2010-04-01//Accounts/{ACCOUNT}/Messages.json/", "messages"),
        ("post", f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json", "calls"),
        ("GET", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json", None),
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages/SM123.json", None),
        ("POST", "/2010-04-01/Accounts/ACnothex/Messages.json", None),
        ("POST", f"/2010-04-01/Accounts/{ACCOUNT}/Messages.jsonx", None),
    ],
)
def test_route_matching(method, path, route):
    match = TABLE.match(method, path)
    assert (match.route.name if match else None) == route
    if match:
        assert match.account_sid.lower() == ACCOUNT.lower()


TWILIO = Upstream.from_url("https://api.twilio.com")
ALLOW = ["*.twilio.com"]


@pytest.mark.parametrize(
    ("header", "origin"),
    [
        (None, "https://api.twilio.com"),
        ("api.twilio.com", "https://api.twilio.com"),
        ("API.Twilio.com", "https://api.twilio.com"),
        ("api.sydney.au1.twilio.com", "https://api.sydney.au1.twilio.com"),
        ("messaging.twilio.com:443", "https://messaging.twilio.com"),
        ("api.twilio.com:443", "https://api.twilio.com"),
    ],
)
def test_allowed_upstreams(header, origin):
    assert select_upstream(header, TWILIO, ALLOW).origin == origin


@pytest.mark.parametrize(
    "header",
    [
        "evil.com",
        "twilio.com.evil.com",
        "eviltwilio.com",
        "twilio.com",
        "api.twilio.com.",
        "api.twilio.com/evil",
        "api.twilio.com@evil.com",
        "http://api.twilio.com",
        "127.0.0.1",
        "[::1]",
        "api.twilio.com:99999",
        "api.twilio.com:0",
        "verify.twilio.com:8443",  # allowlisted hosts are reached on 443 only
        "api.twilio.com:80",
        "api.twilio.com:8080",
        "messaging.twilio.com:22",
        "api.twilio.com:0443x",
        "",
        "a" * 300 + ".twilio.com",
    ],
)
def test_refused_upstreams(header):
    with pytest.raises(UpstreamRefused):
        select_upstream(header, TWILIO, ALLOW)


def test_default_upstream_keeps_its_scheme_when_named():
    local = Upstream.from_url("http://127.0.0.1:9000")
    assert select_upstream("127.0.0.1:9000", local, ["127.0.0.1"]).origin == "http://127.0.0.1:9000"


def test_the_sandbox_pins_every_allowed_host_to_itself():
    sandbox = Upstream("http", "127.0.0.1", 9000)
    for header in ("api.twilio.com", "api.sydney.au1.twilio.com:443"):
        assert select_upstream(header, sandbox, ALLOW, pinned=True) is sandbox
    with pytest.raises(UpstreamRefused):  # the allowlist still applies
        select_upstream("evil.example.com", sandbox, ALLOW, pinned=True)


@pytest.mark.parametrize("header", ["127.0.0.1:9001", "127.0.0.1:80", "127.0.0.1:6379"])
def test_the_default_host_on_another_port_is_refused(header):
    """Only the configured default upstream, exactly host:port, may be on a port other than 443:
    an allowlist naming a local host opens no other local port."""
    local = Upstream.from_url("http://127.0.0.1:9000")
    with pytest.raises(UpstreamRefused):
        select_upstream(header, local, ["127.0.0.1"])


def test_a_default_upstream_on_its_own_port_is_reached_as_configured():
    gateway = Upstream.from_url("https://api.twilio.com:8443")
    for header in ("api.twilio.com:8443", "api.twilio.com", "API.twilio.com:8443"):
        assert select_upstream(header, gateway, ALLOW) is gateway
    assert select_upstream("api.twilio.com:443", gateway, ALLOW).origin == "https://api.twilio.com"
    with pytest.raises(UpstreamRefused):
        select_upstream("api.twilio.com:9443", gateway, ALLOW)
    with pytest.raises(UpstreamRefused):
        select_upstream("messaging.twilio.com:8443", gateway, ALLOW)


def test_the_sandbox_refuses_other_ports_too():
    sandbox = Upstream("http", "127.0.0.1", 9000)
    with pytest.raises(UpstreamRefused):
        select_upstream("api.twilio.com:8443", sandbox, ALLOW, pinned=True)
