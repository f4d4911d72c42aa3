"""GET Messages.json: Twilio's filters (To, From, DateSent, DateSent<, DateSent>) and paging.

`DateSent<` / `DateSent>` are literal parameter names (SDKs send `DateSent%3E=2024-01-31`) and
mean on-or-before / on-or-after. A date alone compares whole days (GMT); a date-time compares
to the second, so "sent since I claimed it" finds a message created within the same second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode

from proxy.sandbox.responses import API_VERSION, SandboxError

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
EXACT_FILTERS = {"To": "to", "From": "from"}
DATE_FILTERS = ("DateSent", "DateSent<", "DateSent>")

MessageFilter = Callable[[dict[str, Any]], bool]
_When = TypeVar("_When", date, datetime)


def list_messages_page(
    messages: Iterable[dict[str, Any]], account_sid: str, query: Mapping[str, str]
) -> dict[str, Any]:
    """One page of the account's messages matching `query`, newest first, in Twilio's shape."""
    filters = [(key, query[key]) for key in (*EXACT_FILTERS, *DATE_FILTERS) if query.get(key)]
    page_size = _int_param(query, "PageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    page = _int_param(query, "Page", 0, 0, None)
    predicates = _message_filters(filters)
    matching = [
        message
        for message in reversed(list(messages))
        if message["account_sid"] == account_sid and all(match(message) for match in predicates)
    ]
    start = page * page_size
    items = matching[start : start + page_size]
    has_next = start + page_size < len(matching)

    def page_uri(number: int, token: str | None = None) -> str:
        pairs = [*filters, ("PageSize", str(page_size)), ("Page", str(number))]
        if token:
            pairs.append(("PageToken", token))
        return f"/{API_VERSION}/Accounts/{account_sid}/Messages.json?{urlencode(pairs)}"

    return {
        "messages": items,
        "end": start + max(len(items) - 1, 0),
        "first_page_uri": page_uri(0),
        "next_page_uri": page_uri(page + 1, f"PA{items[-1]['sid']}") if has_next else None,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": page_uri(page - 1) if page > 0 else None,
        "start": start,
        "uri": page_uri(page, query.get("PageToken")),
    }


def _int_param(query: Mapping[str, str], key: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(key)
    if not raw:
        return default
    try:
        number = int(raw)
    except ValueError:
        raise SandboxError(20001, f"Invalid {key}: {raw!r} is not an integer.") from None
    number = max(low, number)
    return min(number, high) if high is not None else number


def _message_filters(filters: list[tuple[str, str]]) -> list[MessageFilter]:
    """Parse each filter once into a predicate over Message JSON."""
    predicates: list[MessageFilter] = []
    for key, wanted in filters:
        if key in EXACT_FILTERS:
            predicates.append(partial(_field_equals, field=EXACT_FILTERS[key], wanted=wanted))
        else:
            bound = parse_date_filter(key, wanted)
            predicates.append(partial(_sent_in_range, key=key, bound=bound))
    return predicates


def _field_equals(message: dict[str, Any], *, field: str, wanted: str) -> bool:
    return bool(message.get(field) == wanted)


def _sent_in_range(message: dict[str, Any], *, key: str, bound: date | datetime) -> bool:
    date_sent = message.get("date_sent")
    if not date_sent:
        return False
    sent = parsedate_to_datetime(date_sent)
    if isinstance(bound, datetime):
        return _compare(key, sent, bound)
    return _compare(key, sent.date(), bound)


def _compare(key: str, left: _When, right: _When) -> bool:
    if key == "DateSent<":
        return left <= right
    if key == "DateSent>":
        return left >= right
    return left == right


def parse_date_filter(key: str, raw: str) -> date | datetime:
    """`YYYY-MM-DD` → a day; ISO 8601 or RFC 2822 date-time → an aware UTC datetime."""
    raw = raw.strip()
    try:
        if len(raw) == 10:
            return date.fromisoformat(raw)
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            moment = parsedate_to_datetime(raw)
    except (ValueError, TypeError):
        raise SandboxError(20001, f"Invalid {key}: {raw!r} is not a date.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Stored dates have whole seconds; flooring the bound keeps same-second messages in range.
    return moment.astimezone(UTC).replace(microsecond=0)
