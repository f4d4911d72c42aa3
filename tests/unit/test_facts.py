"""Facts of a send: key validation, canonical form, fingerprint identity and credential scope."""

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import InvalidIdempotencyKey, InvalidRequest
from proxy.guard.facts import (
    build_facts,
    canonical_form,
    normalise_recipient,
    parse_form,
    parse_idempotency_key,
)
from proxy.guard.routes import RouteMatch, RouteSpec

ACCOUNT = "AC" + "a" * 32
ROUTE = RouteMatch(RouteSpec("messages", "POST", "/x/{AccountSid}/Messages.json", 600), ACCOUNT)
FORM = "application/x-www-form-urlencoded"


def facts(body: bytes, *, key: str | None = None, auth: str = "Basic abc", route=ROUTE):
    return build_facts(
        route, authorization=auth, idempotency_key_header=key, body=body, content_type=FORM
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, None),
        ("abc", "abc"),
        ('"abc"', "abc"),
        ("  abc  ", "abc"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ("x" * 255, "x" * 255),
    ],
)
def test_valid_keys(raw, expected):
    assert parse_idempotency_key(raw) == expected


@pytest.mark.parametrize("raw", ["", '""', "a b", "x" * 256, "ключ", "a\tb"])
def test_malformed_keys(raw):
    with pytest.raises(InvalidIdempotencyKey):
        parse_idempotency_key(raw)


def test_quoted_and_bare_key_are_the_same_identity():
    body = b"To=%2B15550100&Body=hi&From=%2B15005550006"
    assert facts(body, key='"k1"').dedup_id == facts(body, key="k1").dedup_id


def test_key_order_does_not_matter_but_repeated_key_order_does():
    a = facts(b"To=1&Body=hi&MediaUrl=a&MediaUrl=b")
    b = facts(b"MediaUrl=a&Body=hi&To=1&MediaUrl=b")
    c = facts(b"To=1&Body=hi&MediaUrl=b&MediaUrl=a")
    assert a.dedup_id == b.dedup_id
    assert a.dedup_id != c.dedup_id


def test_recipient_is_normalised_in_the_fingerprint():
    assert (
        facts(b"To=%2B1+(555)+010-0000&Body=x").dedup_id
        == facts(b"To=%2B15550100000&Body=x").dedup_id
    )


def test_credentials_and_accounts_scope_identity():
    body = b"To=1&Body=x"
    assert facts(body, auth="Basic one").dedup_id != facts(body, auth="Basic two").dedup_id
    assert (
        facts(body, key="k", auth="Basic one").dedup_id
        != facts(body, key="k", auth="Basic two").dedup_id
    )
    other = RouteMatch(ROUTE.route, "AC" + "b" * 32)
    assert facts(body, route=other).dedup_id != facts(body).dedup_id


def test_key_identity_ignores_payload_but_payload_hash_does_not():
    one, two = facts(b"To=1&Body=x", key="k"), facts(b"To=1&Body=y", key="k")
    assert one.dedup_id == two.dedup_id
    assert one.payload_hash != two.payload_hash


def test_a_new_key_is_a_new_message_even_with_the_same_content():
    assert facts(b"To=1&Body=x", key="k1").dedup_id != facts(b"To=1&Body=x", key="k2").dedup_id


def test_keyed_and_keyless_identities_never_collide():
    assert facts(b"To=1&Body=x", key="k").dedup_id[0] == "k"
    assert facts(b"To=1&Body=x").dedup_id[0] == "f"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("+15550100000", "+15550100000"),
        (" +1 (555) 010-0000 ", "+15550100000"),
        ("+1.555.010.0000", "+15550100000"),
        ("0015550100000", "+15550100000"),
        ("WhatsApp:+1 555 010 0000", "whatsapp:+15550100000"),
        ("WHATSAPP: 00 1 555 010 0000", "whatsapp:+15550100000"),
        ("555 010-0000", "5550100000"),  # national: separators go, no country code is guessed
        ("", ""),
        # Not phone numbers: exactly as sent, apart from the case of the scheme.
        ("client:agent-1", "client:agent-1"),
        ("Client:agent-1", "client:agent-1"),
        ("sip:alice.b@ex.com", "sip:alice.b@ex.com"),
        ("SIP:Alice.B@Ex.com", "sip:Alice.B@Ex.com"),
        ("client:+1 555 010 0000", "client:+1 555 010 0000"),  # a Client identity, not a number
        ("+1 555 CALL NOW", "+1 555 CALL NOW"),
        ("Alice Smith:x", "Alice Smith:x"),  # not a scheme: nothing folded
    ],
)
def test_normalise_recipient(raw, normal):
    assert normalise_recipient(raw) == normal
    assert normalise_recipient(normal) == normal


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("client:agent-1", "client:agent1"),
        ("sip:alice.b@ex.com", "sip:aliceb@ex.com"),
        ("sip:alice@ex.com", "sip:alice@ex.com "),
        ("client:+1 555 010 0000", "client:+15550100000"),
        ("+15550100000", "15550100000"),
        ("+15550100000", "5550100000"),
        ("+15550100000", "whatsapp:+15550100000"),  # another channel, another message
    ],
)
def test_different_recipients_are_different_fingerprints(one, other):
    def send(to: str) -> str:
        return facts(urlencode({"To": to, "Body": "x"}).encode()).dedup_id

    assert normalise_recipient(one) != normalise_recipient(other)
    assert send(one) != send(other)


