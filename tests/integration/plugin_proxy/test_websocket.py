"""WebSocket upgrades through `ANY /api/proxy/{name}/{path}`, direct and through a delegate agent, against a real
aiohttp WebSocket upstream."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import WSMsgType

from tests.conftest import DEV_TOKEN
from tests.integration.plugin_proxy.conftest import WebSocketUpstream, serve, websocket_app


async def test_messages_flow_both_ways(proxy, http, chat_endpoint):
    name, seen = chat_endpoint
    headers = {"X-Tenant": "t1", "Cookie": "session=caller"}
    async with http.ws_connect(f"{proxy.url}/api/proxy/{name}/chat", protocols=("chat.v1",), headers=headers) as ws:
        assert ws.protocol == "chat.v1"
        assert await ws.receive_str() == "hello"
        await ws.send_str("ping")
        assert await ws.receive_str() == "echo:ping"
        await ws.send_bytes(b"\x00\x01\x02")
        assert await ws.receive_bytes() == b"\x02\x01\x00"
        for i in range(50):  # more messages than the delegate's credit window
            await ws.send_str(str(i))
        assert [await ws.receive_str() for _ in range(50)] == [f"echo:{i}" for i in range(50)]
    (handshake,) = seen.handshakes
    lowered = {k.lower(): v for k, v in handshake.items()}
    assert lowered["x-tenant"] == "t1" and lowered["x-forwarded-prefix"] == f"/api/proxy/{name}"
    assert "authorization" not in lowered and "cookie" not in lowered


async def test_a_close_from_either_side_reaches_the_other(proxy, http, chat_endpoint):
    name, seen = chat_endpoint
    async with http.ws_connect(f"{proxy.url}/api/proxy/{name}/chat") as ws:
        assert await ws.receive_str() == "hello"
        await ws.close(code=4001, message=b"done")
    assert await asyncio.wait_for(seen.closes.get(), 30) == 4001

    async with http.ws_connect(f"{proxy.url}/api/proxy/{name}/chat") as ws:
        assert await ws.receive_str() == "hello"
        await ws.send_str("close-me")
        message = await ws.receive()
        assert message.type == WSMsgType.CLOSE and message.data == 4002 and message.extra == "asked to"
    await asyncio.wait_for(seen.closes.get(), 30)  # its closing handshake completed


async def test_a_caller_that_vanishes_closes_the_upstream(proxy, chat_endpoint):
    name, seen = chat_endpoint
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {DEV_TOKEN}"}) as session:
        ws = await session.ws_connect(f"{proxy.url}/api/proxy/{name}/chat")
        assert await ws.receive_str() == "hello"
    # the session closed the TCP connection under the socket without a closing handshake
    assert await asyncio.wait_for(seen.closes.get(), 30) is not None


async def test_a_message_over_the_limit_closes_with_1009(proxy, http, chat_endpoint):
    _, seen = chat_endpoint
    async with http.ws_connect(f"{proxy.url}/api/proxy/chat-small/chat") as ws:
        assert await ws.receive_str() == "hello"
        await ws.send_bytes(b"z" * 2048)
        message = await ws.receive()
        assert message.type == WSMsgType.CLOSE and message.data == 1009
    await asyncio.wait_for(seen.closes.get(), 30)


async def test_a_dead_agent_closes_the_callers_socket(proxy, http, start_agents):
    seen = WebSocketUpstream()
    runner, url = await serve(websocket_app(seen), host="127.0.0.2")
    try:
        agents = await start_agents("doomed-sockets", replicas=1)
        body = {"name": "chat", "target": url, "websocket": True, "delegate": {"tags": ["eu"]}}
        async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
            assert r.status == 201, await r.text()
        async with http.ws_connect(f"{proxy.url}/api/proxy/chat/chat") as ws:
            assert await ws.receive_str() == "hello"
            agents.processes[0].kill()
            message = await asyncio.wait_for(ws.receive(), 30)  # the keepalives stop: silence ends it
            assert message.type == WSMsgType.CLOSE and message.data == 1011
            assert "went silent" in message.extra
    finally:
        await runner.cleanup()


async def test_upgrades_are_refused_where_not_allowed(proxy, http, anonymous_http):
    runner, url = await serve(websocket_app(WebSocketUpstream()))
    try:
        for name, spec in [
            ("plain", {"allow_networks": ["127.0.0.1/32"]}),
            ("guarded", {"websocket": True}),
            ("moved", {"websocket": True, "allow_networks": ["127.0.0.1/32"]}),
        ]:
            body = {"name": name, "target": url, **spec}
            async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
                assert r.status == 201, await r.text()
        expectations = [("plain/chat", 400), ("guarded/chat", 502), ("moved/moved", 502)]
        for path, status in expectations:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{proxy.url}/api/proxy/{path}")
            assert refused.value.status == status, path
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
        async with http.get(f"{proxy.url}/api/proxy/moved/moved", headers=upgrade) as r:
            assert r.status == 502 and "redirects are not followed" in (await r.json())["detail"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await anonymous_http.ws_connect(f"{proxy.url}/api/proxy/plain/chat")
        assert refused.value.status == 401
        async with http.get(f"{proxy.url}/api/proxy/plain/chat", headers={"Upgrade": "websocket"}) as r:
            problem = await r.json()
        assert r.status == 400 and problem["errors"][0]["field"] == "header.Upgrade"
        body = {"name": "posting", "target": url, "websocket": True, "methods": ["POST"]}
        async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
            assert r.status == 400 and "$.methods" in await r.text()
    finally:
        await runner.cleanup()
