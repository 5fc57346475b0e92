"""The shared HTTP layer turns unexpected failures into problem+json too, never a plain-text 500."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from shared.auth import dev_token_authenticator
from shared.http import PUBLIC, Routes, create_app


def failing_app() -> web.Application:
    routes = Routes(tag="test")

    @routes.get("/boom", summary="fails unexpectedly", permission=PUBLIC)
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret detail that must not leak")

    @routes.get("/db-gone", summary="loses its database", permission=PUBLIC)
    async def db_gone(request: web.Request) -> web.Response:
        raise asyncpg.InterfaceError("connection is closed")

    return create_app(
        service="test",
        version="0",
        routes=routes,
        authenticate=dev_token_authenticator(None),
        readiness=[],
        max_body_bytes=1024,
    )


async def test_unexpected_errors_are_problems_without_details(aiohttp_client):
    client = await aiohttp_client(failing_app())
    response = await client.get("/boom")
    assert response.status == 500 and response.content_type == "application/problem+json"
    body = await response.text()
    assert "secret detail" not in body and "Traceback" not in body
    assert response.headers["X-Request-Id"]
    response = await client.get("/db-gone")
    assert response.status == 503 and response.content_type == "application/problem+json"
