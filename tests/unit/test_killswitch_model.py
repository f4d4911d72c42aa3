"""The pure kill switch model as tables: scope parsing (canonical form or a clear ValueError),
switch (de)serialisation, `match` (which switch stops which send), Retry-After, env parsing."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.killswitch.addresses import parse_sender, sender_key
from proxy.killswitch.model import (
    CONFIG_AUTHOR,
    CONFIG_REASON,
    DEFAULT_RETRY_AFTER,
    KillSwitch,
    SendAttributes,
    count_by_kind,
    match,
    parse_break_glass,
    parse_env_switches,
    retry_after,
)
from proxy.killswitch.scopes import GLOBAL, Scope, ScopeKind
from tests.identities import ACCOUNT as AC

NOW = 1_800_000_000.0
AC2 = "AC" + "f" * 32
MG = "MG" + "abcdef0123456789" * 2
HEX = "0123456789abcdef" * 2


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("global", "global"),
        ("  GLOBAL ", "global"),
        (f"account:{AC}", f"account:{AC}"),
        (f"account:ac{HEX.upper()}", f"account:{AC}"),  # SIDs case-folded like Twilio prints them
        (f"Account: {AC} ", f"account:{AC}"),
        (f"sender:{MG}", f"sender:{MG}"),
        ("sender:mg" + MG[2:].upper(), f"sender:{MG}"),
        ("sender:+14155550100", "sender:+14155550100"),
        ("sender:+1 (415) 555-0100", "sender:+14155550100"),
        ("sender:0044 20 7946 0000", "sender:+442079460000"),
        ("sender:12345", "sender:12345"),  # short code
        ("sender:123", "sender:123"),
        ("sender:MyBrand", "sender:MYBRAND"),  # alphanumeric sender ID
        ("sender:My Brand 1", "sender:MY BRAND 1"),
        ("sender:MGM", "sender:MGM"),  # a brand, not a Messaging Service
        ("recipient:+15550100000", "recipient:+15550100000"),
        ("recipient:+1 (555) 010-0000", "recipient:+15550100000"),  # as facts.py normalises To
        ("recipient:0044.20.7946.0000", "recipient:+442079460000"),
        ("prefix:+44", "prefix:+44"),
        ("prefix:+1", "prefix:+1"),
        ("prefix:+123456", "prefix:+123456"),
    ],
)
def test_scope_parses_to_canonical_text(text, canonical):
    scope = Scope.parse(text)
    assert str(scope) == canonical
    assert Scope.parse(canonical) == scope


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty scope"),
        ("   ", "empty scope"),
        ("everything", "unknown scope kind 'everything'"),
        ("global:yes", "takes no value"),
        ("account:", "needs a value"),
        ("account:AC123", "AC followed by 32 hex digits"),
        (f"account:MG{HEX}", "AC followed by 32 hex digits"),
        (f"account:AC{HEX}0", "AC followed by 32 hex digits"),
        (f"sender:MG{HEX[:-1]}x", "MG followed by 32 hex digits"),
        ("sender:14155550100", "leading '+'"),
        ("sender:+0123", "E.164"),
        ("sender:whatsapp:+14155550100", "channel prefix"),
        ("sender:TwelveChars1", "alphanumeric sender ID"),
        ("sender:12", "leading '+'"),
        ("sender:bad-id!", "alphanumeric sender ID"),
        ("recipient:15550100000", "E.164"),
        ("recipient:+1555010000012345", "E.164"),
        ("recipient:whatsapp:+15550100000", "channel prefix"),
        ("recipient:+1555abc", "E.164"),
        ("recipient:client:agent-1", "not a phone number"),  # no recipient scope for names
        ("recipient:sip:+15550100000@ex.com", "not a phone number"),
        ("recipient:client:+15550100000", "not a phone number"),
        ("prefix:44", "'+' and 1-6 digits"),
        ("prefix:+0", "not starting with 0"),
        ("prefix:+1234567", "'+' and 1-6 digits"),
        ("prefix:+4 4", "'+' and 1-6 digits"),
        ("recipient:" + "+1" * 60, "longer than 100"),
    ],
)
def test_scope_rejects_with_a_clear_message(text, message):
    with pytest.raises(ValueError) as raised:
        Scope.parse(text)
    assert message in str(raised.value)


def test_scope_built_directly_must_be_canonical():
    assert Scope(ScopeKind.PREFIX, "+44") == Scope.parse("prefix:+44")
    assert Scope(ScopeKind.GLOBAL) == GLOBAL
    with pytest.raises(ValueError, match="not a canonical scope"):
        Scope(ScopeKind.RECIPIENT, "+1 555 010 0000")
    with pytest.raises(ValueError):
        Scope(ScopeKind.GLOBAL, "x")


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("global", "global"),
        ("recipient:+15550100000", "recipient:+155******00"),
        ("sender:+14155550100", "sender:+141******00"),
        ("sender:MYBRAND", "sender:MYBRAND"),
        (f"sender:{MG}", f"sender:{MG}"),
        ("prefix:+44", "prefix:+44"),
        (f"account:{AC}", f"account:{AC}"),
    ],
)
def test_masked_scope_hides_phone_numbers(text, masked):
    assert Scope.parse(text).masked() == masked


@given(st.text(max_size=120))
def test_scope_parse_is_total_over_any_text(text):
    try:
        scope = Scope.parse(text)
    except ValueError:
        return
    assert Scope.parse(str(scope)) == scope  # canonical text is a fixed point


_kinds = st.sampled_from(["global", "account", "sender", "recipient", "prefix", "GLOBAL", "x"])
_values = st.one_of(
    st.text(alphabet="+0123456789 ()-./", max_size=20),
    st.text(alphabet="ACMGacmg0123456789abcdefABCDEF", max_size=36),
    st.text(max_size=15),
)


@given(_kinds, st.sampled_from([":", ": ", "", "::"]), _values)
def test_scope_parse_is_total_over_scope_shaped_text(kind, sep, value):
    try:
        scope = Scope.parse(f"{kind}{sep}{value}")
    except ValueError as exc:
        assert str(exc)
        return
    assert Scope.parse(str(scope)) == scope


@given(st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True))
def test_every_e164_number_is_a_recipient_scope(number):
    assert Scope.parse(f"recipient:{number}").value == number


# -- switches -------------------------------------------------------------------------------


def switch(scope: str, *, ttl: float | None = None, at: float = NOW, **kw) -> KillSwitch:
    args = {"reason": "incident 42", "author": "ops@example.com"} | kw
    return KillSwitch.engage(scope, now=at, ttl=ttl, **args)


def test_switch_round_trips_through_json():
    for original in (switch("global"), switch("recipient:+15550100000", ttl=90.5)):
        assert KillSwitch.from_json(original.to_json()) == original
        assert KillSwitch.from_json(original.to_json().encode()) == original
    data = json.loads(switch("prefix:+44", ttl=10).to_json())
    assert data == {
        "scope": "prefix:+44",
        "reason": "incident 42",
        "author": "ops@example.com",
        "created_at": NOW,
        "expires_at": NOW + 10,
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"scope": 1}', "scope must be text"),
        ('{"scope": "everything"}', "unknown scope kind"),
        ('{"scope": "global", "reason": "", "author": "a", "created_at": 1}', "reason"),
        ('{"scope": "global", "reason": "r", "author": " ", "created_at": 1}', "author"),
        ('{"scope": "global", "reason": "r", "author": "a", "created_at": "1"}', "created_at"),
        ('{"scope": "global", "reason": "r", "author": "a", "created_at": true}', "created_at"),
        (
            '{"scope": "global", "reason": "r", "author": "a", "created_at": 1, "expires_at": 1}',
            "after",
        ),
        ('{"scope": "global", "reason": "r", "author": "a", "created_at": NaN}', "finite"),
        ('{"scope": "global", "reason": "r", "author": "a", "created_at": 1, "x": 2}', "unknown"),
        ('{"scope": "global", "reason": "a\\nb", "author": "a", "created_at": 1}', "one line"),
    ],
)
def test_switch_from_json_rejects_malformed_entries(raw, message):
    with pytest.raises(ValueError) as raised:
        KillSwitch.from_json(raw)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ttl": 0}, "ttl must be a positive"),
        ({"ttl": -5}, "ttl must be a positive"),
        ({"ttl": math.inf}, "ttl must be a positive"),
        ({"reason": "  "}, "reason must be non-empty"),
        ({"reason": "x" * 501}, "longer than 500"),
        ({"author": ""}, "author must be non-empty"),
    ],
)
def test_engage_validates_operator_input(kwargs, message):
    with pytest.raises(ValueError) as raised:
        switch("global", **kwargs)
    assert message in str(raised.value)


# -- match ------------------------------------------------------------------------------------

TO = "+447700900123"


def attrs(account=AC, sender="+14155550100", to=TO) -> SendAttributes:
    return SendAttributes.of(account_sid=account, sender=sender, to=to)


@pytest.mark.parametrize(
    ("scope", "send", "blocked"),
    [
        ("global", attrs(), True),
        (f"account:{AC}", attrs(), True),
        (f"account:{AC}", attrs(account=AC2), False),
        (f"account:{AC}", attrs(account="AC" + HEX.upper()), True),  # routes accept either case
        ("sender:+14155550100", attrs(), True),
        ("sender:+14155550100", attrs(sender="+1 415 555 0100"), True),
        ("sender:+14155550100", attrs(sender="whatsapp:+14155550100"), True),  # every channel
        ("sender:+14155550100", attrs(sender="+14155550101"), False),
        ("sender:+14155550100", attrs(sender=MG), False),
        (f"sender:{MG}", attrs(sender=MG), True),
        (f"sender:{MG}", attrs(sender=MG.upper().replace("MG", "mg", 1)), True),
        ("sender:MYBRAND", attrs(sender="MyBrand"), True),
        ("sender:MYBRAND", attrs(sender="MyBrand2"), False),
        ("sender:MYBRAND", attrs(sender=""), False),
        ("recipient:" + TO, attrs(), True),
        ("recipient:" + TO, attrs(to="+44 7700 900123"), True),
        ("recipient:" + TO, attrs(to="whatsapp:" + TO), True),
        ("recipient:" + TO, attrs(to="+447700900124"), False),
        ("recipient:" + TO, attrs(to=""), False),
        ("prefix:+44", attrs(), True),
        ("prefix:+4477", attrs(), True),
        ("prefix:+44", attrs(to="whatsapp:" + TO), True),
        ("prefix:+44", attrs(to="+4"), False),
        ("prefix:+44", attrs(to="+4 4"), True),  # normalised like facts.py: it is +44
        ("prefix:+4", attrs(to="+15550100000"), False),
        ("prefix:+1", attrs(to="+15550100000"), True),
        ("prefix:+44", attrs(to="+15550100000"), False),
        ("prefix:+44", attrs(to=""), False),
        # Numbers are read as facts.py reads a To: any separators, 00, any channel-prefix case.
        ("recipient:+1 (555) 010-0000", attrs(to="WhatsApp:+15550100000"), True),
        ("recipient:+15550100000", attrs(to="WHATSAPP:+1 (555) 010-0000"), True),
        ("recipient:+15550100000", attrs(to="00 1 555 010 0000"), True),
        ("prefix:+1", attrs(to="WhatsApp:+1 555 010 0000"), True),
        # A national number (no + or 00) is another identity: no country code is guessed.
        ("recipient:+15550100000", attrs(to="5550100000"), False),
        ("prefix:+1", attrs(to="15550100000"), False),
        # Not phone numbers, even when they look like one: names and URIs are not recipients
        # of a recipient or prefix scope.
        ("recipient:+15550100000", attrs(to="client:+15550100000"), False),
        ("recipient:+15550100000", attrs(to="sip:+15550100000@ex.com"), False),
        ("prefix:+1", attrs(to="client:+15550100000"), False),
        ("prefix:+1", attrs(to="+1555abc"), False),
        ("global", attrs(to="client:agent-1"), True),
    ],
)
def test_each_scope_blocks_only_its_scope(scope, send, blocked):
    engaged = switch(scope)
    assert match([engaged], send, frozenset(), NOW) == (engaged if blocked else None)


@pytest.mark.parametrize(
    ("to", "recipient"),
    [
        ("+44 7700 900123", TO),
        ("WhatsApp:" + TO, TO),
        ("0044 7700 900123", TO),
        ("07700 900123", "07700900123"),  # national: separators go, no country code is added
        ("client:agent-1", ""),
        ("client:" + TO, ""),
        ("sip:alice.b@ex.com", ""),
        ("", ""),
    ],
)
def test_send_attributes_hold_the_phone_number_of_the_to(to, recipient):
    assert attrs(to=to).recipient == recipient


def test_sender_key_keeps_non_phone_addresses_apart():
    # A Client identity is not the alphanumeric sender ID its letters spell once the '-' goes.
    assert sender_key("client:agent-1") != sender_key("client:agent1")
    assert sender_key("WhatsApp:+1 (415) 555-0100") == "+14155550100"


def test_nothing_engaged_blocks_nothing():
    assert match([], attrs(), frozenset(), NOW) is None


@pytest.mark.parametrize(
    ("now", "blocked"),
    [(NOW, True), (NOW + 29.999, True), (NOW + 30, False), (NOW + 3600, False)],
)
def test_expired_switches_never_match(now, blocked):
    engaged = switch("global", ttl=30)
    assert (match([engaged], attrs(), frozenset(), now) is not None) is blocked


@pytest.mark.parametrize(
    ("sender", "break_glass", "blocked"),
    [
        (MG, [MG], False),
        (MG, [MG.upper().replace("MG", "mg", 1)], False),  # the allowlist is canonicalised too
        ("+14155550100", ["+1 415 555 0100"], False),
        ("whatsapp:+14155550100", ["+14155550100"], False),
        ("MyBrand", ["MYBRAND"], False),
        ("+14155550101", ["+14155550100", MG], True),
        ("", [MG], True),
    ],
)
def test_break_glass_senders_bypass_every_scope(sender, break_glass, blocked):
    allow = parse_break_glass(break_glass)
    everything = [switch(s) for s in ("global", f"account:{AC}", f"sender:{MG}", "prefix:+44")]
    assert (match(everything, attrs(sender=sender), allow, NOW) is not None) is blocked


def test_of_several_matches_the_longest_blocking_one_wins():
    short, long, forever = (
        switch("global", ttl=10),
        switch("prefix:+44", ttl=600),
        switch(f"account:{AC}"),
    )
    assert match([short, long], attrs(), frozenset(), NOW) == long
    assert match([short, forever, long], attrs(), frozenset(), NOW) == forever
    assert match([short, long], attrs(to="+15550100000"), frozenset(), NOW) == short


def test_attributes_from_request_facts():
    from proxy.guard.facts import build_facts
    from proxy.guard.routes import RouteMatch, RouteSpec

    route = RouteMatch(RouteSpec("messages", "POST", "/x/{AccountSid}/Messages.json", 600), AC)
    body = f"To=%2B44%207700%20900123&From=whatsapp%3A%2B14155550100&MessagingServiceSid={MG}"
    facts = build_facts(
        route,
        authorization="Basic x",
        idempotency_key_header=None,
        body=body.encode(),
        content_type="application/x-www-form-urlencoded",
    )
    assert SendAttributes.from_facts(facts) == SendAttributes(AC, MG, TO)


# -- Retry-After, env, break-glass, counts ------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "now", "seconds"),
    [
        (None, NOW, DEFAULT_RETRY_AFTER),
        (90, NOW, 90),
        (90, NOW + 89.2, 1),
        (90, NOW + 0.5, 90),  # rounded up: never tell a client to come back too early
        (90, NOW + 95, 1),
    ],
)
def test_retry_after(ttl, now, seconds):
    assert retry_after(switch("global", ttl=ttl), now) == seconds


@pytest.mark.parametrize(
    ("text", "scopes"),
    [
        ("", []),
        ("  ", []),
        ("global", ["global"]),
        (f"account:{AC},prefix:+44", [f"account:{AC}", "prefix:+44"]),
        (f" account:{AC} , prefix:+44 ,", [f"account:{AC}", "prefix:+44"]),
        ("global,GLOBAL", ["global"]),
        ("recipient:+1 555 010 0000", ["recipient:+15550100000"]),
    ],
)
def test_env_switches(text, scopes):
    switches = parse_env_switches(text, NOW)
    assert [str(s.scope) for s in switches] == scopes
    for s in switches:
        assert (s.author, s.reason, s.created_at, s.expires_at) == (
            CONFIG_AUTHOR,
            CONFIG_REASON,
            NOW,
            None,
        )
        assert s.from_config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("everything", "SENDGUARD_KILL_SWITCH: 'everything': unknown scope kind"),
        ("global,prefix:44", "SENDGUARD_KILL_SWITCH: 'prefix:44': a prefix scope"),
    ],
)
def test_env_switches_reject_bad_items(text, message):
    with pytest.raises(ValueError) as raised:
        parse_env_switches(text, NOW)
    assert message in str(raised.value)


def test_break_glass_list_rejects_bad_senders():
    assert parse_break_glass([MG, " +1 415 555 0100 "]) == {MG, "+14155550100"}
    with pytest.raises(ValueError, match="break-glass sender 'whatsapp:x'"):
        parse_break_glass(["whatsapp:x"])


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (MG, MG),
        ("+1 (415) 555-0100", "+14155550100"),
        ("whatsapp:+14155550100", "+14155550100"),
        ("MyBrand", "MYBRAND"),
        ("garbage!!", "garbage!!"),  # total: never raises on what a client sent
        ("", ""),
    ],
)
def test_sender_key_is_total(raw, key):
    assert sender_key(raw) == key


@given(st.text(max_size=40))
def test_sender_key_never_raises(raw):
    sender_key(raw)
    try:
        canonical = parse_sender(raw)
    except ValueError:
        return
    assert sender_key(raw) == canonical


def test_count_by_kind_counts_active_switches_and_every_kind():
    switches = [switch("global"), switch("prefix:+44"), switch("prefix:+1", ttl=5)]
    assert count_by_kind(switches, NOW) == {
        ScopeKind.GLOBAL: 1,
        ScopeKind.ACCOUNT: 0,
        ScopeKind.SENDER: 0,
        ScopeKind.RECIPIENT: 0,
        ScopeKind.PREFIX: 2,
    }
    assert count_by_kind(switches, NOW + 5)[ScopeKind.PREFIX] == 1
