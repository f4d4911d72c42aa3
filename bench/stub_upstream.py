"""A stand-in for Twilio: 201 + a Message JSON with a fresh SM sid for every send, 200 otherwise.

Run: `python -m bench.stub_upstream --port P`. Kept as small as possible: it shares a core with
the store and the load generator, so every microsecond it spends is one the loadgen loses.
"""

from __future__ import annotations

import argparse
import json
import uuid
from urllib.parse import parse_qs

from aiohttp import web

DATE = "Thu, 01 Jan 2026 00:00:00 +0000"


def message_json(path: str, form: dict[str, list[str]]) -> bytes:
    account = path.split("/")[3] if path.count("/") >= 4 else "AC" + "0" * 32
    sid = "SM" + uuid.uuid4().hex

    def field(name: str) -> str:
        return form.get(name, [""])[0]

    return json.dumps(
        {
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": field("Body"),
            "date_created": DATE,
            "date_sent": None,
            "date_updated": DATE,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": field("From"),
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"
            },
            "to": field("To"),
            "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        }
    ).encode()


async def handle(request: web.Request) -> web.Response:
    if request.method == "POST" and request.path.endswith("/Messages.json"):
        form = parse_qs((await request.read()).decode(), keep_blank_values=True)
        return web.Response(
            status=201, body=message_json(request.path, form), content_type="application/json"
        )
    await request.read()
    return web.Response(status=200, body=b'{"messages": []}', content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
