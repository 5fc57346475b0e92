"""Locations: registering `file:` targets, reading them into entities, refreshing, orphans and conflicts.

A read applies in one transaction: new entities are created, changed ones updated, ones the location no
longer emits become orphans (`backstage.io/orphan`) or are deleted, as the orphan strategy says. An entity
another location already owns stays with the first one (Backstage's location-key rule) and the conflict is
recorded on the location that lost; so is every document that fails to parse or validate, while the rest of
the location still ingests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec

from services.catalog import kinds as kinds_module
from services.catalog import store
from services.catalog.entity_ref import parse_entity_ref, ref_of
from services.catalog.kinds import Kinds
from services.catalog.model import LocationSpec, LocationView, StoredEntity, check_scope, document_etag
from services.catalog.reader import ReadResult, read_location
from services.catalog.scopes import parse_scoped_ref
from services.catalog.service import (
    insert_entity,
    prepare_document,
    remove_entity,
    revised,
    served_relations,
    update_entity,
)
from services.catalog.url_reader import UrlFetcher, blocking_fetch
from shared.db import transaction
from shared.errors import ConflictError, InputError, NotFoundError
from shared.events import SYSTEM, Actor, ResourceRef, new_event
from shared.outbox import write_event

SUPPORTED_TYPES = ("file", "url")
BULK_CHANGES = 500
"""A read that changes at least this many entities refreshes the planner's statistics afterwards."""
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IngestionPolicy:
    """Operator settings that govern what locations may read and what happens to orphans."""

    file_roots: tuple[Path, ...]
    orphan_strategy: str = "keep"
    fetcher: UrlFetcher | None = None
    """Reads `url:` targets; without one they are reported as not supported."""


def confine(target: str, policy: IngestionPolicy) -> Path:
    """The target's real path, if it lies under one of the allowed roots; locations may not read elsewhere."""
    path = Path(target.removeprefix("file:")).expanduser().resolve()
    for root in policy.file_roots:
        if path == root or root in path.parents:
            return path
    allowed = ", ".join(map(str, policy.file_roots)) or "none configured (IDP_FILE_LOCATION_ROOTS)"
    raise InputError.for_field("$.target", f"{target} is outside the directories locations may read: {allowed}")


