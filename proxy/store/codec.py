"""The store's wire format, in one place: every hash field, state value and index value the
Lua scripts and the Python side write or read, and the decode into the core's typed values.

`proxy.guard` never sees a field name: it gets `DedupRecord`, `RecipientState`, `Suppression`.
The scripts (scripts.py) are written with `${f_token}`-style placeholders that `lua()` fills
in from the tables below, so a name exists once; tests/store/test_codec.py checks that every
field a script touches is one of them.

**The dedup record** (a hash, `keys.dedup_record`):

    s   state: inflight | done | unknown      t   claim token (compare-and-set)
    p   payload hash (keyed sends only)       c   claimed at (store ms)
    l   lease until (store ms)                u   why UNKNOWN
    ma mr mt mf mb mc  what reconciliation needs (account, route, to, from, body digests;
        mc only when the smart-encoded body differs)
    a0 a1 …  the answer to replay: status, Message SID, replayable headers and body, in one
        blob (`encode_answer`), deflated against a dictionary of Twilio's answers, cut in
        64-byte pieces
    rs rr  a Message SID known for an UNKNOWN send, and from where; rx  the one resend used
    rc  lookups in Twilio's list that found no trace of the send

Records written before this codec (same layout version) hold `m` (meta as JSON), `st`, `h`,
`b`, `sid`: still read, never written. (During a rolling upgrade an older instance finds no
`st` in a newer DONE record: that replay fails with a 500; it is never sent again.)

Why the pieces: a hash stays a compact listpack only while every value is at most
`hash-max-listpack-value` bytes (64 by default in Redis and valkey); one longer value turns
the whole record into a hashtable (about 30 bytes more per field), and it never turns back.
Every value of a record is kept at or under 64 bytes for that reason.

**The recipient's other keys**: the breaker (a hash, `BreakerField`), the suppressions (a hash:
scope field -> `encode_suppression`), the send log (a sorted set: claim token scored by store
ms). **Indexes on other slots** (`encode_index`, `encode_key_owner`): compact binary values
for sendguard's own hex ids, text otherwise and for values written before.

**What a fresh send costs** (valkey 9, 10,000 sends to distinct recipients, default limits and
windows, the sandbox's 201 of 825 bytes; tests/store/test_store_memory.py holds it to 1 KB):

    key                                      lives            bytes/send
    record    {r…}:rec:f…  hash, listpack    dedup window     ~490 (the answer ~150 of it)
    send log  {r…}:sends   zset, 1 member    longest window   ~130
    SID index {mSM…}:ref   string, 45 bytes  7 days           ~140
    keyspace tables (3 keys with a TTL)                       ~110
    keyless send                                              ~870 (was ~2,360 in 4 keys:
                                                              a 1.6 KB hashtable record, the
                                                              recipient's SID hash, a text ref)
    keyed: the record keeps the payload hash (+70); the key's index {k…}:key (~140) and the
    admin's key lookup {k…}:ref (~110)                        ~1,210

Steady state is what stays while the keys live: sends/s x each key's size x its lifetime (so
the 7-day SID index is most of it for fingerprint sends, whose record lives 10 minutes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from string import Template
from typing import Any

import orjson

from proxy.guard.dedup import DedupRecord, RecordState, StoredResponse
from proxy.guard.protection import RecipientState, Suppression
from proxy.store.answer import decode_answer, encode_answer

# -- the tables -----------------------------------------------------------------------------


class RecordField(StrEnum):
    """The dedup record's hash fields."""

    STATE = "s"
    TOKEN = "t"  # noqa: S105 (a field name, not a secret)
    PAYLOAD_HASH = "p"
    CLAIMED_AT = "c"
    LEASE_UNTIL = "l"
    UNKNOWN_REASON = "u"
    ANSWER = "a"  # a prefix: the answer's pieces are a0, a1, …
    RESOLVED_SID = "rs"
    RESOLVED_REASON = "rr"
    RESENT = "rx"
    RECONCILIATIONS = "rc"


