"""A caller that hangs up before the upstream's response head: the upstream sees its request closed, in both
modes."""

from __future__ import annotations

import asyncio

from yarl import URL

from shared.events import decode_event
from tests.conftest import DEV_TOKEN
from tests.helpers import eventually
from tests.integration.plugin_proxy.conftest import serve, upstream_app


async def add_endpoint(http, proxy, name, target, **spec):
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json={"name": name, "target": target, **spec}) as r:
        assert r.status == 201, await r.text()


async def hang_up_once_arrived(proxy_url: str, path: str, arrived: asyncio.Event) -> None:
    """Send a request, wait until the upstream has it, then close the connection without reading an answer."""
    url = URL(proxy_url)
    _, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {DEV_TOKEN}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.wait_for(arrived.wait(), 30)
    writer.close()
    await writer.wait_closed()


async def access_statuses(proxy, endpoint: str) -> list[int]:
    async with proxy.deps.pool.acquire() as conn:
        rows = await conn.fetch("SELECT payload FROM outbox ORDER BY seq")
    events = [decode_event(r["payload"]) for r in rows]
    return [e.data["status"] for e in events if e.type == "plugin_proxy.request.proxied" and e.resource.id == endpoint]


async def test_direct_upstream_sees_the_hang_up(proxy, http):
    arrived, interrupted = asyncio.Event(), asyncio.Event()
    runner, url = await serve(upstream_app(interrupted, arrived))
    try:
        await add_endpoint(http, proxy, "slow", url, allow_networks=["127.0.0.1/32"], timeout_seconds=60)
        await hang_up_once_arrived(proxy.url, "/api/proxy/slow/slow?seconds=60", arrived)
        await asyncio.wait_for(interrupted.wait(), 30)  # a guard against hanging, far below the 60 s stall
        assert await eventually(lambda: access_statuses(proxy, "slow")) == [499]
    finally:
        await runner.cleanup()


async def test_delegated_upstream_sees_the_hang_up(proxy, http, start_agents):
    arrived, interrupted = asyncio.Event(), asyncio.Event()
    runner, url = await serve(upstream_app(interrupted, arrived), host="127.0.0.2")
    try:
        await start_agents("hang-up", replicas=1)
        await add_endpoint(http, proxy, "slow", url, delegate={"tags": ["eu"]}, timeout_seconds=60)
        await hang_up_once_arrived(proxy.url, "/api/proxy/slow/slow?seconds=60", arrived)
        await asyncio.wait_for(interrupted.wait(), 30)
    finally:
        await runner.cleanup()
