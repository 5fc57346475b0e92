"""Identity-sync's background work: the rpc every service's token verifier calls, and the LDAP schedule."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import nats.errors

from services.identity_sync import sync, tokens
from shared.bus import serve_rpc
from shared.errors import ProblemError
from shared.events import Actor
from shared.service import Deps
from shared.tokens import IDENTITY_SERVICE, ApiKeyCheck, Empty, RevocationsRequest, SeenBatch

log = logging.getLogger(__name__)
LDAP_SCHEDULE = Actor("system", "ldap-sync")


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


async def sync_ldap_periodically(deps: Deps) -> None:
    """Sync the configured directory every `sync_interval_seconds`; idle when there is none or no interval."""
    config = deps.settings.ldap
    if config is None or not config.sync_interval_seconds:
        await asyncio.Event().wait()
        return
    while True:
        try:
            run = await sync.sync_ldap(deps.pool, LDAP_SCHEDULE, config)
            log.info(
                "ldap sync: %d created, %d updated, %d deactivated, %d deleted, %d issues",
                run.created,
                run.updated,
                run.deactivated,
                run.deleted,
                len(run.issues),
            )
        except (ProblemError, asyncpg.PostgresError, OSError) as exc:  # tried again at the next interval
            log.warning("ldap sync failed: %s", exc)
        await asyncio.sleep(config.sync_interval_seconds)