# What reconciliation needs to find an UNKNOWN send in Twilio's list (guarded.py's meta).
META_FIELDS: Mapping[str, str] = {
    "account": "ma",
    "route": "mr",
    "to": "mt",
    "from": "mf",
    "body_sha": "mb",
    "body_smart": "mc",
}


class LegacyField(StrEnum):
    """Fields of records written before this codec: read, never written."""

    META = "m"
    STATUS = "st"
    HEADERS = "h"
    BODY = "b"
    MESSAGE_SID = "sid"


STATE_VALUES: Mapping[RecordState, str] = {
    RecordState.IN_FLIGHT: "inflight",
    RecordState.DONE: "done",
    RecordState.UNKNOWN: "unknown",
}
_STATES = {value: state for state, value in STATE_VALUES.items()}


class BreakerField(StrEnum):
    """The recipient's breaker hash (`keys.recipient_breaker`)."""

    OPEN_UNTIL = "open_until"
    TRIPS = "trips"
    PROBE = "probe"  # the half-open probe's claim token
    PROBE_UNTIL = "probe_until"


# A hash value up to this long keeps the hash a listpack (Redis/valkey default).
LISTPACK_VALUE_MAX = 64
MAX_ANSWER_PIECES = 64  # and a hash of up to 128 fields (hash-max-listpack-entries)
# How long a Message SID's index keeps the send's content field, for the message scope of a
# suppression learned from a status callback: a delivery callback can come hours after the send
# (queued or scheduled messages, carrier delays); a week leaves ample room.
SID_INDEX_TTL_MS = 7 * 86_400_000

LUA_NAMES: Mapping[str, str] = {
    **{f"f_{field.name.lower()}": field.value for field in RecordField},
    **{f"s_{state.name.lower()}": value for state, value in STATE_VALUES.items()},
    **{f"b_{field.name.lower()}": field.value for field in BreakerField},
}


def lua(source: str) -> str:
    """A script's source with its `${f_…}` (record), `${s_…}` (state) and `${b_…}` (breaker)
    placeholders filled in; a misspelt placeholder raises at import."""
    return Template(source).substitute(LUA_NAMES)


# -- the record -----------------------------------------------------------------------------


def claim_fields(payload_hash: str, meta: Mapping[str, Any], *, by_key: bool) -> list[str]:
    """The in-flight record's own fields, as name/value pairs for CLAIM (which adds state,
    token, claimed-at and lease itself). A fingerprint's payload is its identity already, so
    only a keyed record keeps the payload hash."""
    pairs: list[str] = []
    if by_key:
        pairs += [RecordField.PAYLOAD_HASH, payload_hash]
    if meta.get("body_smart") == meta.get("body_sha"):
        meta = {name: value for name, value in meta.items() if name != "body_smart"}
    for name, value in meta.items():
        if name not in META_FIELDS:
            raise ValueError(f"no record field for meta {name!r} (add it to META_FIELDS)")
        pairs += [META_FIELDS[name], str(value)]
    return pairs


def answer_fields(response: StoredResponse, message_sid: str) -> list[str | bytes]:
    """The answer's pieces as name/value pairs (COMPLETE, RESOLVE_FOUND)."""
    blob = encode_answer(response, message_sid)
    # A huge answer goes whole: its record is a hashtable anyway, and a script's arguments
    # stay far below what Lua's unpack() can take.
    size = LISTPACK_VALUE_MAX if len(blob) <= LISTPACK_VALUE_MAX * MAX_ANSWER_PIECES else len(blob)
    pairs: list[str | bytes] = []
    for index, start in enumerate(range(0, len(blob), size)):
        pairs += [f"{RecordField.ANSWER}{index}", blob[start : start + size]]
    return pairs


def fields_of(raw: Mapping[bytes, bytes]) -> dict[str, bytes]:
    """HGETALL's answer (redis-py's dict) keyed by field name."""
    return {name.decode(): value for name, value in raw.items()}


