"""The store's wire format (proxy/store/codec.py): records, answers and index values round-trip
exactly, a realistic record stays a listpack, and the Lua scripts touch only fields the codec's
tables name (no field spelt, no lifetime hard-coded, in any script)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime

import pytest

from proxy.guard.dedup import DedupRecord, RecordState, StoredResponse
from proxy.guard.protection import Suppression
from proxy.sandbox.messages import build_message
from proxy.store import answer, codec, scripts

TAG = "r" + "ab" * 12
FINGERPRINT = "f" + "cd" * 20
KEYED = "k" + "ef" * 20
PAYLOAD = "9f" * 32
CONTENT = "msg:" + "12" * 12
META = {
    "account": "AC" + "0" * 32,
    "route": "messages",
    "to": "+15558675310",
    "from": "+15005550006",
    "body_sha": "aa" * 8,
    "body_smart": "aa" * 8,
}
# What real Twilio answers carry of REPLAYED_RESPONSE_HEADERS (proxy/server/headers.py).
TWILIO_HEADERS = (
    ("Content-Type", "application/json; charset=utf-8"),
    ("Twilio-Request-Id", "RQ" + "3a" * 16),
    ("Twilio-Request-Duration", "0.084"),
    ("X-Home-Region", "us1"),
    ("X-Api-Domain", "api.twilio.com"),
)


def sandbox_answer() -> tuple[StoredResponse, str]:
    """A create's 201 as the sandbox sends it (proxy/sandbox/responses.json_response)."""
    form = [("To", META["to"]), ("From", META["from"]), ("Body", "Your code is 123456")]
    message = build_message(META["account"], form, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    body = json.dumps(message).encode()
    headers = (("Content-Type", "application/json; charset=utf-8"),)
    return StoredResponse(201, headers, body), str(message["sid"])


def record_fields(*pairs: str | bytes | int) -> dict[str, bytes]:
    """A hash as HGETALL answers it, from name/value pairs."""
    values = [value if isinstance(value, bytes) else str(value).encode() for value in pairs]
    return {values[i].decode(): values[i + 1] for i in range(0, len(values), 2)}


def done_record(response: StoredResponse, sid: str, *, by_key: bool) -> dict[str, bytes]:
    return record_fields(
        codec.RecordField.STATE, "done", codec.RecordField.TOKEN, "tok",
        codec.RecordField.CLAIMED_AT, 1_000, codec.RecordField.LEASE_UNTIL, 31_000,
        *codec.claim_fields(PAYLOAD, META, by_key=by_key),
        *codec.answer_fields(response, sid),
    )  # fmt: skip


@pytest.mark.parametrize("by_key", [True, False])
def test_a_done_record_decodes_to_what_was_stored(by_key):
    response, sid = sandbox_answer()
    record = codec.decode_record(done_record(response, sid, by_key=by_key))
    assert record == DedupRecord(
        state=RecordState.DONE,
        token="tok",
        payload_hash=PAYLOAD if by_key else "",  # a fingerprint is its own payload check
        claimed_at_ms=1_000,
        lease_until_ms=31_000,
        response=response,
        message_sid=sid,
        meta=META,
    )


def test_a_realistic_record_keeps_every_value_within_a_listpack():
    response, sid = sandbox_answer()
    for stored in (response, StoredResponse(201, TWILIO_HEADERS, response.body)):
        fields = done_record(stored, sid, by_key=True)
        assert max(len(value) for value in fields.values()) <= codec.LISTPACK_VALUE_MAX
        answer_bytes = sum(len(v) for f, v in fields.items() if f.startswith("a"))
        assert answer_bytes < len(stored.body) // 3  # the dictionary earns its place


@pytest.mark.parametrize(
    "response",
    [
        StoredResponse(201, (), b""),
        StoredResponse(400, (("Content-Type", "application/json"),), b'{"code": 21211}'),
        StoredResponse(200, (("Content-Type", "text/xml"),), b"<TwilioResponse>\n</x>\r\n"),
        StoredResponse(201, (("X-Odd", 'q"u\\o\u00e9\u2603'), ("x-odd", "two")), b"\x00\xff\n\n"),
        StoredResponse(201, TWILIO_HEADERS, os.urandom(300)),  # incompressible: kept as is
        StoredResponse(201, TWILIO_HEADERS, os.urandom(20_000)),  # huge: one piece
    ],
)
def test_answers_round_trip_byte_for_byte(response):
    pairs = codec.answer_fields(response, "SM" + "1" * 32)
    fields = record_fields(codec.RecordField.STATE, "done", *pairs)
    record = codec.decode_record(fields)
    assert record.response == response and record.message_sid == "SM" + "1" * 32
    assert len(pairs) // 2 <= codec.MAX_ANSWER_PIECES


def test_records_written_before_the_codec_are_still_read():
    legacy = record_fields(
        "s", "done", "t", "tok", "p", PAYLOAD, "c", 5, "l", 6, "m", json.dumps({"to": "+1"}),
        "st", 201, "h", json.dumps([["Content-Type", "application/json"]]), "b", b'{"a": 1}',
        "sid", "SM1",
    )  # fmt: skip
    record = codec.decode_record(legacy)
    assert record.response == StoredResponse(
        201, (("Content-Type", "application/json"),), b'{"a": 1}'
    )
    assert (record.message_sid, record.meta, record.payload_hash) == ("SM1", {"to": "+1"}, PAYLOAD)


def test_meta_round_trips_and_unknown_meta_is_refused():
    smart = dict(META, body_smart="bb" * 8)
    for meta in (META, smart, {"to": "+1"}):
        fields = record_fields("s", "inflight", *codec.claim_fields("", meta, by_key=False))
        assert codec.decode_record(fields).meta == meta
    with pytest.raises(ValueError, match="META_FIELDS"):
        codec.claim_fields("", {"colour": "blue"}, by_key=False)


def test_the_answer_dictionary_never_changes():
    # Records deflated with it must stay readable as long as they live: a new dictionary
    # takes a new format byte, and this one stays.
    digest = hashlib.sha256(answer.ANSWER_DICTIONARY).hexdigest()
    assert digest == "0b7715f8d42922bc2a4d7d2c5192ace9156c25850ec44fc62030c7187a8bb09a"


@pytest.mark.parametrize(
    ("tag", "dedup_id", "content", "size"),
    [
        (TAG, FINGERPRINT, CONTENT, 45),
        (TAG, KEYED, "", 33),
        ("rTAG", "id1", "msg:x", None),  # not sendguard's own ids: text
        (TAG, FINGERPRINT, "msg:x", None),
    ],
)
def test_index_values_round_trip(tag, dedup_id, content, size):
    raw = codec.encode_index(tag, dedup_id, content)
    assert codec.decode_index(raw) == codec.IndexedSend(tag, dedup_id, content)
    if size is not None:
        assert len(raw) == size
    owner = codec.encode_key_owner(tag, PAYLOAD)
    assert codec.decode_key_owner(owner) == f"{tag} {PAYLOAD}"


def test_index_values_written_before_the_codec_are_still_read():
    assert codec.decode_index(f"{TAG} {FINGERPRINT}".encode()) == codec.IndexedSend(
        TAG, FINGERPRINT
    )
    assert codec.decode_key_owner(f"{TAG} {PAYLOAD}".encode()) == f"{TAG} {PAYLOAD}"


def test_a_sid_index_outlives_its_record_only_to_carry_a_content_field():
    assert codec.sid_index_ttl_ms(600_000, CONTENT) == codec.SID_INDEX_TTL_MS
    assert codec.sid_index_ttl_ms(600_000, "") == 600_000


def test_suppressions_and_the_claim_snapshot_decode():
    suppression = Suppression(21610, 99, "callback")
    assert codec.decode_suppression(codec.encode_suppression(suppression)) == suppression
    raw = json.dumps(
        {"counts": [1, 2], "hits": [["to", codec.encode_suppression(suppression)]],
         "open_until": 5, "trips": 1, "probe": "tok"}
    ).encode()  # fmt: skip
    state = codec.decode_recipient_state(raw, "tok")
    assert (state.counts, state.suppressions) == ((1, 2), (("to", suppression),))
    assert (state.open_until_ms, state.trips, state.probe_is_mine) == (5, 1, True)
    empty = codec.decode_recipient_state(b'{"counts": {}, "hits": {}, "probe": ""}', "tok")
    assert (empty.counts, empty.suppressions, empty.probe_is_mine) == ((), (), False)


# -- the scripts against the tables ---------------------------------------------------------

SCRIPTS = {name: value for name, value in vars(scripts).items() if name.isupper()}
_CALL = re.compile(r"redis\.call\('(\w+)',\s*(\w+)((?:[^()]|\([^()]*\))*)\)", re.S)
_HASH_KEYS = {
    "record": {field.value for field in codec.RecordField},
    "breaker": {field.value for field in codec.BreakerField},
}
_FIELDS_ONLY = {"HGET", "HMGET", "HDEL", "HINCRBY"}


def _top_level_args(text: str) -> list[str]:
    args, depth, current = [], 0, ""
    for char in text:
        depth += char == "(" or char == "{"
        depth -= char == ")" or char == "}"
        if char == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += char
    args.append(current.strip())
    return [arg for arg in args if arg]


def _fields_named(command: str, args: list[str]) -> list[str]:
    if command in _FIELDS_ONLY:
        return args[:1] if command == "HINCRBY" else args
    if command == "HSET":
        return args[0::2]
    return []


def test_every_field_a_script_touches_is_in_the_codec_tables():
    checked = 0
    for name, source in SCRIPTS.items():
        assert "${" not in source, name
        for command, key, rest in _CALL.findall(source):
            if key not in _HASH_KEYS:
                continue
            for arg in _fields_named(command, _top_level_args(rest)):
                literal = re.fullmatch(r"'([^']*)'", arg)
                if literal is None:
                    continue  # a variable or unpack(ARGV…): the codec made those fields
                assert literal.group(1) in _HASH_KEYS[key], (name, command, arg)
                checked += 1
    assert checked > 30  # the parser did find the scripts' field names


def test_what_the_scripts_compare_with_is_in_the_codec_tables():
    # states, field names (the merge reads fields from ARGV), and the '1' of a flag
    known = set(codec.STATE_VALUES.values()) | set(_HASH_KEYS["record"]) | {"1"}
    for name, source in SCRIPTS.items():
        for quoted in re.findall(r"== '(\w+)'|~= '(\w+)'", source):
            value = next(part for part in quoted if part)
            assert value in known, (name, value)


def test_no_script_hard_codes_a_lifetime():
    for name, source in SCRIPTS.items():
        # every ttl, lease and window is an ARGV (1000 is TIME's ms conversion)
        assert not re.search(r"\b\d{5,}\b", source), name
