"""The aiohttp app every service serves: routes with declared permissions, problem+json errors,
request ids and size limits, authentication, and `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.

A service's `api.py` declares its operations on a `Routes` table; `create_app` adds the standard routes
and middlewares and builds the OpenAPI document from the same declarations, so the document, the
permission checks and the routes cannot drift apart.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import msgspec
from aiohttp import web
from opentelemetry import context as otel_context
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.auth import Authenticator, Principal
from shared.errors import (
    AuthenticationError,
    InputError,
    NotAllowedError,
    PayloadTooLargeError,
    ProblemError,
    ServiceUnavailableError,
    UnsupportedMediaTypeError,
    input_error_from_validation,
)
from shared.telemetry import HTTP_DURATION, context_from_headers, server_spans_instrumented

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://seed-idp.dev/problems/"
PUBLIC = None
"""Permission of routes anyone may call (health, metrics, the OpenAPI document)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], Awaitable[str | None]]
T = TypeVar("T")

PRINCIPAL_KEY = web.RequestKey("idp.principal", Principal)
REQUEST_ID_KEY = web.RequestKey("idp.request_id", str)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
# A request without an id gets this process's random prefix and a sequence number: unique across replicas
# like a UUID, without drawing random bytes per request.
_REQUEST_ID_PREFIX = uuid.uuid4().hex[:16]
_request_numbers = itertools.count(1)
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Operation:
    """One declared route: what it does, who may call it, and the shapes it takes and returns."""

    method: str
    path: str
    handler: Handler
    summary: str
    permission: str | None
    query: type | None = None
    body: type | None = None
    response: type | None = None
    status: int = 200
    response_content_type: str = "application/json"
    tags: tuple[str, ...] = ()


@dataclass
class Routes:
    """A service's declared operations (`@routes.get(...)`), turned into aiohttp routes by `create_app`."""

    tag: str
    operations: list[Operation] = field(default_factory=list)

    def route(self, method: str, path: str, *, summary: str, permission: str | None, **options: Any):
        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(method, path, handler, summary, permission, tags=(self.tag,), **options))
            return handler

        return register

    def get(self, path: str, **kwargs: Any):
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any):
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any):
        return self.route("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any):
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any):
        return self.route("DELETE", path, **kwargs)


# --- request decoding and response helpers -----------------------------------------------------------


def parse_query(request: web.Request, query_type: type[T]) -> T:
    """Decode the query string into `query_type`, converting strings to ints, bools and times."""
    raw: dict[str, Any] = {}
    for key in request.query.keys():
        values = request.query.getall(key)
        raw[key] = values if len(values) > 1 else values[0]
    try:
        return msgspec.convert(raw, query_type, strict=False)
    except msgspec.ValidationError as exc:
        raise input_error_from_validation(exc, prefix="query") from exc


async def read_json(request: web.Request, body_type: type[T]) -> T:
    """Decode a JSON body into `body_type`; errors name the JSON path at fault."""
    content_type = request.content_type
    if content_type not in ("application/json", "application/merge-patch+json") and not content_type.endswith("+json"):
        raise UnsupportedMediaTypeError(f"expected application/json, got {content_type or 'no content type'}")
    body = await request.read()
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError as exc:
        raise input_error_from_validation(exc) from exc
    except msgspec.DecodeError as exc:
        raise InputError.for_field("$", f"malformed JSON: {exc}") from exc


