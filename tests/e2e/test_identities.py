"""Identities (SPEC §3.1, §3.2, §3.3): who a send is to, whose credential it is, what its form says.

Two spellings of one identity must dedup (one upstream create); two identities must never share a
spelling (the second recipient would get the first one's replay and never be messaged). Pure
tables and properties first, then the same pairs end to end through real proxies and the
counting fake Twilio.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import urlencode

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.errors import InvalidRequest
from proxy.guard.facts import (
    basic_credential,
    build_facts,
    credential_hash,
    normalise_recipient,
    recipient_phone,
    recipient_tag,
)
from proxy.guard.routes import RouteMatch, RouteSpec
from tests.harness import ACCOUNT, MESSAGES, SENDER, TOKEN, basic_auth, post_send

ROUTE = RouteMatch(RouteSpec("messages", "POST", "/x/{AccountSid}/Messages.json", 600), ACCOUNT)
FORM = "application/x-www-form-urlencoded"
CALLS = f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
SEPARATORS = [" ", "  ", "\t", "(", ")", ".", "-", "/"]
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


def facts(body: bytes, *, auth: str = "Basic abc", key: str | None = None):
    return build_facts(
        ROUTE, authorization=auth, idempotency_key_header=key, body=body, content_type=FORM
    )


def basic(credential: bytes) -> str:
    return "Basic " + base64.b64encode(credential).decode()


def is_phone_spec(address: str) -> bool:
    """The spec's "is a phone number", written independently: bare or behind a channel prefix
    other than client:/sip:, `+` (or `00`) and digits, or digits, once separators are gone."""
    text = address.strip()
    found = _SCHEME_RE.match(text)
    if found:
        if found.group()[:-1].lower() in ("client", "sip", "sips"):
            return False
        text = text[found.end() :]
    return re.fullmatch(r"\+?[0-9]+", re.sub(r"[\s().\-/]", "", text)) is not None


def scheme_folded(address: str) -> str:
    """The spec's "same string apart from the case of its scheme", written independently."""
    found = _SCHEME_RE.match(address)
    return address[: found.end()].lower() + address[found.end() :] if found else address


# -- recipients: tables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spellings",
    [
        [
            "+15550100000",
            "+1 (555) 010-0000",
            "+1.555.010.0000",
            "00 1 555 010 0000",
            "+1/555/0100000",
        ],
        ["whatsapp:+15550100000", "WhatsApp:+1 555 010 0000", "WHATSAPP:0015550100000"],
        ["5550100000", "555 010-0000", "(555) 010 0000"],  # national: no country code guessed
        ["client:agent-1", "Client:agent-1", "CLIENT:agent-1"],
        ["sip:alice.b@ex.com", "SIP:alice.b@ex.com"],
    ],
)
def test_spellings_of_one_recipient_are_one_identity(spellings):
    assert len({normalise_recipient(s) for s in spellings}) == 1
    assert len({facts(urlencode({"To": s, "Body": "x"}).encode()).dedup_id for s in spellings}) == 1


@pytest.mark.parametrize(
    "recipients",
    [
        ["client:agent-1", "client:agent1", "client:agent.1", "client:agent 1", "client:Agent-1"],
        ["sip:alice.b@ex.com", "sip:aliceb@ex.com", "sip:alice-b@ex.com", "sip:Alice.b@ex.com"],
        ["client:+1 555 010 0000", "client:+15550100000", "+15550100000"],
        ["+15550100000", "15550100000", "5550100000", "whatsapp:+15550100000"],
        ["sip:+15550100000@ex.com", "sip:+1555010-0000@ex.com", "+15550100000"],
    ],
)
def test_different_recipients_never_share_an_identity(recipients):
    normals = [normalise_recipient(r) for r in recipients]
    assert len(set(normals)) == len(recipients), normals
    tags = {recipient_tag(ACCOUNT, n) for n in normals}  # limits and suppressions: per recipient
    assert len(tags) == len(recipients)


@pytest.mark.parametrize(
    ("to", "number"),
    [
        ("+1 (555) 010-0000", "+15550100000"),
        ("WhatsApp:+1 555 010 0000", "+15550100000"),
        ("0044 20 7946 0000", "+442079460000"),
        ("07700 900123", "07700900123"),
        ("client:+15550100000", None),
        ("sip:+15550100000@ex.com", None),
        ("client:agent-1", None),
        ("+", None),
        ("", None),
        ("+1 555 ٣٣٣", None),  # Arabic-Indic digits are not the ASCII digits of a number
    ],
)
def test_recipient_phone(to, number):
    assert recipient_phone(to) == number


# -- recipients: properties -----------------------------------------------------------------

