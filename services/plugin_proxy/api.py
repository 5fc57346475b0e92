"""Plugin-proxy HTTP routes: endpoint and agent management, and `ANY /api/proxy/{name}/{path}` forwarding."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from yarl import URL

from services.plugin_proxy import service
from services.plugin_proxy.forwarding import BodyReader, ProxyContext, UpstreamResponse, UpstreamSocket
from services.plugin_proxy.model import (
    METHODS,
    AgentCreate,
    AgentList,
    AgentView,
    Endpoint,
    EndpointCreate,
    EndpointPage,
    EndpointSpec,
    EndpointView,
    MintedAgent,
    PageQuery,
    check_name,
    forwarded_path,
    request_headers,
    response_headers,
    upstream_url,
    view,
)
from shared.delegate_wire import CHUNK_BYTES
from shared.errors import InputError, NotAllowedError, PayloadTooLargeError, ProblemError
from shared.etag import quoted
from shared.http import REQUEST_ID_KEY, Handler, Routes, json_response, parse_query, principal_of, read_json
from shared.service import Deps
from shared.socket_relay import AiohttpSocket, splice

log = logging.getLogger(__name__)
ENDPOINT = "/api/proxy/endpoints/{name}"


def _endpoint_response(endpoint: Endpoint, status: int = 200) -> web.Response:
    return json_response(view(endpoint), status=status, headers={"ETag": quoted(str(endpoint.version))})


def routes(deps: Deps) -> Routes:
    pool = deps.pool
    proxy: ProxyContext = deps.context
    offline_after = deps.settings.agent_offline_after_seconds
    api = Routes(tag="proxy")

    @api.get(
        "/api/proxy/endpoints",
        summary="List proxy endpoints by name",
        permission="proxy_endpoint_view",
        query=PageQuery,
        response=EndpointPage,
    )
    async def list_endpoints(request: web.Request) -> web.Response:
        return json_response(await service.list_endpoints(pool, parse_query(request, PageQuery)))

    @api.post(
        "/api/proxy/endpoints",
        summary="Create a proxy endpoint",
        permission="proxy_endpoint_edit",
        body=EndpointCreate,
        response=EndpointView,
        status=201,
    )
    async def create_endpoint(request: web.Request) -> web.Response:
        body = await read_json(request, EndpointCreate)
        endpoint = await service.create_endpoint(pool, principal_of(request).actor(), body)
        return _endpoint_response(endpoint, 201)

    @api.get(ENDPOINT, summary="One proxy endpoint", permission="proxy_endpoint_view", response=EndpointView)
    async def get_endpoint(request: web.Request) -> web.Response:
        return _endpoint_response(await service.get_endpoint(pool, request.match_info["name"]))

    @api.put(
        ENDPOINT,
        summary="Replace a proxy endpoint (honours If-Match)",
        permission="proxy_endpoint_edit",
        body=EndpointSpec,
        response=EndpointView,
    )
    async def replace_endpoint(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        spec = await read_json(request, EndpointSpec)
        actor = principal_of(request).actor()
        endpoint = await service.replace_endpoint(pool, actor, name, spec, request.headers.get("If-Match"))
        proxy.forget_endpoint(name)
        return _endpoint_response(endpoint)

    @api.delete(
        ENDPOINT, summary="Delete a proxy endpoint (honours If-Match)", permission="proxy_endpoint_edit", status=204
    )
    async def delete_endpoint(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await service.delete_endpoint(pool, principal_of(request).actor(), name, request.headers.get("If-Match"))
        proxy.forget_endpoint(name)
        return web.Response(status=204)

    @api.get(
        "/api/proxy/agents",
        summary="Delegate agents with status, last heartbeat, version and live replicas",
        permission="proxy_agent_view",
        response=AgentList,
    )
    async def list_agents(request: web.Request) -> web.Response:
        return json_response(await service.list_agents(pool, offline_after))

    @api.post(
        "/api/proxy/agents",
        summary="Register a delegate agent and mint its token (shown once)",
        permission="proxy_agent_edit",
        body=AgentCreate,
        response=MintedAgent,
        status=201,
    )
    async def mint_agent(request: web.Request) -> web.Response:
        body = await read_json(request, AgentCreate)
        return json_response(await service.mint_agent(pool, principal_of(request).actor(), body), status=201)

    @api.post(
        "/api/proxy/agents/{agent}/revoke",
        summary="Revoke an agent's token; its replicas are refused and stop",
        permission="proxy_agent_edit",
        response=AgentView,
    )
    async def revoke_agent(request: web.Request) -> web.Response:
        agent = request.match_info["agent"]
        revoked = await service.revoke_agent(pool, principal_of(request).actor(), agent, offline_after)
        proxy.agents = [a for a in proxy.agents if a.id != agent]
        return json_response(revoked)

    async def forward(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        name = request.match_info["name"]
        check_name(name)
        principal = principal_of(request)
        endpoint = await proxy.endpoint(name)
        if not proxy.may_use(principal, endpoint):
            raise NotAllowedError(f"may not use proxy endpoint {name}")
        spec = endpoint.spec
        if request.method not in spec.methods:
            raise web.HTTPMethodNotAllowed(request.method, spec.methods)
        prefix = f"/api/proxy/{name}"
        url, headers, body = _outbound(request, spec, prefix)
        status = 502
        upstream = None
        try:
            if _wants_websocket(request):
                if not spec.websocket:
                    raise InputError.for_field("header.Upgrade", f"endpoint {name} does not accept WebSockets")
                upstream = await proxy.open_socket(endpoint, url, headers, _offered_protocols(request))
                status = 101
                return await _splice(request, upstream)
            upstream = await proxy.send(endpoint, request.method, url, headers, body)
            status = upstream.status
            return await _relay(request, upstream, response_headers(spec, upstream.headers, public_prefix=prefix))
        except ProblemError as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # the caller hung up; the cancellation reaches the upstream call or the agent
            raise
        finally:
            if upstream is not None:
                await upstream.close()
            proxy.access.record(
                method=request.method,
                endpoint=name,
                status=status,
                duration=time.perf_counter() - started,
                caller=principal.actor(),
                agent=upstream.agent if upstream else None,
            )

    for method in METHODS:
        handler = _named(forward, f"proxy_{method.lower()}")
        summary = f"Forward a {method} request to the named endpoint (directly or through a delegate agent)"
        if method == "GET":
            summary += "; with `Upgrade: websocket`, open a WebSocket to it (endpoints with `websocket: true`)"
        api.route(method, "/api/proxy/{name}", summary=summary, permission="proxy_endpoint_use")(handler)
        api.route(method, "/api/proxy/{name}/{path:[\\s\\S]*}", summary=summary, permission="proxy_endpoint_use")(
            _named(forward, f"proxy_{method.lower()}_path")
        )
    return api


def _outbound(
    request: web.Request, spec: EndpointSpec, prefix: str
) -> tuple[URL, list[tuple[str, str]], BodyReader | None]:
    """The checked upstream URL, the headers to send and the body reader; problems for bad input."""
    raw_path, _, raw_query = request.raw_path.partition("?")
    url = upstream_url(spec, forwarded_path(raw_path[len(prefix) :]), raw_query)
    if request.content_length is not None and request.content_length > spec.max_body_bytes:
        raise PayloadTooLargeError(f"request body exceeds {spec.max_body_bytes} bytes")
    headers = request_headers(
        spec,
        [(str(k), v) for k, v in request.headers.items()],
        client=request.remote or "",
        host=request.host,
        scheme=request.scheme,
        prefix=prefix,
    )
    if request.content_length is not None:
        headers.append(("Content-Length", str(request.content_length)))
    body = BodyReader(request.content.iter_chunked(CHUNK_BYTES), spec.max_body_bytes) if request.body_exists else None
    return url, headers, body


def _wants_websocket(request: web.Request) -> bool:
    return request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket"


def _offered_protocols(request: web.Request) -> list[str]:
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in offered.split(",") if p.strip()]


async def _splice(request: web.Request, upstream: UpstreamSocket) -> web.WebSocketResponse:
    """Accept the caller's WebSocket with the subprotocol the upstream chose, then carry messages both ways until
    either side closes."""
    caller = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (), max_msg_size=upstream.max_message_bytes
    )
    caller.headers["X-Request-Id"] = request[REQUEST_ID_KEY]
    await caller.prepare(request)
    await splice(AiohttpSocket(caller), upstream.socket)
    return caller


def _named(handler: Handler, name: str) -> Handler:
    """A wrapper with its own name, so each method's operation has a distinct OpenAPI operationId."""

    async def named(request: web.Request) -> web.StreamResponse:
        return await handler(request)

    named.__name__ = name
    return named


async def _relay(
    request: web.Request, upstream: UpstreamResponse, headers: list[tuple[str, str]]
) -> web.StreamResponse:
    """Stream the upstream's answer to the caller. Once the head is sent an upstream failure can no longer become
    a problem response, so the connection is aborted: a truncated body must never look complete."""
    response = web.StreamResponse(status=upstream.status)
    for key, value in headers:
        response.headers.add(key, value)
    response.headers["X-Request-Id"] = request[REQUEST_ID_KEY]
    await response.prepare(request)
    try:
        async for chunk in upstream.body:
            await response.write(chunk)
    except ConnectionResetError:
        log.info("the caller of %s went away mid-response", request.match_info["name"])
        return response
    except ProblemError as exc:
        log.warning("proxied response from %s broke off: %s", request.match_info["name"], exc.detail)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response
