"""Identity-sync's NATS side: the rpc every service's token verifier calls."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors

from services.identity_sync import tokens
from shared.bus import serve_rpc
from shared.service import Deps
from shared.tokens import IDENTITY_SERVICE, ApiKeyCheck, Empty, RevocationsRequest, SeenBatch


async def serve_token_rpc(deps: Deps) -> None:
    """Answer `jwks`, `revocations`, `verify_api_key` and `seen` until cancelled."""
    pool, ttl = deps.pool, deps.settings.access_token_ttl_seconds
    await tokens.ensure_signing_key(pool)

    async def jwks(_: Empty):
        return await tokens.jwks(pool, ttl)

    async def revocations(request: RevocationsRequest):
        return await tokens.revocations(pool, request.since)

    async def verify_api_key(request: ApiKeyCheck):
        return await tokens.verify_api_key(pool, request.key)

    async def seen(batch: SeenBatch):
        await tokens.record_seen(pool, batch)
        return Empty()

    subscriptions = [
        await serve_rpc(deps.nc, IDENTITY_SERVICE, "jwks", Empty, jwks),
        await serve_rpc(deps.nc, IDENTITY_SERVICE, "revocations", RevocationsRequest, revocations),
        await serve_rpc(deps.nc, IDENTITY_SERVICE, "verify_api_key", ApiKeyCheck, verify_api_key),
        await serve_rpc(deps.nc, IDENTITY_SERVICE, "seen", SeenBatch, seen),
    ]
    try:
        await asyncio.Event().wait()
    finally:
        for subscription in subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