async def read(spec: LocationSpec, policy: IngestionPolicy) -> ReadResult:
    if spec.type not in SUPPORTED_TYPES or (spec.type == "url" and policy.fetcher is None):
        supported = ", ".join(SUPPORTED_TYPES if policy.fetcher else ("file",))
        raise InputError.for_field("$.type", f"location type {spec.type!r} is not supported (supported: {supported})")
    if spec.type == "url":
        parts = urlsplit(spec.target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError.for_field("$.target", "a url location needs an http(s) URL")
        target = spec.target
    else:
        target = str(confine(spec.target, policy))
    fetch_url = blocking_fetch(policy.fetcher, asyncio.get_running_loop()) if policy.fetcher else None
    return await asyncio.to_thread(
        read_location, spec.type, target, allowed_roots=policy.file_roots, fetch_url=fetch_url
    )


async def add_location(
    pool: asyncpg.Pool, policy: IngestionPolicy, actor: Actor, scope: str, spec: LocationSpec, *, dry_run: bool
) -> dict[str, Any]:
    """Backstage's `POST /locations`: register (or, dry run, only read) a location and ingest its entities."""
    check_scope(scope)
    result = await read(spec, policy)
    async with transaction(pool) as conn:
        existing = await store.find_location(conn, scope, spec.type, spec.target)
        if dry_run:
            kinds = await kinds_module.load(conn)
            documents = [_try_prepare(e.document, kinds) for e in result.entities]
            view = LocationView(id=existing["id"] if existing else "", type=spec.type, target=spec.target)
            return {"location": view, "entities": [d for d in documents if d], "exists": existing is not None}
        if existing is not None:
            raise ConflictError(f"location {spec.type}:{spec.target} is already registered at scope {scope}")
        location_id = str(uuid.uuid4())
        await store.insert_location(conn, location_id, scope, spec.type, spec.target)
        applied = await apply_read(conn, actor, policy, location_id, scope, result)
        await write_event(conn, _location_event("added", actor, scope, location_id, spec, applied))
        entities = await store.entities_of_location(conn, location_id)
    await _analyze_after_bulk(pool, applied)
    view = LocationView(id=location_id, type=spec.type, target=spec.target, errors=applied["errors"])
    return {"location": view, "entities": [e.document for e in entities]}


def _try_prepare(document: dict[str, Any], kinds: Kinds) -> dict[str, Any] | None:
    try:
        return prepare_document(document, kinds)[0]
    except InputError:
        return None


async def apply_read(
    conn: asyncpg.Connection, actor: Actor, policy: IngestionPolicy, location_id: str, scope: str, result: ReadResult
) -> dict[str, Any]:
    """Bring the location's entities in line with what was just read; returns counts and errors."""
    errors = [{"location": e.location, "message": e.message, "document": e.document_index} for e in result.errors]
    counts = {"created": 0, "updated": 0, "orphaned": 0, "deleted": 0, "unchanged": 0}
    seen: set[str] = set()
    kinds = await kinds_module.load(conn)
    for read_entity in result.entities:
        try:
            document, relations = prepare_document(read_entity.document, kinds)
        except InputError as exc:
            errors.append(
                {
                    "location": read_entity.location,
                    "message": exc.detail,
                    "errors": [msgspec.structs.asdict(e) for e in exc.errors],
                }
            )
            continue
        ref = str(ref_of(document))
        if ref in seen:
            errors.append({"location": read_entity.location, "message": f"{ref} is emitted twice by this location"})
            continue
        seen.add(ref)
        current = await store.get_by_ref(conn, scope, ref, lock=True)
        if current is None:
            entity = StoredEntity(
                str(uuid.uuid4()),
                scope,
                ref,
                document,
                document_etag(document),
                1,
                location_id,
                read_entity.location_key,
            )
            await insert_entity(conn, actor, entity, relations)
            counts["created"] += 1
        elif current.location_key not in (None, read_entity.location_key):
            errors.append(
                {
                    "location": read_entity.location,
                    "message": f"Detected conflicting entityRef {ref} "
                    f"already referenced by {current.location_key} and now also {read_entity.location_key}",
                }
            )
        elif current.document != document or current.orphan or current.location_id != location_id:
            updated = revised(
                current, document, location_id=location_id, location_key=read_entity.location_key, orphan=False
            )
            await update_entity(conn, actor, current, updated, served_relations(updated, kinds))
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    for entity in await store.entities_of_location(conn, location_id):
        if entity.ref in seen:
            continue
        if policy.orphan_strategy == "delete":
            await remove_entity(conn, actor, entity)
            counts["deleted"] += 1
        elif not entity.orphan:
            orphaned = dataclasses.replace(entity, orphan=True)
            await update_entity(conn, actor, entity, orphaned, served_relations(entity, kinds))
            counts["orphaned"] += 1
    await store.record_location_read(conn, location_id, errors)
    return {**counts, "errors": errors}


async def refresh_location(pool: asyncpg.Pool, policy: IngestionPolicy, actor: Actor, location_id: str) -> dict:
    """Read a registered location again and apply what changed."""
    async with pool.acquire() as conn:
        location = await store.get_location(conn, location_id)
    if location is None:
        raise NotFoundError(f"no location {location_id}")
    spec = LocationSpec(type=location["type"], target=location["target"])
    result = await read(spec, policy)
    async with transaction(pool) as conn:
        applied = await apply_read(conn, actor, policy, location_id, location["scope"], result)
    await _analyze_after_bulk(pool, applied)
    return applied


async def _analyze_after_bulk(pool: asyncpg.Pool, applied: dict[str, Any]) -> None:
    if sum(applied[k] for k in ("created", "updated", "orphaned", "deleted")) >= BULK_CHANGES:
        async with pool.acquire() as conn:
            await store.analyze(conn)


async def refresh_entity(pool: asyncpg.Pool, policy: IngestionPolicy, actor: Actor, scope: str, entity_ref: str):
    """Backstage's `POST /refresh`: re-read the location that emits this entity (nothing to do without one)."""
    ref, scope = parse_scoped_ref(entity_ref, check_scope(scope), "$.entityRef")
    async with pool.acquire() as conn:
        entity = await store.get_by_ref(conn, scope, str(ref))
    if entity is None:
        raise NotFoundError(f"no entity {entity_ref} at scope {scope}")
    if entity.location_id is not None:
        await refresh_location(pool, policy, actor, entity.location_id)


async def remove_location(pool: asyncpg.Pool, actor: Actor, location_id: str) -> None:
    """Unregister a location and delete the entities it emits."""
    async with transaction(pool) as conn:
        location = await store.get_location(conn, location_id)
        if location is None:
            raise NotFoundError(f"no location {location_id}")
        for entity in await store.entities_of_location(conn, location_id):
            await remove_entity(conn, actor, entity)
        await store.delete_location(conn, location_id)
        spec = LocationSpec(type=location["type"], target=location["target"])
        await write_event(conn, _location_event("removed", actor, location["scope"], location_id, spec, {}))


def _location_event(verb: str, actor: Actor, scope: str, location_id: str, spec: LocationSpec, data: dict):
    return new_event(
        f"catalog.location.{verb}",
        source="catalog",
        actor=actor,
        scope=scope,
        resource=ResourceRef("location", location_id),
        data={
            "type": spec.type,
            "target": spec.target,
            **{k: v for k, v in data.items() if k != "errors"},
            "errors": len(data.get("errors", [])),
        },
    )


def location_view(row: asyncpg.Record) -> LocationView:
    return LocationView(id=row["id"], type=row["type"], target=row["target"], errors=row["errors"])


async def list_locations(pool: asyncpg.Pool) -> list[LocationView]:
    async with pool.acquire() as conn:
        return [location_view(row) for row in await store.list_locations(conn)]


async def get_location(pool: asyncpg.Pool, location_id: str) -> LocationView:
    async with pool.acquire() as conn:
        row = await store.get_location(conn, location_id)
    if row is None:
        raise NotFoundError(f"no location {location_id}")
    return location_view(row)


async def location_of_entity(pool: asyncpg.Pool, scope: str, kind: str, namespace: str, name: str) -> LocationView:
    ref = str(parse_entity_ref({"kind": kind, "namespace": namespace, "name": name}))
    async with pool.acquire() as conn:
        entity = await store.get_by_ref(conn, check_scope(scope), ref)
        row = await store.get_location(conn, entity.location_id) if entity and entity.location_id else None
    if row is None:
        raise NotFoundError(f"no location emits {ref} at scope {scope}")
    return location_view(row)


async def refresh_periodically(pool: asyncpg.Pool, policy: IngestionPolicy, interval: float) -> None:
    """Re-read every registered location every `interval` seconds; one failing location does not stop the rest."""
    while True:
        await asyncio.sleep(interval)
        for view in await list_locations(pool):
            try:
                await refresh_location(pool, policy, SYSTEM, view.id)
            except Exception:
                log.exception("refreshing location %s (%s) failed", view.id, view.target)