@pytest.mark.parametrize(
    "body",
    [
        b"To=%2B15550100000&Body=x&",
        b"&To=%2B15550100000&Body=x",
        b"To=%2B15550100000&&Body=x",
        b"&&To=%2B15550100000&&&Body=x&&",
    ],
)
def test_empty_form_segments_are_ignored(body):
    plain = facts(b"To=%2B15550100000&Body=x")
    padded = facts(body)
    assert padded.form == plain.form == (("To", "+15550100000"), ("Body", "x"))
    assert padded.dedup_id == plain.dedup_id
    assert padded.payload_hash == plain.payload_hash


@pytest.mark.parametrize("body", [b"&", b"&&&"])
def test_a_body_of_empty_segments_is_an_empty_form(body):
    assert parse_form(body, FORM) == ()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe", FORM),
        (b"a=%ZZ&&&", FORM),
        (b"no-equals-sign", FORM),
        (b"To=1&no-equals-sign&", FORM),
        (b'{"To": "+1"}', "application/json"),
    ],
)
def test_malformed_forms_are_invalid_requests(body, content_type):
    with pytest.raises(InvalidRequest):
        parse_form(body, content_type)


def test_empty_body_is_an_empty_form():
    assert parse_form(b"", "") == ()


def test_canonical_form_cannot_be_forged_with_separators():
    assert canonical_form((("A", "x\x1fy"),)) != canonical_form((("A", "x"), ("A", "y")))


@given(st.binary(max_size=300), st.text(max_size=40), st.one_of(st.none(), st.text(max_size=300)))
def test_build_facts_is_total(body, content_type, key):
    """Untrusted input either yields facts or an InvalidRequest: never another exception."""
    try:
        built = build_facts(
            ROUTE,
            authorization="x",
            idempotency_key_header=key,
            body=body,
            content_type=content_type,
        )
    except InvalidRequest:
        return
    assert built.dedup_id[0] in "kf"


# The identities a record is stored under, pinned: an instance of the next release must find
# the records this one wrote (a rolling upgrade runs both on one store), so any change to how
# they are derived is a change of the store's format, never a refactoring.
PINNED_BODY = (
    b"To=%2B1+(555)+010-0000&From=%2B15005550006&Body=Caf%C3%A9+%E2%80%9Chi%E2%80%9D"
    b"&MediaUrl=b&MediaUrl=a"
)
PINNED = {
    "credential_hash": "18b2b9e5a0beee09e7b7932b62f14fb6",
    "payload_hash": "e0b47a69833b6e0886c5f2d242bef2933f793da21c1caaaecd7ee1c6741acbd8",
    "to": "+15550100000",
    "sender": "+15005550006",
    "body_hash": "049ac0b01b7319af",
    "body_smart_hash": "9d0bc5274cc09ea3",
    "recipient_tag": "rc49c40a056eaa3f1f78a54c3",
    "content": "msg:edc4e5a29306d63d11a7eedd",
}


@pytest.mark.parametrize(
    ("key", "dedup_id"),
    [
        (None, "f62901b6308b65504d5e7061948480bafd3d6ae95"),
        ("order-42", "k37346e051f1d5cbd70369a95193f42c698cf7e17"),
    ],
)
def test_the_stored_identities_do_not_change_between_releases(key, dedup_id):
    found = facts(PINNED_BODY, key=key, auth="Basic QUNhYWE6c2VjcmV0")
    assert found.dedup_id == dedup_id
    assert {name: getattr(found, name) for name in PINNED} == PINNED
