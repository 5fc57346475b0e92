"""Identity-sync's NATS side of access control: the snapshot every service's replica loads at start-up."""

from __future__ import annotations

import asyncio
import contextlib

from services.identity_sync import access_service
from shared.access import IDENTITY_SERVICE, SNAPSHOT_METHOD, AccessSnapshot, SnapshotRequest
from shared.bus import serve_rpc
from shared.service import Deps


async def serve_access_snapshots(deps: Deps) -> None:
    async def snapshot(_: SnapshotRequest) -> AccessSnapshot:
        return await access_service.snapshot(deps.pool)

    subscription = await serve_rpc(deps.nc, IDENTITY_SERVICE, SNAPSHOT_METHOD, SnapshotRequest, snapshot)
    try:
        await asyncio.Future()  # serve until cancelled
    finally:
        with contextlib.suppress(Exception):  # the connection may already be closing
            await subscription.unsubscribe()
