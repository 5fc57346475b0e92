"""Where nothing records spans, services build no server spans, yet the caller's `traceparent` is still the
request's trace context (events and outgoing calls carry it on)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from shared.http import trace_context_middleware
from shared.telemetry import current_trace

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def trace_of_request(request: web.Request) -> web.Response:
    return web.Response(text=current_trace().traceparent)


async def test_the_callers_trace_context_becomes_the_requests():
    # Called directly: aiohttp's instrumented test client would send a traceparent of its own.
    request = make_mocked_request("GET", "/trace", headers={"traceparent": TRACEPARENT})
    assert (await trace_of_request_through_middleware(request)) == TRACEPARENT
    assert current_trace().traceparent == ""  # detached afterwards
    assert (await trace_of_request_through_middleware(make_mocked_request("GET", "/trace"))) == ""


async def trace_of_request_through_middleware(request: web.Request) -> str:
    response = await trace_context_middleware(request, trace_of_request)
    return response.text
