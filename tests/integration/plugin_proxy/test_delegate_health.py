"""An agent replica's probes while its NATS server goes away and comes back: the agent as its own process, the
proxy answering its heartbeats, and a real NATS server stopped and started again on the same port."""

from __future__ import annotations

import aiohttp
import pytest

from shared.embedded import free_port
from tests.helpers import eventually
from tests.integration.plugin_proxy.conftest import start_agent_process


async def probe(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.get(url) as r:
            return r.status, (await r.json())["reason"]
    except aiohttp.ClientError as exc:
        return 0, str(exc)


async def test_probes_fail_while_nats_is_gone_and_recover_after_it_returns(proxy, http, nats_server, tmp_path):
    if nats_server is None:
        pytest.skip("needs a NATS server of its own to stop (IDP_NATS_URL is set)")
    async with http.post(f"{proxy.url}/api/proxy/agents", json={"id": "probed"}) as r:
        token = (await r.json())["token"]
    port = free_port()
    agent = start_agent_process(
        token,
        nats_server.url,
        "probed-0",
        ["eu"],
        ["127.0.0.2/32"],
        tmp_path / "agent.log",
        "--health-address",
        f"127.0.0.1:{port}",
        "--unhealthy-after",
        "2",
    )
    healthz, readyz = f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{port}/readyz"
    try:
        async with aiohttp.ClientSession() as session:

            async def states(*expected: int) -> bool:
                found = (await probe(session, healthz))[0], (await probe(session, readyz))[0]
                return found == expected

            await eventually(lambda: states(200, 200), timeout=30)

            nats_server.stop()
            await eventually(lambda: states(503, 503), timeout=30)
            status, reason = await probe(session, healthz)
            assert status == 503 and "NATS has not answered a heartbeat" in reason

            nats_server.start()
            await eventually(lambda: states(200, 200), timeout=60)
            assert agent.poll() is None
    finally:
        agent.kill()
        agent.wait(10)