def json_response(payload: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(payload), status=status, content_type="application/json", headers=headers)


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller (set by the auth middleware on every non-public route)."""
    return request[PRINCIPAL_KEY]


# --- middlewares -------------------------------------------------------------------------------------


def problem_response(error: ProblemError, request: web.Request) -> web.Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": request.path,
    }
    if error.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    request_id = request.get(REQUEST_ID_KEY)
    if request_id:
        body["request_id"] = request_id
    # Backstage's error body (`@backstage/errors` serializeError) as RFC 9457 extension members, so its clients
    # find the error name and status; they parse bodies typed application/json only, hence the negotiation.
    body["error"] = {
        "name": type(error).__name__ if type(error) is not ProblemError else "Error",
        "message": error.detail,
    }
    body["request"] = {"method": request.method, "url": request.path_qs}
    body["response"] = {"statusCode": error.status}
    headers = {"WWW-Authenticate": 'Bearer realm="idp"'} if error.status == 401 else None
    return web.Response(
        body=_json.encode(body), status=error.status, content_type=_problem_content_type(request), headers=headers
    )


def _problem_content_type(request: web.Request) -> str:
    """problem+json, unless the client asks for application/json and not for problem+json."""
    accept = request.headers.get("Accept", "")
    if "application/json" in accept and PROBLEM_CONTENT_TYPE not in accept:
        return "application/json"
    return PROBLEM_CONTENT_TYPE


def _problem_from_http_exception(exc: web.HTTPException) -> ProblemError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLargeError("request body exceeds the size limit")
    error = ProblemError(exc.reason)
    error.status, error.title = exc.status, exc.reason
    error.slug = re.sub(r"[^a-z0-9]+", "-", exc.reason.lower()).strip("-")
    return error


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in and out, errors as problem+json, and the duration histogram."""
    incoming = request.headers.get("X-Request-Id", "")
    if not _REQUEST_ID.match(incoming):
        incoming = f"{_REQUEST_ID_PREFIX}{next(_request_numbers):x}"
    request[REQUEST_ID_KEY] = incoming
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ProblemError as exc:
        response = problem_response(exc, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem_response(_problem_from_http_exception(exc), request)
    except (
        asyncpg.PostgresConnectionError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
        OSError,
    ) as exc:
        log.warning("dependency unavailable: %s", exc)
        response = problem_response(ServiceUnavailableError("a dependency is unavailable; retry later"), request)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        response = problem_response(ProblemError("internal error"), request)
    if not response.prepared:
        response.headers["X-Request-Id"] = request[REQUEST_ID_KEY]
    route = request.match_info.route.resource
    _duration_of(route.canonical if route else "unmatched", request.method, response.status).observe(
        time.perf_counter() - started
    )
    return response


@functools.cache
def _duration_of(route: str, method: str, status: int) -> Any:
    """The histogram's child for these labels; finding it through `labels()` every time cost 2 % of a cached read.
    Bounded by the routes, methods and statuses served."""
    return HTTP_DURATION.labels(route, method, str(status))


@web.middleware
async def trace_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Where no server span is built (nothing records spans), the caller's `traceparent` still becomes the
    request's trace context, so events, outgoing calls and logs carry it, as an unrecorded span would."""
    if "traceparent" not in request.headers:
        return await handler(request)
    token = otel_context.attach(context_from_headers(request.headers))
    try:
        return await handler(request)
    finally:
        otel_context.detach(token)


Authorize = Callable[[Principal, str], bool]
"""Whether a principal may call an operation declaring this permission (the route-level check)."""


def _permissions_in_principal(principal: Principal, permission: str) -> bool:
    return principal.may(permission)


DenialHook = Callable[[web.Request, Principal, str, NotAllowedError], Awaitable[None]]
"""Called with every 403 an authenticated caller gets (the audit trail records who was denied what)."""


def auth_middleware(
    authenticate: Authenticator, authorize: Authorize = _permissions_in_principal, on_denied: DenialHook | None = None
):
    """401 without valid credentials, 403 without the operation's permission; public routes pass.

    The route-level check only asks whether the caller holds the permission somewhere; a handler then
    decides on the resource itself (its scope, its owners) and lists filter by what the caller may see."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        operation: Operation | None = getattr(request.match_info.handler, "operation", None)
        if operation is None or operation.permission is PUBLIC:
            return await handler(request)
        principal = await authenticate(request)
        if principal is None:
            raise AuthenticationError("a valid bearer token is required")
        request[PRINCIPAL_KEY] = principal
        try:
            if not authorize(principal, operation.permission):
                raise NotAllowedError(f"missing permission {operation.permission}")
            return await handler(request)
        except NotAllowedError as denied:
            if on_denied is not None:
                await on_denied(request, principal, operation.permission, denied)
            raise

    return middleware


# --- the app -----------------------------------------------------------------------------------------


def create_app(
    *,
    service: str,
    version: str,
    routes: Routes,
    authenticate: Authenticator,
    readiness: list[ReadinessCheck],
    max_body_bytes: int,
    authorize: Authorize = _permissions_in_principal,
    on_denied: DenialHook | None = None,
) -> web.Application:
    """A service's aiohttp app: its routes plus the standard ones, behind the standard middlewares."""
    middlewares = [request_context_middleware, auth_middleware(authenticate, authorize, on_denied)]
    if not server_spans_instrumented():
        middlewares.insert(0, trace_context_middleware)
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    standard = Routes(tag="operations")
    _add_standard_routes(standard, readiness, lambda: openapi_document(service, version, routes.operations))
    for operation in [*standard.operations, *routes.operations]:
        handler = _bind(operation)
        app.router.add_route(operation.method, operation.path, handler)
    return app


def _bind(operation: Operation) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await operation.handler(request)

    handler.operation = operation  # type: ignore[attr-defined]
    return handler


def _add_standard_routes(routes: Routes, readiness: list[ReadinessCheck], document: Callable[[], dict]) -> None:
    @routes.get("/healthz", summary="The process is alive", permission=PUBLIC)
    async def healthz(request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    @routes.get("/readyz", summary="PostgreSQL and NATS reachable, migrations applied", permission=PUBLIC)
    async def readyz(request: web.Request) -> web.Response:
        results = await asyncio.gather(*(check() for check in readiness), return_exceptions=True)
        failures = [str(r) if isinstance(r, BaseException) else r for r in results if r is not None]
        if failures:
            return json_response({"status": "unavailable", "failures": failures}, status=503)
        return json_response({"status": "ready"})

    @routes.get("/metrics", summary="Prometheus metrics", permission=PUBLIC, response_content_type="text/plain")
    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    cached: list[bytes] = []

    @routes.get("/openapi.json", summary="OpenAPI 3.1 description of this service", permission=PUBLIC)
    async def openapi(request: web.Request) -> web.Response:
        if not cached:
            cached.append(_json.encode(document()))
        return web.Response(body=cached[0], content_type="application/json")


# --- OpenAPI -----------------------------------------------------------------------------------------

_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def openapi_document(service: str, version: str, operations: list[Operation]) -> dict[str, Any]:
    """OpenAPI 3.1 for the declared operations, with msgspec-generated schemas."""
    types = sorted({t for op in operations for t in (op.body, op.response, op.query) if t is not None}, key=repr)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    schema_of = dict(zip(types, schemas, strict=True))
    components["Problem"] = _PROBLEM_SCHEMA
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        # OpenAPI templates name parameters only; aiohttp's `{path:regex}` keeps its regex to itself.
        template = re.sub(r"{(\w+):[^}]*}", r"{\1}", op.path)
        paths.setdefault(template, {})[op.method.lower()] = _operation_object(op, schema_of, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": f"Seed IDP {service}", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation_object(op: Operation, schema_of: dict[type, Any], components: dict[str, Any]) -> dict[str, Any]:
    problem = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)(?::[^}]*)?}", op.path)
    ]
    if op.query is not None:
        query_schema = components.get(op.query.__name__, {})
        required = set(query_schema.get("required", []))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": schema}
            for name, schema in query_schema.get("properties", {}).items()
        ]
    success: dict[str, Any] = {"description": "OK"}
    if op.response is not None:
        success["content"] = {op.response_content_type: {"schema": schema_of[op.response]}}
    elif op.response_content_type != "application/json":
        success["content"] = {op.response_content_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(op.status): success}
    responses["400"] = {"description": "Invalid input", "content": problem}
    if op.permission is not PUBLIC:
        responses["401"] = {"description": "Authentication required", "content": problem}
        responses["403"] = {"description": "Forbidden", "content": problem}
    result: dict[str, Any] = {
        "operationId": op.handler.__name__,
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": parameters,
        "responses": responses,
    }
    if op.body is not None:
        result["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema_of[op.body]}}}
        responses["413"] = {"description": "Body too large", "content": problem}
        responses["415"] = {"description": "Unsupported media type", "content": problem}
    if op.permission is not PUBLIC:
        result["security"] = [{"bearer": []}]
        result["x-permission"] = op.permission
    return result
