"""Route handlers: Messages (create, list, fetch, update, delete) and Calls (create, fetch).

Creates share one flow: take a fault, refuse (429) or validate, create and count, then answer
as the fault says. Callbacks start once the answer is out, or at once when none is coming.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from proxy.sandbox.callbacks import CallbackPlan
from proxy.sandbox.calls import build_call, validate_call_create
from proxy.sandbox.faults import (
    DELAY,
    FAULT_HEADER,
    HANG,
    LIST_LAG_HEADER,
    RATE_LIMITED,
    RESET,
    SERVER_ERROR_AFTER_CREATE,
    UNDELIVERED,
    Fault,
    hold,
    parse_fault,
    parse_list_lag,
    reset_connection,
)
from proxy.sandbox.keys import (
    CALLBACK_SENDER,
    REQUEST_AUTH,
    REQUEST_FORM,
    SANDBOX_STATE,
    STOPPING,
)
from proxy.sandbox.listing import list_messages_page
from proxy.sandbox.messages import (
    Form,
    build_message,
    first,
    initial_status,
    mark_undelivered,
    update_message,
    validate_message_create,
)
from proxy.sandbox.responses import SandboxError, json_response, not_found, utc_now

# Logged by the access log for requests deliberately left without an answer (nginx's 444).
NO_ANSWER_STATUS = 444


# -- Messages ---------------------------------------------------------------------------------


async def create_message(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]
    list_lag = _list_lag(request)  # before the fault: a bad header must not use one up
    fault = _take_fault(request)
    form = request[REQUEST_FORM]
    validate_message_create(form)
    now = utc_now()
    message = build_message(request.match_info["account_sid"], form, now)
    answer = json_response(message, status=201)  # serialised now: later changes don't leak in
    state.record_message(message, list_lag=list_lag)
    if fault is not None and fault.kind == UNDELIVERED:
        mark_undelivered(message, fault.delivery_error_code, now)
    plan = _callback_plan(request, form, message)
    return await _answer_create(request, answer, fault, plan)


async def list_messages(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    page = list_messages_page(
        state.listed_messages(), request.match_info["account_sid"], request.query
    )
    return json_response(page)


async def fetch_message(request: web.Request) -> web.Response:
    return json_response(_owned(request, request.app[SANDBOX_STATE].messages))


async def update_message_handler(request: web.Request) -> web.Response:
    message = _owned(request, request.app[SANDBOX_STATE].messages)
    update_message(message, request[REQUEST_FORM], utc_now())
    return json_response(message)


async def delete_message(request: web.Request) -> web.Response:
    state = request.app[SANDBOX_STATE]
    message = _owned(request, state.messages)
    state.forget_message(message["sid"])
    return web.Response(status=204)


# -- Calls ------------------------------------------------------------------------------------


async def create_call(request: web.Request) -> web.StreamResponse:
    state = request.app[SANDBOX_STATE]
    fault = _take_fault(request)
    validate_call_create(request[REQUEST_FORM])
    call = build_call(request.match_info["account_sid"], request[REQUEST_FORM], utc_now())
    answer = json_response(call, status=201)
    state.record_call(call)
    if fault is not None and fault.kind == UNDELIVERED:
        call["status"] = "failed"
    return await _answer_create(request, answer, fault, plan=None)


async def fetch_call(request: web.Request) -> web.Response:
    return json_response(_owned(request, request.app[SANDBOX_STATE].calls))


# -- the create flow --------------------------------------------------------------------------


def _take_fault(request: web.Request) -> Fault | None:
    """The header's fault for demos, else the next queued one; a 429 refuses right here."""
    header = request.headers.get(FAULT_HEADER)
    if header:
        try:
            fault: Fault | None = parse_fault(header)
        except ValueError as error:
            raise SandboxError(20001, f"Invalid {FAULT_HEADER}: {error}") from None
    else:
        fault = request.app[SANDBOX_STATE].take_fault()
    if fault is not None and fault.kind == RATE_LIMITED:
        raise _too_many_requests(fault)
    return fault


def _list_lag(request: web.Request) -> float | None:
    """This create's own list lag (the header), else None: the state's default applies."""
    header = request.headers.get(LIST_LAG_HEADER)
    if not header:
        return None
    try:
        return parse_list_lag(header)
    except ValueError as error:
        raise SandboxError(20001, f"Invalid {LIST_LAG_HEADER}: {error}") from None


def _too_many_requests(fault: Fault) -> SandboxError:
    headers = {"Retry-After": str(math.ceil(fault.seconds))} if fault.seconds > 0 else {}
    return SandboxError(20429, "Too Many Requests", status=429, headers=headers)


async def _answer_create(
    request: web.Request, created: web.Response, fault: Fault | None, plan: CallbackPlan | None
) -> web.StreamResponse:
    kind = fault.kind if fault is not None else None
    if fault is not None and kind in (HANG, RESET):
        # No answer is coming, but the message exists and goes out: report it now.
        _schedule_callbacks(request, plan)
        if kind == HANG:
            await hold(request, fault.hang_seconds, request.app[STOPPING])
        reset_connection(request)
        return web.Response(status=NO_ANSWER_STATUS)
    if fault is not None and kind == DELAY:
        await hold(request, fault.seconds, request.app[STOPPING])
    response = created
    if kind == SERVER_ERROR_AFTER_CREATE:
        response = SandboxError(20500, "Internal Server Error", status=500).response()
    if plan is not None:
        # Send the answer before the first callback, as Twilio's ordering implies.
        await response.prepare(request)
        await response.write_eof()
        _schedule_callbacks(request, plan)
    return response


def _callback_plan(
    request: web.Request, form: Form, message: dict[str, Any]
) -> CallbackPlan | None:
    url = first(form, "StatusCallback")
    if not url or not request.app[SANDBOX_STATE].send_callbacks:
        return None
    return CallbackPlan(
        url=url,
        auth_token=request[REQUEST_AUTH].password,
        account_sid=message["account_sid"],
        message_sid=message["sid"],
        to=message["to"],
        from_=message["from"],
        messaging_service_sid=message["messaging_service_sid"],
        error_code=message["error_code"],
        initial_status=initial_status(form),
    )


def _schedule_callbacks(request: web.Request, plan: CallbackPlan | None) -> None:
    if plan is not None:
        request.app[CALLBACK_SENDER].schedule(plan)


def _owned(request: web.Request, resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The resource named in the path, if it belongs to the path's account; else 404."""
    resource = resources.get(request.match_info["sid"])
    if resource is None or resource["account_sid"] != request.match_info["account_sid"]:
        raise not_found(request.path)
    return resource
