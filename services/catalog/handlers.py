"""Catalog's bus handlers: identity-sync's users and groups mirrored as `User` and `Group` entities, and
request/reply reads of stitched entities for other services."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from services.catalog import identity_mirror, service, store
from services.catalog import kinds as kinds_module
from services.catalog.entity_ref import ref_of
from services.catalog.identity_mirror import MirrorTarget
from services.catalog.kinds import Kinds
from services.catalog.model import ByRefsQuery, ByRefsRequest, StoredEntity, document_etag
from shared.bus import ConsumerSpec, run_consumer, serve_rpc
from shared.catalog_client import SERVICE, EntitiesReply, EntitiesRequest, EntityPageReply, EntityPageRequest
from shared.db import transaction
from shared.errors import InputError
from shared.events import Actor, Event
from shared.processed import mark_processed
from shared.service import Deps

log = logging.getLogger(__name__)

IDENTITY_MIRROR = ConsumerSpec(durable="catalog-identity-mirror", filter_subject="idp.evt.identity.>")


async def mirror_identity(deps: Deps) -> None:
    """Keep User and Group entities in step with identity-sync, each batch in one transaction."""

    async def handle(events: Sequence[Event]) -> None:
        async with transaction(deps.pool) as conn:
            await apply_identity_events(conn, await mark_processed(conn, IDENTITY_MIRROR.durable, list(events)))

    await run_consumer(deps.nc, IDENTITY_MIRROR, handle)


@dataclass
class _Mirrored:
    stored: StoredEntity | None
    document: dict[str, Any] | None
    orphan: bool
    actor: Actor | None = None
    """Who caused the last change; None while the batch changed nothing."""


async def apply_identity_events(conn: asyncpg.Connection, events: Sequence[Event]) -> None:
    """Mirror a batch in order. Each entity is read once, changed in memory by every event that concerns it
    (a sync adds many members to one group), then written once through the catalog's own use cases, so
    catalog events follow."""
    mirrored: dict[MirrorTarget, _Mirrored] = {}
    for event in events:
        targets = identity_mirror.targets_of(event)
        for target in targets:
            if target not in mirrored:
                stored = await store.get_by_ref(conn, target.scope, target.ref, lock=True)
                mirrored[target] = _Mirrored(
                    stored, stored.document if stored else None, bool(stored and stored.orphan)
                )
        for write in identity_mirror.writes_for(event, {t: mirrored[t].document for t in targets}):
            entry = mirrored[write.target]
            entry.document, entry.orphan, entry.actor = write.document, write.orphan, event.actor
    kinds = await kinds_module.load(conn)
    changes = []
    for target, entry in mirrored.items():
        if entry.actor is not None and entry.document is not None:
            write = _write(kinds, target, entry.stored, entry.document, entry.orphan)
            if write is not None:
                changes.append((target.scope, entry.actor, write))
    # Consecutive writes at one scope by one actor go together, so events keep the order of the batch.
    for (scope, actor), group in itertools.groupby(changes, key=lambda change: change[:2]):
        await service.apply_writes(conn, actor, scope, [write for _, _, write in group], kinds=kinds)


def _write(
    kinds: Kinds, target: MirrorTarget, current: StoredEntity | None, raw: dict[str, Any], orphan: bool
) -> service.EntityWrite | None:
    """The change mirroring `raw` makes to `current`; None when there is none or `raw` cannot be mirrored."""
    try:
        document, relations = service.prepare_document(raw, kinds)
    except InputError as exc:  # one unmirrorable principal must not hold back the others
        log.error("cannot mirror %s: %s", target.ref, exc.detail)
        return None
    if current is None:
        created = StoredEntity(
            str(uuid.uuid4()),
            target.scope,
            str(ref_of(document)),
            document,
            document_etag(document),
            1,
            orphan=orphan,
        )
        return service.EntityWrite(None, created, relations)
    if current.document != document or current.orphan != orphan:
        updated = service.revised(current, document, orphan=orphan)
        return service.EntityWrite(current, updated, service.served_relations(updated, kinds))
    return None


# --- request/reply reads ------------------------------------------------------------------------------

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
            by_refs = await service.get_by_refs(
                pool, ByRefsQuery(scope=request.scope), ByRefsRequest(entityRefs=request.refs)
            )
            found = [msgspec.json.decode(i) for i in by_refs.items if i is not None]  # as served: raw JSON
            seen = {item["metadata"]["uid"] for item in items}
            items += [i for i in found if i["metadata"]["uid"] not in seen]
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
