"""Delegate agents as separate processes: registration, reach, streaming, revocation, failover, dead agents."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from shared.bus import request_rpc
from shared.delegate_wire import Heartbeat, HeartbeatReply, open_subject
from shared.events import decode_event
from tests.helpers import eventually
from tests.integration.plugin_proxy.conftest import serve, upstream_app

MB = 1024 * 1024


async def add_endpoint(http, proxy, name, target, **spec):
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json={"name": name, "target": target, **spec}) as r:
        assert r.status == 201, await r.text()


def memory(pid: int) -> dict[str, int]:
    """Resident and peak resident bytes of a process (`VmRSS`, `VmHWM`)."""
    with open(f"/proc/{pid}/status") as f:
        return {
            k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f) if k in ("VmRSS", "VmHWM")
        }


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


async def test_the_agent_reaches_what_the_proxy_may_not(proxy, http, start_agents, internal_upstream, upstream):
    agents = await start_agents("corp")
    await add_endpoint(http, proxy, "direct", f"{internal_upstream}/echo")
    await add_endpoint(http, proxy, "via-agent", f"{internal_upstream}/echo", delegate={"tags": ["eu"]})
    await add_endpoint(http, proxy, "outside-allowlist", f"{upstream}/echo", delegate={"tags": ["eu"]})
    async with http.get(f"{proxy.url}/api/proxy/direct/x") as r:
        assert r.status == 502  # 127.0.0.2 is loopback: the proxy's SSRF rules refuse it
    for _ in range(10):
        async with http.get(f"{proxy.url}/api/proxy/via-agent/x?q=1", headers={"X-Other": "no"}) as r:
            assert r.status == 200, await r.text()
            seen = await r.json()
    assert seen["path"] == "/echo/x?q=1" and "authorization" not in {k.lower() for k in seen["headers"]}
    async with http.get(f"{proxy.url}/api/proxy/outside-allowlist/x") as r:
        assert r.status == 502 and "allowlist" in (await r.json())["detail"]

    async with http.get(f"{proxy.url}/api/proxy/agents") as r:
        (listed,) = (await r.json())["items"]
    assert listed["id"] == agents.id and listed["status"] == "online" and listed["tags"] == ["eu"]
    assert listed["version"] and listed["last_heartbeat"] and len(listed["instances"]) == 2
    assert len({i["allowlist_hash"] for i in listed["instances"]}) == 1
    assert "token" not in str(listed)


async def test_credentials_are_resolved_by_the_agent(proxy, http, start_agents, internal_upstream):
    await start_agents("creds")
    await add_endpoint(
        http,
        proxy,
        "needs-secret",
        f"{internal_upstream}/echo",
        delegate={"tags": ["eu"]},
        credentials=[{"header": "X-Api-Key", "secret": "env:HOME"}],
    )
    async with http.get(f"{proxy.url}/api/proxy/needs-secret/") as r:
        sent = {k.lower(): v for k, v in (await r.json())["headers"].items()}
    assert sent["x-api-key"]  # the agent's own environment, never carried over the bus


@pytest.mark.parametrize("size_mb", [20, pytest.param(100, marks=pytest.mark.slow)])
async def test_large_bodies_stream_through_the_agent_with_bounded_memory(
    proxy, http, start_agents, internal_upstream, size_mb
):
    """Both ways, the agent holds at most a few chunks: its peak memory grows by far less than the body."""
    agents = await start_agents("bulk", replicas=1)
    pid = agents.processes[0].pid
    await add_endpoint(
        http,
        proxy,
        "bulk",
        internal_upstream,
        delegate={"tags": ["eu"]},
        methods=["GET", "POST"],
        max_body_bytes=200 * MB,
    )
    size = size_mb * MB
    reset_peak(pid)
    before = memory(pid)["VmRSS"]
    async with http.get(f"{proxy.url}/api/proxy/bulk/stream", params={"bytes": str(size)}) as r:
        assert r.status == 200, await r.text()
        received = 0
        async for chunk in r.content.iter_any():
            received += len(chunk)
    assert received == size

    async def upload():
        block = b"u" * MB
        for _ in range(size // MB):
            yield block

    async with http.post(f"{proxy.url}/api/proxy/bulk/upload", data=upload()) as r:
        assert (await r.json()) == {"received": size}
    assert memory(pid)["VmHWM"] - before < 16 * MB


async def test_oversized_bodies_through_an_agent_are_413_at_once(proxy, http, start_agents, internal_upstream):
    await start_agents("limits", replicas=1)
    await add_endpoint(
        http, proxy, "small", internal_upstream, delegate={"tags": ["eu"]}, methods=["POST"], max_body_bytes=MB
    )

    async def chunked():
        for _ in range(4):
            yield b"y" * MB

    started = time.monotonic()
    async with http.post(f"{proxy.url}/api/proxy/small/upload", data=chunked()) as r:
        assert r.status == 413 and r.content_type == "application/problem+json"
    assert time.monotonic() - started < 5  # not the endpoint's 30 s timeout
    async with http.post(f"{proxy.url}/api/proxy/small/upload", data=b"z" * 1000) as r:
        assert (await r.json()) == {"received": 1000}


async def test_timeouts_and_cancellation_reach_the_upstream(proxy, http, start_agents):
    interrupted = asyncio.Event()
    runner, url = await serve(upstream_app(interrupted), host="127.0.0.2")
    try:
        await start_agents("cancel", replicas=1)
        await add_endpoint(http, proxy, "slow", url, delegate={"tags": ["eu"]}, timeout_seconds=0.5)
        started = time.monotonic()
        async with http.get(f"{proxy.url}/api/proxy/slow/slow", params={"seconds": "30"}) as r:
            assert r.status == 504 and r.content_type == "application/problem+json"
        assert time.monotonic() - started < 3
        await asyncio.wait_for(interrupted.wait(), 5)

        interrupted.clear()
        await add_endpoint(http, proxy, "stream", url, delegate={"tags": ["eu"]})
        async with http.get(f"{proxy.url}/api/proxy/stream/stream", params={"bytes": str(2000 * MB)}) as r:
            await r.content.readexactly(MB)
            r.close()  # the caller hangs up mid-body
        await asyncio.wait_for(interrupted.wait(), 10)
    finally:
        await runner.cleanup()


async def test_dead_agents_fail_fast_and_revoked_agents_stop(proxy, http, start_agents, internal_upstream):
    agents = await start_agents("doomed", replicas=1)
    await add_endpoint(http, proxy, "doomed", f"{internal_upstream}/echo", delegate={"tags": ["eu"]})
    async with http.post(f"{proxy.url}/api/proxy/agents/doomed/revoke") as r:
        assert r.status == 200 and (await r.json())["status"] == "revoked"
    started = time.monotonic()
    async with http.get(f"{proxy.url}/api/proxy/doomed/x") as r:
        assert r.status == 503 and r.content_type == "application/problem+json"
    assert time.monotonic() - started < 0.5
    assert await asyncio.to_thread(agents.processes[0].wait, 10) == 3  # refused at its next heartbeat

    agents = await start_agents("mortal", replicas=1)
    await add_endpoint(http, proxy, "mortal", f"{internal_upstream}/echo", delegate={"tags": ["mortal"]})
    agents.processes[0].kill()
    agents.processes[0].wait(10)
    started = time.monotonic()
    async with http.get(f"{proxy.url}/api/proxy/mortal/x") as r:
        assert r.status == 503 and r.content_type == "application/problem+json"
    assert time.monotonic() - started < 0.5  # NATS answers "no responders" at once


async def test_an_agent_that_never_answers_is_a_503(proxy, http):
    async with http.post(f"{proxy.url}/api/proxy/agents", json={"id": "mute"}) as r:
        token = (await r.json())["token"]
    nc = proxy.deps.nc
    beat = Heartbeat(token=token, instance="mute-0", version="0", tags=["mute"], allowlist_hash="-")
    await request_rpc(nc, "plugin_proxy", "agent_heartbeat", beat, HeartbeatReply)
    subscription = await nc.subscribe(open_subject("mute"), queue="delegate-mute")  # takes requests, never answers
    try:
        await eventually(lambda: asyncio.sleep(0, any(a.id == "mute" for a in proxy.deps.context.agents)))
        await add_endpoint(http, proxy, "mute", "http://internal.test/", delegate={"tags": ["mute"]})
        started = time.monotonic()
        async with http.get(f"{proxy.url}/api/proxy/mute/x") as r:
            assert r.status == 503 and "did not answer" in (await r.json())["detail"]
        assert time.monotonic() - started < 3
    finally:
        await subscription.unsubscribe()


async def test_failover_when_one_replica_dies(proxy, http, start_agents, internal_upstream):
    agents = await start_agents("pair", replicas=2)
    await add_endpoint(http, proxy, "pair", f"{internal_upstream}/echo", delegate={"tags": ["eu"]})

    async def call() -> int:
        async with http.get(f"{proxy.url}/api/proxy/pair/x") as r:
            return r.status

    assert set(await asyncio.gather(*(call() for _ in range(20)))) == {200}
    agents.processes[0].send_signal(signal.SIGKILL)
    agents.processes[0].wait(10)
    statuses = [await call() for _ in range(20)]
    assert statuses == [200] * 20


async def test_agent_changes_are_events(proxy, http, start_agents, internal_upstream):
    agents = await start_agents("evented", replicas=1)
    agents.processes[0].kill()
    agents.processes[0].wait(10)
    async with http.post(f"{proxy.url}/api/proxy/agents/evented/revoke") as r:
        assert r.status == 200

    async def agent_events():
        async with proxy.deps.pool.acquire() as conn:
            rows = await conn.fetch("SELECT payload FROM outbox ORDER BY seq")
        types = [e.type for e in map(decode_event, (r["payload"] for r in rows)) if e.resource.kind == "agent"]
        assert "plugin_proxy.agent.disconnected" in types
        return types

    types = await eventually(agent_events, timeout=20)
    assert types[:3] == ["plugin_proxy.agent.created", "plugin_proxy.agent.connected", "plugin_proxy.agent.revoked"]


@pytest.mark.parametrize("body", [{"id": "Bad Id"}, {"id": "ok", "extra": 1}, {}])
async def test_bad_agent_requests_are_problems(proxy, http, body):
    async with http.post(f"{proxy.url}/api/proxy/agents", json=body) as r:
        assert r.status == 400 and r.content_type == "application/problem+json"
    async with http.post(f"{proxy.url}/api/proxy/agents/nobody/revoke") as r:
        assert r.status == 404


async def test_a_replica_dying_mid_exchange_is_a_503_within_seconds(proxy, http, start_agents, internal_upstream):
    agents = await start_agents("fragile", replicas=1)
    await add_endpoint(http, proxy, "fragile", internal_upstream, delegate={"tags": ["eu"]}, timeout_seconds=60)

    async def kill_soon():
        await asyncio.sleep(1.5)
        agents.processes[0].kill()

    started = time.monotonic()
    killer = asyncio.create_task(kill_soon())
    async with http.get(f"{proxy.url}/api/proxy/fragile/slow", params={"seconds": "30"}) as r:
        assert r.status == 503 and "went silent" in (await r.json())["detail"]
    await killer
    assert time.monotonic() - started < 8  # not the endpoint's 60 s
