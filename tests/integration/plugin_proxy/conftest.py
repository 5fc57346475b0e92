"""The plugin-proxy service and real upstream aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import WSMsgType, web

from services.plugin_proxy.app import DEFINITION, Settings
from shared.service import RunningService, running_service
from tests.helpers import eventually
from tests.integration.test_access_enforcement import call, grant


@pytest_asyncio.fixture
async def proxy(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    """The proxy with every call sampled into an access event; agents heartbeat every half second."""
    settings = make_settings(
        Settings, access_sample_rate=1.0, agent_heartbeat_seconds=0.5, agent_offline_after_seconds=2.0
    )
    async with running_service(DEFINITION, settings) as service:
        yield service


def upstream_app(interrupted: asyncio.Event | None = None, arrived: asyncio.Event | None = None) -> web.Application:
    """An internal system: echoes what it got, streams, stalls, redirects; sets `arrived` when a stall starts and
    `interrupted` when a caller hangs up on a stream or a stall."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": dict(request.headers),
                "body_bytes": len(body),
            },
            headers={"ETag": '"v1"', "Set-Cookie": "session=internal", "X-Internal-Debug": "yes"},
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("bytes", "0"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        block = b"x" * 65536
        try:
            while size > 0:
                await response.write(block[: min(size, len(block))])
                size -= len(block)
        except (ConnectionResetError, asyncio.CancelledError):
            if interrupted is not None:
                interrupted.set()
            raise
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    async def slow(request: web.Request) -> web.Response:
        if arrived is not None:
            arrived.set()
        try:
            await asyncio.sleep(float(request.query.get("seconds", "5")))
        except asyncio.CancelledError:
            if interrupted is not None:
                interrupted.set()
            raise
        return web.json_response({"late": True})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_route("*", "/echo{tail:.*}", echo)
    app.router.add_get("/stream", stream)
    app.router.add_post("/upload", upload)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    return app


async def serve(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://{host}:{port}"


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[str]:
    """Base URL of an upstream on 127.0.0.1."""
    runner, url = await serve(upstream_app())
    yield url
    await runner.cleanup()


@dataclass
class Agents:
    """Delegate agent replicas running as their own processes."""

    id: str
    token: str
    processes: list[subprocess.Popen]


def start_agent_process(
    token: str, nats_url: str, instance: str, tags: list[str], allow: list[str], log: Path, *options: str
) -> subprocess.Popen:
    arguments = ["--token", token, "--nats", nats_url, "--instance", instance, *options]
    arguments += [a for tag in tags for a in ("--tag", tag)] + [a for entry in allow for a in ("--allow", entry)]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.delegate", *arguments],
            stdout=out,
            stderr=out,
            env={**os.environ, "IDP_LOG_LEVEL": "WARNING"},
        )


@pytest_asyncio.fixture
async def start_agents(proxy, http, nats_url, tmp_path) -> AsyncIterator[Callable[..., Any]]:
    """Mint an agent and start replicas of it; waits until the proxy routes to all of them. Kills them after."""
    started: list[subprocess.Popen] = []

    async def start(agent_id: str, *, replicas: int = 2, tags=("eu",), allow=("127.0.0.2/32",)) -> Agents:
        async with http.post(f"{proxy.url}/api/proxy/agents", json={"id": agent_id}) as r:
            assert r.status == 201, await r.text()
            token = (await r.json())["token"]
        processes = [
            start_agent_process(token, nats_url, f"{agent_id}-{i}", list(tags), list(allow), tmp_path / "agents.log")
            for i in range(replicas)
        ]
        started.extend(processes)

        async def all_online() -> bool:
            async with http.get(f"{proxy.url}/api/proxy/agents") as r:
                agent = next(a for a in (await r.json())["items"] if a["id"] == agent_id)
            routed = any(a.id == agent_id for a in proxy.deps.context.agents)
            return agent["status"] == "online" and len(agent["instances"]) == replicas and routed

        await eventually(all_online, timeout=30)
        return Agents(agent_id, token, processes)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest_asyncio.fixture
async def internal_upstream() -> AsyncIterator[str]:
    """An upstream on 127.0.0.2, which only the agents' allowlist reaches."""
    runner, url = await serve(upstream_app(), host="127.0.0.2")
    yield url
    await runner.cleanup()


@dataclass
class WebSocketUpstream:
    """What the upstream saw: each handshake's headers and how each of its sockets closed."""

    url: str = ""
    handshakes: list[dict[str, str]] = field(default_factory=list)
    closes: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)


