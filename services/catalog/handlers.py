"""Catalog's bus consumers: identity-sync's users and groups mirrored as `User` and `Group` entities."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import asyncpg

from services.catalog import identity_mirror, service, store
from services.catalog.entity_ref import ref_of
from services.catalog.model import StoredEntity, document_etag
from shared.bus import ConsumerSpec, run_consumer
from shared.db import transaction
from shared.errors import InputError
from shared.events import Event
from shared.processed import mark_processed
from shared.service import Deps

log = logging.getLogger(__name__)

IDENTITY_MIRROR = ConsumerSpec(durable="catalog-identity-mirror", filter_subject="idp.evt.identity.>")


async def mirror_identity(deps: Deps) -> None:
    """Keep User and Group entities in step with identity-sync, each batch in one transaction."""

    async def handle(events: Sequence[Event]) -> None:
        async with transaction(deps.pool) as conn:
            for event in await mark_processed(conn, IDENTITY_MIRROR.durable, list(events)):
                await apply_identity_event(conn, event)

    await run_consumer(deps.nc, IDENTITY_MIRROR, handle)


async def apply_identity_event(conn: asyncpg.Connection, event: Event) -> None:
    """Write the entities the event changes through the catalog's own use cases, so catalog events follow."""
    targets = identity_mirror.targets_of(event)
    if not targets:
        return
    current = {t: await store.get_by_ref(conn, t.scope, t.ref, lock=True) for t in targets}
    documents = {t: e.document if e else None for t, e in current.items()}
    for write in identity_mirror.writes_for(event, documents):
        try:
            document, relations = service.prepare_document(write.document)
        except InputError as exc:  # one unmirrorable principal must not hold back the others
            log.error("cannot mirror %s as %s: %s", event.type, write.target.ref, exc.detail)
            continue
        entity = current.get(write.target)
        if entity is None:
            created = StoredEntity(
                str(uuid.uuid4()),
                write.target.scope,
                str(ref_of(document)),
                document,
                document_etag(document),
                1,
                orphan=write.orphan,
            )
            await service.insert_entity(conn, event.actor, created, relations)
        elif entity.document != document or entity.orphan != write.orphan:
            updated = service.revised(entity, document, orphan=write.orphan)
            await service.update_entity(conn, event.actor, entity, updated, service.served_relations(updated))
