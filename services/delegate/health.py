"""Liveness and readiness of an agent replica, for a platform's probes (Kubernetes `httpGet`).

The agent serves nothing to the network, so the probes read what its heartbeats learn:

- **live** while NATS has shown within `unhealthy_after` seconds that the replica's connection works: the
  plugin-proxy answered a heartbeat, or the NATS server itself replied that nobody serves heartbeats (the proxy is
  away, which a restart would not cure). A connection that is down, or open but silent, for longer than that ends
  liveness, and the platform restarts the replica.
- **ready** while NATS is connected and the proxy answered a heartbeat within three heartbeat intervals (the proxy
  routes to a replica until it has been silent for about that long).

`serve_health` answers `GET /healthz` and `GET /readyz` with 200 or 503 and a JSON body saying why.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web

READY_WITHIN_HEARTBEATS = 3
"""A replica is ready while its last answered heartbeat is at most this many intervals old."""


@dataclass
class Health:
    """What the heartbeats have shown so far; `clock` is monotonic seconds."""

    unhealthy_after: float
    """Longest time without a working NATS connection before the replica counts as dead."""
    clock: Callable[[], float] = time.monotonic
    started_at: float = field(init=False)
    link_proven_at: float | None = None
    """When NATS last answered a heartbeat, with the proxy's reply or with "no responders"."""
    answered_at: float | None = None
    """When the plugin-proxy last answered a heartbeat."""
    heartbeat_seconds: float = 2.0

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    def heartbeat_answered(self, interval_seconds: float) -> None:
        self.answered_at = self.link_proven_at = self.clock()
        self.heartbeat_seconds = interval_seconds

    def proxy_absent(self) -> None:
        """NATS replied that no plugin-proxy serves heartbeats: the connection works, registration does not."""
        self.link_proven_at = self.clock()

    def liveness(self) -> tuple[bool, str]:
        since = self.link_proven_at if self.link_proven_at is not None else self.started_at
        silent = self.clock() - since
        if silent > self.unhealthy_after:
            return False, f"NATS has not answered a heartbeat for {silent:.0f}s (limit {self.unhealthy_after:g}s)"
        return True, "NATS answers heartbeats"

    def readiness(self, connected: bool) -> tuple[bool, str]:
        if not connected:
            return False, "NATS is not connected"
        if self.answered_at is None:
            return False, "the plugin-proxy has not answered a heartbeat yet"
        silent = self.clock() - self.answered_at
        if silent > READY_WITHIN_HEARTBEATS * self.heartbeat_seconds:
            return False, f"the plugin-proxy has not answered a heartbeat for {silent:.0f}s"
        return True, "registered with the plugin-proxy"


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets); raises ValueError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


@contextlib.asynccontextmanager
async def serve_health(health: Health, connected: Callable[[], bool], address: str) -> AsyncIterator[str]:
    """Serve the probes on `address` until the block ends; yields the URL they are served at."""

    def answer(state: tuple[bool, str]) -> web.Response:
        ok, reason = state
        return web.json_response({"status": "ok" if ok else "unhealthy", "reason": reason}, status=200 if ok else 503)

    async def healthz(request: web.Request) -> web.Response:
        return answer(health.liveness())

    async def readyz(request: web.Request) -> web.Response:
        return answer(health.readiness(connected()))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        host, port = parse_address(address)
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()