_schemes = st.sampled_from(["", "whatsapp:", "WhatsApp:", "WHATSAPP:", "messenger:", "tel:"])


@st.composite
def formatted_phones(draw: st.DrawFn) -> tuple[str, str]:
    """(a random spelling of a phone number, its canonical form)."""
    kind = draw(st.sampled_from(["+", "00", "national"]))
    if kind == "national":
        digits = draw(st.from_regex(r"0?[1-9][0-9]{0,13}", fullmatch=True))
        compact, canonical = digits, digits
    else:
        digits = draw(st.from_regex(r"[1-9][0-9]{0,14}", fullmatch=True))
        compact, canonical = kind + digits, "+" + digits
    spelled = ""
    for char in compact:
        spelled += draw(st.sampled_from(["", "", *SEPARATORS])) + char
    spelled += draw(st.sampled_from(["", *SEPARATORS]))
    scheme = draw(_schemes)
    lead, trail = draw(st.sampled_from(["", " "])), draw(st.sampled_from(["", " \t"]))
    expected = scheme.lower() + canonical
    return f"{lead}{scheme}{spelled}{trail}", expected


@given(formatted_phones())
def test_phone_normalisation_is_formatting_invariant_and_idempotent(case):
    spelled, expected = case
    assert normalise_recipient(spelled) == expected
    assert normalise_recipient(expected) == expected
    assert recipient_phone(spelled) == expected.rpartition(":")[2]


_non_phones = st.one_of(
    st.builds(
        "{}:{}".format,
        st.sampled_from(["client", "Client", "sip", "SIP", "sips", "whatsapp", "WhatsApp", "x-y"]),
        st.text(alphabet="+0123456789 ().-/@:abcAB_", max_size=20),
    ),
    st.text(alphabet="+0123456789 ().-/@:abcAB_", max_size=20),
    st.text(max_size=20),
).filter(lambda address: not is_phone_spec(address))


@st.composite
def mutated(draw: st.DrawFn, address: str) -> str:
    """`address` with one character inserted or removed, or its scheme's case flipped."""
    how = draw(st.sampled_from(["insert", "delete", "case"]))
    if how == "insert":
        at = draw(st.integers(0, len(address)))
        char = draw(st.sampled_from([*SEPARATORS, "+", "0", "a", ":"]))
        return address[:at] + char + address[at:]
    if how == "delete" and address:
        at = draw(st.integers(0, len(address) - 1))
        return address[:at] + address[at + 1 :]
    found = _SCHEME_RE.match(address)
    end = found.end() if found else 0
    return address[:end].swapcase() + address[end:]


@given(_non_phones, st.data())
def test_non_phone_addresses_are_equal_only_up_to_the_case_of_their_scheme(address, data):
    other = data.draw(mutated(address))
    assert normalise_recipient(normalise_recipient(address)) == normalise_recipient(address)
    if not is_phone_spec(other):
        same = normalise_recipient(address) == normalise_recipient(other)
        assert same == (scheme_folded(address) == scheme_folded(other)), (address, other)
    else:  # a phone number never takes the identity of an address that is not one
        assert normalise_recipient(address) != normalise_recipient(other)
    assert recipient_phone(address) is None


@given(st.text(max_size=30))
def test_the_phone_number_test_is_the_specs(raw):
    assert (recipient_phone(raw) is not None) == is_phone_spec(raw)


@given(st.text(max_size=30))
def test_normalisation_is_total_and_idempotent(raw):
    normal = normalise_recipient(raw)
    assert normalise_recipient(normal) == normal
    assert recipient_phone(normal) == recipient_phone(raw)


# -- credentials ----------------------------------------------------------------------------

CREDENTIAL = f"{ACCOUNT}:{TOKEN}".encode()  # 67 bytes: its base64 ends in "=="
TOKEN_B64 = base64.b64encode(CREDENTIAL).decode()


@pytest.mark.parametrize(
    "header",
    [
        "basic " + TOKEN_B64,
        "BASIC " + TOKEN_B64,
        "  Basic   " + TOKEN_B64 + "  ",
        "Basic\t" + TOKEN_B64,
        "Basic " + TOKEN_B64.rstrip("="),
        "Basic " + TOKEN_B64[:-1],
        "Basic " + TOKEN_B64 + "==",
    ],
)
def test_spellings_of_one_basic_credential_are_one_scope(header):
    assert basic_credential(header) == CREDENTIAL
    assert credential_hash(header) == credential_hash(basic_auth())
    body = b"To=%2B15550100000&Body=x"
    assert facts(body, auth=header).dedup_id == facts(body, auth=basic_auth()).dedup_id
    assert (
        facts(body, auth=header, key="k").dedup_id
        == facts(body, key="k", auth=basic_auth()).dedup_id
    )


