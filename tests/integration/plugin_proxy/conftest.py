"""The plugin-proxy service and real upstream aiohttp servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio
from aiohttp import web

from services.plugin_proxy.app import DEFINITION, Settings
from shared.service import RunningService, running_service


@pytest_asyncio.fixture
async def proxy(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    """The proxy with every call sampled into an access event."""
    async with running_service(DEFINITION, make_settings(Settings, access_sample_rate=1.0)) as service:
        yield service


def upstream_app() -> web.Application:
    """An internal system: echoes what it got, streams, stalls, redirects."""

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
        while size > 0:
            await response.write(block[: min(size, len(block))])
            size -= len(block)
        await response.write_eof()
        return response

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("seconds", "5")))
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
    runner = web.AppRunner(app, access_log=None)
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
