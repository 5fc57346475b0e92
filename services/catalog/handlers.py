"""Catalog's bus handlers: request/reply reads of stitched entities for other services."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from services.catalog import service
from services.catalog.model import ByRefsRequest
from shared.bus import serve_rpc
from shared.catalog_client import SERVICE, EntitiesReply, EntitiesRequest, EntityPageReply, EntityPageRequest
from shared.service import Deps

_REPLY_OVERHEAD = 1024
_encode = msgspec.json.encode


def fit_reply(items: list[dict[str, Any]], max_bytes: int) -> list[dict[str, Any]]:
    """The longest prefix of `items` whose JSON fits in a NATS message of `max_bytes` (at least one item)."""
    budget = max_bytes - _REPLY_OVERHEAD
    for index, item in enumerate(items):
        budget -= len(_encode(item)) + 1
        if budget < 0:
            return items[: max(index, 1)]
    return items


async def serve_entity_reads(deps: Deps) -> None:
    """Answer `idp.rpc.catalog.entities` and `idp.rpc.catalog.page` until cancelled."""
    pool = deps.pool

    async def entities(request: EntitiesRequest) -> EntitiesReply:
        items = await service.get_by_uids(pool, request.uids) if request.uids else []
        if request.refs:
            by_refs = await service.get_by_refs(pool, request.scope, ByRefsRequest(entityRefs=request.refs))
            seen = {item["metadata"]["uid"] for item in items}
            items += [i for i in by_refs.items if i is not None and i["metadata"]["uid"] not in seen]
        return EntitiesReply(items=items)

    async def page(request: EntityPageRequest) -> EntityPageReply:
        fetched = await service.entity_page(pool, request.after, request.limit)
        items = fit_reply(fetched, deps.nc.max_payload)
        more = len(items) < len(fetched) or len(fetched) == request.limit
        return EntityPageReply(items=items, next=items[-1]["metadata"]["uid"] if more else None)

    subscriptions = [
        await serve_rpc(deps.nc, SERVICE, "entities", EntitiesRequest, entities),
        await serve_rpc(deps.nc, SERVICE, "page", EntityPageRequest, page),
    ]
    try:
        await asyncio.Event().wait()
    finally:
        for subscription in subscriptions:
            if not deps.nc.is_closed:
                await subscription.unsubscribe()
