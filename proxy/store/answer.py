"""A stored answer as one blob: what a replay needs (status, Message SID, replayable headers,
body), deflated against a dictionary of what Twilio's answers share. codec.py cuts the blob in
listpack-sized pieces of the record; a replay gets the answer back byte for byte.

A sandbox 201 (825 bytes, with its head about 920) becomes about 150 bytes; an answer that
compression cannot shorten (a short error, random bytes) is kept as is behind its own format
byte. Measured on an idle core: about 15 us to compress (per fresh send) and 5 us to
decompress (per replay), about what one json.loads of the body costs.
"""

from __future__ import annotations

import json
import zlib

from proxy.guard.dedup import StoredResponse

# Deflate (raw, 4 KB window) primed with what Twilio's answers share: a Message JSON in the
# API's own key order and in the sandbox's, an error body and the replayable headers. Never
# edit it: records made with it must stay readable for as long as they live. A new dictionary
# takes a new format byte (tests/store/test_codec.py pins this one).
ANSWER_DICTIONARY = (
    b'{"code": 21211, "message": "The \'To\' number  is not a valid phone number.", '
    b'"more_info": "https://www.twilio.com/docs/errors/21211", "status": 400}'
    b'{"body": "", "num_segments": "1", "direction": "outbound-api", "from": "+1", '
    b'"date_updated": "Thu, 24 Aug 2023 05:01:45 +0000", "price": null, "error_message": '
    b'null, "uri": "/2010-04-01/Accounts/AC/Messages/SM.json", "account_sid": "AC", '
    b'"num_media": "0", "to": "+1", "date_created": "Thu, 24 Aug 2023 05:01:45 +0000", '
    b'"status": "queued", "sid": "SM", "date_sent": null, "messaging_service_sid": null, '
    b'"error_code": null, "price_unit": "USD", "api_version": "2010-04-01", '
    b'"subresource_uris": {"media": "/2010-04-01/Accounts/AC/Messages/SM/Media.json"}}'
    b'[201,"SM",[["Content-Type","application/json; charset=utf-8"],["Twilio-Request-Id",'
    b'"RQ"],["Twilio-Request-Duration","0.100"],["X-Home-Region","us1"],["X-Api-Domain",'
    b'"api.twilio.com"]]]\n'
    b'{"account_sid": "AC", "api_version": "2010-04-01", "body": "", "date_created": '
    b'"Thu, 24 Aug 2023 05:01:45 +0000", "date_sent": "Thu, 24 Aug 2023 05:01:45 +0000", '
    b'"date_updated": "Thu, 24 Aug 2023 05:01:45 +0000", "direction": "outbound-api", '
    b'"error_code": null, "error_message": null, "from": "+1", "messaging_service_sid": '
    b'null, "num_media": "0", "num_segments": "1", "price": null, "price_unit": "USD", '
    b'"sid": "SM", "status": "queued", "subresource_uris": {"media": '
    b'"/2010-04-01/Accounts/AC/Messages/SM/Media.json"}, "to": "+1", "uri": '
    b'"/2010-04-01/Accounts/AC/Messages/SM.json"}'
)
_DEFLATED = b"1"  # format byte: deflated with ANSWER_DICTIONARY
_PLAIN = b"0"  # format byte: as is (compression would not have made it shorter)
_WINDOW_BITS = -12  # raw deflate: no zlib header or checksum (the store keeps bytes intact)
_LEVEL = 3  # deflate's fast strategy: 6 saves ~6 bytes for about twice the time


def encode_answer(response: StoredResponse, message_sid: str) -> bytes:
    """One blob: a JSON head `[status, sid, headers]`, a newline, the body byte for byte (a
    JSON head never holds a raw newline, so the first one ends it)."""
    head = [response.status, message_sid, [list(pair) for pair in response.headers]]
    plain = json.dumps(head, separators=(",", ":")).encode() + b"\n" + response.body
    packer = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WINDOW_BITS, 8, zlib.Z_DEFAULT_STRATEGY,
                              ANSWER_DICTIONARY)  # fmt: skip
    packed = packer.compress(plain) + packer.flush()
    return _DEFLATED + packed if len(packed) < len(plain) else _PLAIN + plain


def decode_answer(blob: bytes) -> tuple[StoredResponse, str]:
    kind, data = blob[:1], blob[1:]
    if kind == _DEFLATED:
        unpacker = zlib.decompressobj(_WINDOW_BITS, ANSWER_DICTIONARY)
        data = unpacker.decompress(data) + unpacker.flush()
    elif kind != _PLAIN:
        raise ValueError(f"unknown answer format {kind!r}")
    head, _, body = data.partition(b"\n")
    status, message_sid, headers = json.loads(head)
    pairs = tuple((str(name), str(value)) for name, value in headers)
    return StoredResponse(int(status), pairs, body), str(message_sid)
