"""Plugin-proxy bus handlers and background tasks: agent heartbeats, the live-agent cache, silent replicas, and
the sampled access events."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import nats.errors

from services.plugin_proxy import service
from services.plugin_proxy.forwarding import ProxyContext
from shared.bus import serve_rpc
from shared.delegate_wire import Heartbeat, HeartbeatReply
from shared.service import Deps

log = logging.getLogger(__name__)
_TRANSIENT = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, nats.errors.Error)


async def serve_heartbeats(deps: Deps) -> None:
    """Answer `idp.rpc.plugin_proxy.agent_heartbeat` (one proxy replica per heartbeat, in a queue group)."""
    interval = deps.settings.agent_heartbeat_seconds

    async def on_heartbeat(beat: Heartbeat) -> HeartbeatReply:
        return await service.record_heartbeat(deps.pool, beat, interval)

    subscription = await serve_rpc(deps.nc, "plugin_proxy", "agent_heartbeat", Heartbeat, on_heartbeat)
    try:
        await asyncio.Event().wait()
    finally:
        await subscription.unsubscribe()


async def track_agents(deps: Deps, refresh: float = 1.0, sweep_every: int = 5) -> None:
    """Refresh the live-agent cache every `refresh` seconds; every few rounds, turn silent replicas into events."""
    proxy: ProxyContext = deps.context
    offline_after = deps.settings.agent_offline_after_seconds
    rounds = 0
    while True:
        try:
            proxy.agents = await service.live_agents(deps.pool, offline_after)
            if rounds % sweep_every == 0:
                await service.mark_silent_agents(deps.pool, offline_after)
        except _TRANSIENT as exc:
            log.warning("agent registry refresh failed: %s", exc)
        rounds += 1
        await asyncio.sleep(refresh)


async def flush_access_events(deps: Deps, interval: float = 1.0) -> None:
    """Write the sampled access events through the outbox once a second, in one transaction."""
    proxy: ProxyContext = deps.context
    while True:
        await asyncio.sleep(interval)
        events = proxy.access.take()
        if not events:
            continue
        try:
            await service.record_access(deps.pool, events)
        except _TRANSIENT as exc:
            log.warning("%d access events not recorded: %s", len(events), exc)