def test_sdk_headers_keep_the_scope_earlier_versions_stored():
    """A rolling upgrade must not move the records of an SDK's sends to another scope."""
    header = basic_auth()
    before = hmac.new(b"sendguard/credential-scope/v1", header.encode(), hashlib.sha256)
    assert credential_hash(header) == before.hexdigest()[:32]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (basic(b"a:b"), basic(b"a:c")),
        (basic(b"a:b"), basic(b"A:b")),
        (basic(b"a:b"), "Basic a:b"),  # an undecodable header is not the credential it spells
        (basic(b"a:b"), "Bearer " + base64.b64encode(b"a:b").decode()),
        ("Bearer one", "Bearer two"),
        ("Basic !!!", "Basic !!?"),
        ("", basic(b"")),
    ],
)
def test_different_credentials_are_different_scopes(one, other):
    assert credential_hash(one) != credential_hash(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [("Bearer x", "  Bearer x  "), ("Basic !!!", "Basic !!! "), ("", "   ")],
)
def test_other_authorization_falls_back_to_the_stripped_header(one, other):
    assert basic_credential(one) is None
    assert credential_hash(one) == credential_hash(other)


@pytest.mark.parametrize(
    "header",
    ["", "Basic", "Basic a", "Basic a b", "Basic ab=c", "Basic YWI6Yw-_", "Bäsic YWI6Yw==",
     "Basic \udc80", "Digest username=x", "Basic " + "=" * 5],
)  # fmt: skip
def test_malformed_authorization_never_crashes(header):
    assert re.fullmatch(r"[0-9a-f]{32}", credential_hash(header))


@given(
    st.binary(min_size=1, max_size=80),
    st.sampled_from(["Basic", "basic", "BASIC", "bAsIc"]),
    st.sampled_from(["", " ", "\t "]),
    st.sampled_from([" ", "  ", "\t"]),
    st.sampled_from(["", " ", " \t"]),
    st.sampled_from(["as-is", "stripped", "extra"]),
)
def test_the_spelling_of_a_basic_credential_never_matters(
    credential, scheme, lead, mid, trail, pad
):
    token = base64.b64encode(credential).decode()
    token = {"as-is": token, "stripped": token.rstrip("="), "extra": token + "="}[pad]
    header = f"{lead}{scheme}{mid}{token}{trail}"
    assert basic_credential(header) == credential
    assert credential_hash(header) == credential_hash(basic(credential))


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_different_basic_credentials_never_share_a_scope(one, other):
    assume(one != other)
    assert credential_hash(basic(one)) != credential_hash(basic(other))


@given(st.text(max_size=60))
def test_credential_hash_is_total(header):
    assert re.fullmatch(r"[0-9a-f]{32}", credential_hash(header))


# -- forms ----------------------------------------------------------------------------------

_pairs = st.lists(
    st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)), min_size=1, max_size=6
)


@given(_pairs, st.data())
def test_empty_segments_never_change_a_send(pairs, data):
    segments = [urlencode([pair]) for pair in pairs]
    plain = "&".join(segments)
    padded = "&" * data.draw(st.integers(0, 2)) + "".join(
        segment + "&" * data.draw(st.integers(1, 3)) for segment in segments
    )
    one, two = facts(plain.encode()), facts(padded.encode())
    assert two.form == one.form == tuple(pairs)
    assert (two.dedup_id, two.payload_hash) == (one.dedup_id, one.payload_hash)


@given(
    st.binary(max_size=200),
    st.one_of(st.text(max_size=40), st.just(FORM)),
    st.text(max_size=60),
    st.text(max_size=30),
)
def test_build_facts_is_total_over_headers_and_recipients(body, content_type, auth, to):
    """Untrusted input either yields facts or an InvalidRequest: never another exception."""
    for raw in (body, urlencode({"To": to, "Body": "x"}).encode() + b"&" + body):
        try:
            built = build_facts(
                ROUTE,
                authorization=auth,
                idempotency_key_header=None,
                body=raw,
                content_type=content_type,
            )
        except InvalidRequest:
            continue
        assert built.dedup_id[0] == "f"


# -- end to end: real proxies, the counting fake Twilio -------------------------------------


def message(to: str, body: str = "Your code is 1234") -> dict[str, str]:
    return {"To": to, "From": SENDER, "Body": body}


def call(to: str) -> dict[str, str]:
    return {"To": to, "From": SENDER, "Url": "https://example.com/twiml"}