def fields_from_reply(flat: Sequence[bytes]) -> dict[str, bytes]:
    """A script's flat `field, value, …` list (CLAIM's 'exists' reply) keyed by field name."""
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def decode_record(fields: Mapping[str, bytes]) -> DedupRecord:
    def text(name: str) -> str:
        return fields.get(name, b"").decode()

    response, message_sid = _answer_in(fields)
    return DedupRecord(
        state=_STATES[text(RecordField.STATE)],
        token=text(RecordField.TOKEN),
        payload_hash=text(RecordField.PAYLOAD_HASH),
        claimed_at_ms=int(text(RecordField.CLAIMED_AT) or 0),
        lease_until_ms=int(text(RecordField.LEASE_UNTIL) or 0),
        response=response,
        message_sid=message_sid,
        unknown_reason=text(RecordField.UNKNOWN_REASON),
        meta=_meta_in(fields),
        resolved_sid=text(RecordField.RESOLVED_SID),
        resent=text(RecordField.RESENT) == "1",
        reconciliations=int(text(RecordField.RECONCILIATIONS) or 0),
    )


def _meta_in(fields: Mapping[str, bytes]) -> dict[str, Any] | None:
    if LegacyField.META in fields:
        meta: dict[str, Any] = json.loads(fields[LegacyField.META])
        return meta
    found = {name: fields[f].decode() for name, f in META_FIELDS.items() if f in fields}
    if "body_sha" in found and "body_smart" not in found:
        found["body_smart"] = found["body_sha"]
    return found or None


def _answer_in(fields: Mapping[str, bytes]) -> tuple[StoredResponse | None, str]:
    if LegacyField.STATUS in fields:
        headers = json.loads(fields.get(LegacyField.HEADERS) or b"[]")
        response = StoredResponse(
            status=int(fields[LegacyField.STATUS]),
            headers=tuple((str(name), str(value)) for name, value in headers),
            body=fields.get(LegacyField.BODY, b""),
        )
        return response, fields.get(LegacyField.MESSAGE_SID, b"").decode()
    pieces: list[bytes] = []
    while (piece := fields.get(f"{RecordField.ANSWER}{len(pieces)}")) is not None:
        pieces.append(piece)
    if not pieces:
        return None, ""
    return decode_answer(b"".join(pieces))


# -- the recipient: suppressions, breaker, CLAIM's snapshot ----------------------------------


def encode_suppression(suppression: Suppression) -> str:
    """A suppressions hash value (`keys.recipient_suppressions`: scope field -> this)."""
    data = {"code": suppression.code, "until": suppression.until_ms, "source": suppression.source}
    return json.dumps(data)


def decode_suppression(raw: str | bytes) -> Suppression:
    data = json.loads(raw)
    return Suppression(int(data["code"]), int(data["until"]), str(data.get("source", "")))


def learned_lines(learned: Sequence[tuple[str, Suppression, int]]) -> str:
    """COMPLETE's learned suppressions: lines of `field<TAB>value<TAB>ttl_ms` (no scope field
    holds a tab or newline: suppression.py makes them from digests and a sender)."""
    return "\n".join(f"{field}\t{encode_suppression(s)}\t{ttl}" for field, s, ttl in learned)


def decode_recipient_state(raw: bytes, token: str) -> RecipientState:
    """CLAIM's 'claimed' snapshot (JSON made by the script's cjson)."""
    data: dict[str, Any] = orjson.loads(raw)  # every claim reply: the C parser
    # cjson encodes an empty Lua table as {}: treat it as an empty list.
    counts = data.get("counts") or []
    hits = data.get("hits") or []
    return RecipientState(
        counts=tuple(int(count) for count in counts),
        suppressions=tuple((str(field), decode_suppression(value)) for field, value in hits),
        open_until_ms=int(data.get("open_until") or 0),
        trips=int(data.get("trips") or 0),
        probe_is_mine=data.get("probe") == token,
    )


@dataclass(frozen=True)
class BreakerState:
    open_until_ms: int  # 0: never opened, or closed again
    trips: int
    probe_in_flight: bool