def websocket_app(seen: WebSocketUpstream) -> web.Application:
    """Greets, then echoes text as `echo:<text>` and binary reversed; `close-me` makes it close with 4002."""

    async def chat(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat.v2", "chat.v1"))
        await ws.prepare(request)
        seen.handshakes.append(dict(request.headers))
        await ws.send_str("hello")
        async for message in ws:
            if message.type == WSMsgType.TEXT and message.data == "close-me":
                await ws.close(code=4002, message=b"asked to")
            elif message.type == WSMsgType.TEXT:
                await ws.send_str(f"echo:{message.data}")
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        seen.closes.put_nowait(ws.close_code)
        return ws

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    app = web.Application()
    app.router.add_get("/chat", chat)
    app.router.add_get("/moved", moved)
    return app


@pytest_asyncio.fixture(params=["direct", "delegated"])
async def chat_endpoint(request, proxy, http, start_agents) -> AsyncIterator[tuple[str, WebSocketUpstream]]:
    """A WebSocket endpoint `chat` whose upstream is reached directly (127.0.0.1, allowed by the endpoint) or only
    through an agent (127.0.0.2, in its allowlist)."""
    seen = WebSocketUpstream()
    delegated = request.param == "delegated"
    runner, seen.url = await serve(websocket_app(seen), host="127.0.0.2" if delegated else "127.0.0.1")
    spec = {"delegate": {"tags": ["eu"]}} if delegated else {"allow_networks": ["127.0.0.1/32"]}
    if delegated:
        await start_agents("sockets", replicas=1)
    for name, limit in [("chat", {}), ("chat-small", {"max_body_bytes": 1024})]:
        body = {"name": name, "target": seen.url, "websocket": True, "request_headers": ["X-Tenant"], **spec, **limit}
        async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
            assert r.status == 201, await r.text()
    yield "chat", seen
    await runner.cleanup()


def gitea_raw_host(
    requests: list[tuple[str, str | None]], content_of: Callable[[web.Request], Awaitable[bytes | str | None]]
) -> web.Application:
    """A git host serving raw files at Gitea's `/{owner}/{repo}/raw/branch/{ref}/{path}`: `content_of(request)` is
    the file (None: 404, or it raises another HTTP error). Records (path, Authorization) of each call."""

    async def raw(request: web.Request) -> web.StreamResponse:
        requests.append((request.path, request.headers.get("Authorization")))
        content = await content_of(request)
        if content is None:
            raise web.HTTPNotFound(text="Not found.")
        body = content.encode() if isinstance(content, str) else content
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{owner}/{repo}/raw/branch/{ref}/{path:.+}", raw)
    return app


async def git_host_behind_proxy(
    stack: contextlib.AsyncExitStack,
    make_settings,
    http,
    app: web.Application,
    account: str,
    **endpoint,
) -> tuple[RunningService, str, str]:
    """`app` served on loopback as a git host behind a new plugin-proxy endpoint (`endpoint`: its name and other
    fields; the target and `allow_networks` are filled in), with identity-sync and the proxy running in `stack`.
    Returns the proxy, the git host's URL and the API key of a new service account `account` that may use every
    endpoint."""
    from services.identity_sync.app import DEFINITION as IDENTITY
    from services.identity_sync.app import Settings as IdentitySettings

    runner, upstream = await serve(app)
    stack.push_async_callback(runner.cleanup)
    identity = await stack.enter_async_context(running_service(IDENTITY, make_settings(IdentitySettings)))
    proxy = await stack.enter_async_context(running_service(DEFINITION, make_settings(Settings)))
    created = await call(http, "POST", f"{identity.url}/api/identity/service-accounts", 201, json={"name": account})
    key = await call(
        http, "POST", f"{identity.url}/api/identity/service-accounts/{created['id']}/keys", 201, json={"name": "proxy"}
    )
    version = await grant(
        http, identity, f"service_account:{created['id']}", "account", permissions=["proxy_endpoint_use"]
    )
    assert await proxy.deps.access.caught_up(version, timeout=10)
    endpoint = {**endpoint, "target": upstream, "allow_networks": ["127.0.0.1/32"]}
    await call(http, "POST", f"{proxy.url}/api/proxy/endpoints", 201, json=endpoint)
    return proxy, upstream, key["key"]
