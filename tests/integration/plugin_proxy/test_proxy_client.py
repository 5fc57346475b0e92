"""`shared.proxy_client`, as other services use it, against a running proxy and a loopback upstream."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import WSMsgType

from shared.errors import (
    AuthenticationError,
    BadGatewayError,
    InputError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from shared.proxy_client import ProxyClient
from tests.conftest import DEV_TOKEN
from tests.integration.plugin_proxy.conftest import WebSocketUpstream, serve, websocket_app


@pytest.fixture
async def client(proxy):
    client = ProxyClient(proxy.url, lambda: DEV_TOKEN)
    yield client
    await client.close()


async def test_fetch_and_stream_through_a_named_endpoint(proxy, http, upstream, client):
    body = {"name": "files", "target": upstream, "allow_networks": ["127.0.0.1/32"], "methods": ["GET", "POST"]}
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
        assert r.status == 201
    response = await client.fetch("files", "/echo/README.md", params={"ref": "main"})
    assert response.status == 200 and response.json()["path"] == "/echo/README.md?ref=main"
    posted = await client.fetch("files", "/upload", method="POST", body=b"abc")
    assert posted.json() == {"received": 3}
    async with client.stream("files", "/stream", params={"bytes": str(300_000)}) as stream:
        assert sum([len(c) async for c in stream.content.iter_chunked(65536)]) == 300_000
    with pytest.raises(PayloadTooLargeError):
        await client.fetch("files", "/stream", params={"bytes": "5000"}, max_bytes=4096)


async def test_proxy_problems_are_raised_as_errors(proxy, http, client):
    with pytest.raises(NotFoundError, match="no proxy endpoint missing"):
        await client.fetch("missing", "/x")
    body = {"name": "nobody-home", "target": "http://internal.test", "delegate": {"tags": ["absent"]}}
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
        assert r.status == 201
    with pytest.raises(ServiceUnavailableError, match="no online delegate agent"):
        await client.fetch("nobody-home", "/x")


async def test_websocket_through_a_named_endpoint(proxy, chat_endpoint):
    """Direct and through an agent: the client's current token opens the socket, messages flow both ways, and
    leaving the block closes the upstream's socket; the upstream never sees the token."""
    name, seen = chat_endpoint
    tokens_handed_out = []

    def token() -> str:
        tokens_handed_out.append(DEV_TOKEN)
        return DEV_TOKEN

    client = ProxyClient(proxy.url, token)
    try:
        async with client.websocket(name, "/chat", protocols=["chat.v1"], headers={"X-Tenant": "t1"}) as ws:
            assert ws.protocol == "chat.v1"
            assert await ws.receive_str() == "hello"
            await ws.send_str("ping")
            assert await ws.receive_str() == "echo:ping"
            await ws.send_bytes(b"\x01\x02")
            assert await ws.receive_bytes() == b"\x02\x01"
        assert await asyncio.wait_for(seen.closes.get(), 30) == 1000
    finally:
        await client.close()
    assert tokens_handed_out
    (handshake,) = seen.handshakes
    lowered = {k.lower(): v for k, v in handshake.items()}
    assert lowered["x-tenant"] == "t1" and "authorization" not in lowered


async def test_websocket_closes_from_the_upstream_reach_the_client(proxy, chat_endpoint, client):
    name, seen = chat_endpoint
    async with client.websocket(name, "/chat") as ws:
        assert await ws.receive_str() == "hello"
        await ws.send_str("close-me")
        message = await ws.receive()
        assert message.type == WSMsgType.CLOSE and message.data == 4002
    await asyncio.wait_for(seen.closes.get(), 30)


async def test_refused_websocket_handshakes_raise_problems(proxy, http, client):
    runner, url = await serve(websocket_app(WebSocketUpstream()))
    try:
        for name, spec in [
            ("plain", {"allow_networks": ["127.0.0.1/32"]}),
            ("guarded", {"websocket": True}),
            ("agentless", {"websocket": True, "delegate": {"tags": ["absent"]}}),
        ]:
            async with http.post(f"{proxy.url}/api/proxy/endpoints", json={"name": name, "target": url, **spec}) as r:
                assert r.status == 201, await r.text()
        refusals = [
            ("missing", NotFoundError),
            ("plain", InputError),  # the endpoint does not accept WebSockets
            ("guarded", BadGatewayError),  # its SSRF rules refuse the loopback target
            ("agentless", ServiceUnavailableError),
        ]
        for name, error in refusals:
            with pytest.raises(error, match=f"WebSocket to {name}/chat"):
                async with client.websocket(name, "/chat"):
                    pass
        stranger = ProxyClient(proxy.url, "not-a-token-of-this-suite")
        try:
            with pytest.raises(AuthenticationError):
                async with stranger.websocket("plain", "/chat"):
                    pass
        finally:
            await stranger.close()
    finally:
        await runner.cleanup()