def decode_breaker(raw: Mapping[bytes, bytes]) -> BreakerState:
    fields = fields_of(raw)
    return BreakerState(
        open_until_ms=int(fields.get(BreakerField.OPEN_UNTIL) or 0),
        trips=int(fields.get(BreakerField.TRIPS) or 0),
        probe_in_flight=bool(fields.get(BreakerField.PROBE)),
    )


# -- index values: where a send's record is, from another slot -------------------------------

_FINGERPRINT, _KEYED = b"\x01", b"\x02"  # a compact index value's first byte (text never has it)
_HEX_TAG = re.compile(r"r[0-9a-f]{24}")
_HEX_ID = re.compile(r"[fk][0-9a-f]{40}")
_HEX_CONTENT = re.compile(r"msg:[0-9a-f]{24}")


@dataclass(frozen=True)
class IndexedSend:
    tag: str
    dedup_id: str
    content: str = ""  # SID index: the message-scope suppression field of the send


def encode_index(tag: str, dedup_id: str, content: str = "") -> bytes:
    """An index on another slot pointing at a send: the SID index (with the content field a
    status callback needs: it carries no body) and the admin's key lookup. Compact, 33 or 45
    bytes (hex in binary: under 46 bytes a valkey string lives in one allocation with its
    key); `tag dedup_id [content]` as text when the parts are not sendguard's own hex ids."""
    compact_content = not content or _HEX_CONTENT.fullmatch(content)
    if _HEX_TAG.fullmatch(tag) and _HEX_ID.fullmatch(dedup_id) and compact_content:
        kind = _KEYED if dedup_id[0] == "k" else _FINGERPRINT
        digest = bytes.fromhex(content[4:]) if content else b""
        return kind + bytes.fromhex(tag[1:]) + bytes.fromhex(dedup_id[1:]) + digest
    return " ".join(part for part in (tag, dedup_id, content) if part).encode()


def decode_index(raw: bytes) -> IndexedSend:
    kind = raw[:1]
    if kind in (_FINGERPRINT, _KEYED):
        prefix = "k" if kind == _KEYED else "f"
        content = "msg:" + raw[33:].hex() if len(raw) > 33 else ""
        return IndexedSend("r" + raw[1:13].hex(), prefix + raw[13:33].hex(), content)
    tag, _, rest = raw.decode().partition(" ")
    dedup_id, _, content = rest.partition(" ")
    return IndexedSend(tag, dedup_id, content)


def sid_index_ttl_ms(record_ttl_ms: int, content: str) -> int:
    """The SID index outlives the record when it carries a content field: a delivery callback
    may come long after a fingerprint's record expired."""
    return max(record_ttl_ms, SID_INDEX_TTL_MS) if content else record_ttl_ms


def ledger_member(tag: str, dedup_id: str) -> str:
    """A member of the UNKNOWN ledger (one sorted set, admin path): `<tag> <dedup id>`."""
    return f"{tag} {dedup_id}"


def parse_ledger_member(raw: bytes) -> tuple[str, str]:
    tag, _, dedup_id = raw.decode().partition(" ")
    return tag, dedup_id


_KEY_OWNER = b"\x03"
_HEX_PAYLOAD = re.compile(r"[0-9a-f]{64}")


def encode_key_owner(tag: str, payload_hash: str) -> bytes:
    """A key index's value: the recipient and payload the key was first used for; 45 bytes
    for sendguard's own hex digests, `tag payload_hash` as text otherwise."""
    if _HEX_TAG.fullmatch(tag) and _HEX_PAYLOAD.fullmatch(payload_hash):
        return _KEY_OWNER + bytes.fromhex(tag[1:]) + bytes.fromhex(payload_hash)
    return f"{tag} {payload_hash}".encode()


def decode_key_owner(raw: bytes) -> str:
    """`<tag> <payload hash>`, however it was stored."""
    if raw[:1] == _KEY_OWNER:
        return f"r{raw[1:13].hex()} {raw[13:].hex()}"
    return raw.decode()