async def decisions(http, proxies_, sends, **kwargs) -> list[str]:
    """Each send through the pair in turn; the decision sendguard made for each."""
    made = []
    for i, (form, path) in enumerate(sends):
        status, headers, _ = await post_send(http, proxies_[i % 2].url, form, path=path, **kwargs)
        assert status in (200, 201), (status, form)
        made.append(headers["X-Sendguard-Decision"])
    return made


@pytest.mark.parametrize(
    ("one", "other"),
    [("client:agent-1", "client:agent1"), ("sip:alice.b@ex.com", "sip:aliceb@ex.com")],
)
async def test_addresses_that_differ_in_punctuation_are_both_called(
    two_proxies, fake_twilio, http, one, other
):
    made = await decisions(http, two_proxies, [(call(one), CALLS), (call(other), CALLS)])
    assert made == ["forwarded", "forwarded"]
    assert fake_twilio.creates == 2
    assert sorted(c["to"] for c in fake_twilio.calls.values()) == sorted([one, other])


async def test_a_non_phone_address_differing_only_in_scheme_case_is_replayed(
    two_proxies, fake_twilio, http
):
    made = await decisions(
        http, two_proxies, [(call("client:agent-1"), CALLS), (call("Client:agent-1"), CALLS)]
    )
    assert made == ["forwarded", "replayed"]
    assert fake_twilio.creates == 1


@pytest.mark.parametrize(
    "spellings",
    [
        ["+15550100000", "+1 (555) 010-0000", "00 1 555 010 0000", "+1.555.010.0000"],
        ["whatsapp:+15550100000", "WhatsApp:+1 555 010 0000", "WHATSAPP:+1-555-010-0000"],
    ],
)
async def test_spellings_of_one_phone_number_are_one_message(
    two_proxies, fake_twilio, http, spellings
):
    made = await decisions(http, two_proxies, [(message(s), MESSAGES) for s in spellings])
    assert made == ["forwarded"] + ["replayed"] * (len(spellings) - 1)
    assert fake_twilio.creates == 1


async def test_a_number_without_plus_is_another_recipient(two_proxies, fake_twilio, http):
    made = await decisions(
        http, two_proxies, [(message("+15550100000"), MESSAGES), (message("15550100000"), MESSAGES)]
    )
    assert made == ["forwarded", "forwarded"]
    assert fake_twilio.creates == 2


@pytest.mark.parametrize("key", [None, "order-7"])
async def test_spellings_of_one_credential_are_one_scope(two_proxies, fake_twilio, http, key):
    headers = [
        basic_auth(),
        "basic " + TOKEN_B64,
        "Basic    " + TOKEN_B64,
        "BASIC " + TOKEN_B64.rstrip("="),
    ]
    made = []
    for i, auth in enumerate(headers):
        status, got, _ = await post_send(
            http, two_proxies[i % 2].url, message("+15558675310"), auth=auth, key=key
        )
        assert status == 201
        made.append(got["X-Sendguard-Decision"])
    assert made == ["forwarded", "replayed", "replayed", "replayed"]
    assert fake_twilio.creates == 1


async def raw_send(http, base: str, body: bytes) -> tuple[int, str]:
    headers = {"Authorization": basic_auth(), "Content-Type": FORM}
    path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    async with http.post(base + path, data=body, headers=headers) as response:
        await response.read()
        return response.status, response.headers["X-Sendguard-Decision"]


async def test_a_trailing_ampersand_is_forwarded_as_sent_and_deduped(
    two_proxies, fake_twilio, http
):
    first, second = two_proxies
    plain = urlencode(message("+15558675310")).encode()
    assert await raw_send(http, first.url, plain + b"&") == (201, "forwarded")
    assert fake_twilio.create_requests()[-1].body == plain + b"&"  # the client's own bytes
    for variant in (plain, b"&" + plain, plain.replace(b"&", b"&&") + b"&&"):
        assert await raw_send(http, second.url, variant) == (201, "replayed")
    assert fake_twilio.creates == 1


async def test_a_recipient_kill_switch_stops_every_spelling_of_its_number(
    proxies, fake_twilio, http
):
    proxy = await proxies.start(upstream=fake_twilio.url, kill_switch="recipient:+1 (555) 010-0000")
    for to in ("WhatsApp:+15550100000", "whatsapp:+1 555 010 0000", "+1 555 010 0000"):
        status, headers, _ = await post_send(http, proxy.url, message(to))
        assert (status, headers["X-Sendguard-Decision"]) == (503, "killed")
    # A Client identity that reads like the number is not that phone: the switch names a number.
    status, headers, _ = await post_send(http, proxy.url, call("client:+15550100000"), path=CALLS)
    assert (status, headers["X-Sendguard-Decision"]) == (201, "forwarded")
    assert fake_twilio.creates == 1
