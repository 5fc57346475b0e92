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
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
import uuid_utils

from services.catalog import kinds as kinds_module
from services.catalog import store
from services.catalog.entity_ref import parse_entity_ref, ref_of
from services.catalog.kinds import Kinds
from services.catalog.model import ByNameQuery, LocationSpec, LocationView, StoredEntity, document_etag
from services.catalog.reader import (
    ReadEntity,
    ReadError,
    ReadResult,
    iter_location,
    read_location,
    registered_location,
)
from services.catalog.relations import Reference
from services.catalog.resolution import Held, Stale
from services.catalog.scopes import ScopeSelector, parse_scoped_ref
from services.catalog.service import (
    EntityWrite,
    apply_writes,
    prepare_document,
    revised,
    served_relations,
    write_entities,
)
from services.catalog.stitching import restitch_bulk
from services.catalog.url_reader import UrlFetcher, blocking_fetch
from shared.authz import EVERYTHING, Visibility
from shared.db import transaction
from shared.errors import ConflictError, InputError, NotFoundError
from shared.events import SYSTEM, Actor, ResourceRef, new_event
from shared.garbage_collection import full_collections_deferred
from shared.outbox import write_event, write_staged_events
from shared.scopes import check_scope
from shared.telemetry import tracer

SUPPORTED_TYPES = ("file", "url")
READ_BATCH = 1000
"""Entities read, validated and written per batch of a location read."""
BULK_CHANGES = 500
"""A read that changes at least this many entities vacuums and analyzes the catalog's tables afterwards."""
log = logging.getLogger(__name__)


EntityAdmission = Callable[[str, str, dict[str, Any]], list[str]]
"""(action, scope, document) → the messages of the `deny` policy sets the write violates; none: admitted."""


@dataclasses.dataclass(frozen=True)
class IngestionPolicy:
    """Operator settings that govern what locations may read and what happens to orphans."""

    file_roots: tuple[Path, ...]
    orphan_strategy: str = "keep"
    fetcher: UrlFetcher | None = None
    """Reads `url:` targets; without one they are reported as not supported."""
    admit: EntityAdmission | None = None
    """The policy sets on entity writes, which a location's entities pass like any other write."""


def confine(target: str, policy: IngestionPolicy) -> Path:
    """The target's real path, if it lies under one of the allowed roots; locations may not read elsewhere."""
    path = Path(target.removeprefix("file:")).expanduser().resolve()
    for root in policy.file_roots:
        if path == root or root in path.parents:
            return path
    allowed = ", ".join(map(str, policy.file_roots)) or "none configured (IDP_FILE_LOCATION_ROOTS)"
    raise InputError.for_field("$.target", f"{target} is outside the directories locations may read: {allowed}")


def _checked(spec: LocationSpec, policy: IngestionPolicy) -> tuple[str, Callable[[str], bytes] | None]:
    """The target to read (a confined path, or an http(s) URL) and what reads URLs; the type is checked too."""
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
    return target, blocking_fetch(policy.fetcher, asyncio.get_running_loop()) if policy.fetcher else None


async def read(spec: LocationSpec, policy: IngestionPolicy) -> ReadResult:
    target, fetch_url = _checked(spec, policy)
    return await asyncio.to_thread(
        read_location, spec.type, target, allowed_roots=policy.file_roots, fetch_url=fetch_url
    )


def open_read(spec: LocationSpec, policy: IngestionPolicy) -> Iterator[ReadEntity | ReadError]:
    """What a location emits, read lazily by `apply_read`: its generated Location entity, then what the target
    holds. The type and target are checked now."""
    target, fetch_url = _checked(spec, policy)
    generated = registered_location(spec.type, spec.target, f"{spec.type}:{target}")
    found = iter_location(spec.type, target, allowed_roots=policy.file_roots, fetch_url=fetch_url)
    return itertools.chain([generated], found)


async def add_location(
    pool: asyncpg.Pool, policy: IngestionPolicy, actor: Actor, scope: str, spec: LocationSpec, *, dry_run: bool
) -> dict[str, Any]:
    """Backstage's `POST /locations`: register and ingest a location, or (dry run) only read it and answer its
    entities."""
    check_scope(scope)
    if dry_run:
        result = await read(spec, policy)
        async with transaction(pool) as conn:  # the shared lock on kinds lasts until the transaction ends
            existing = await store.find_location(conn, scope, spec.type, spec.target)
            kinds = await kinds_module.load(conn)
        generated = registered_location(spec.type, spec.target, "")
        documents = [_try_prepare(e.document, kinds) for e in (generated, *result.entities)]
        view = LocationView(id=existing["id"] if existing else "", type=spec.type, target=spec.target)
        return {"location": view, "entities": [d for d in documents if d], "exists": existing is not None}
    found = open_read(spec, policy)
    async with transaction(pool) as conn:
        if await store.find_location(conn, scope, spec.type, spec.target) is not None:
            raise ConflictError(f"location {spec.type}:{spec.target} is already registered at scope {scope}")
        location_id = str(uuid.uuid4())
        await store.insert_location(conn, location_id, scope, spec.type, spec.target)
        applied = await apply_read(pool, conn, actor, policy, location_id, scope, found)
        await write_event(conn, _location_event("added", actor, scope, location_id, spec, applied))
    _maintain_after_bulk(pool, applied)
    view = LocationView(id=location_id, type=spec.type, target=spec.target, errors=applied["errors"])
    # As Backstage's DefaultLocationService: a registration answers no entities (only a dry run lists them), so
    # registering a location of 250,000 entities does not hold all of them in memory to answer.
    return {"location": view, "entities": []}


def _try_prepare(document: dict[str, Any], kinds: Kinds) -> dict[str, Any] | None:
    try:
        return prepare_document(document, kinds)[0]
    except InputError:
        return None


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """A read entity that validated, with its relations."""

    read: ReadEntity
    document: dict[str, Any]
    relations: list[Reference]
    ref: str
    etag: str
    """The document's etag (hashed here, in the reading thread, rather than on the event loop)."""


def _error(read: ReadError | ReadEntity, exc: InputError | None = None) -> dict[str, Any]:
    if isinstance(read, ReadError):
        return {"location": read.location, "message": read.message, "document": read.document_index}
    assert exc is not None
    return {"location": read.location, "message": exc.detail, "errors": [msgspec.structs.asdict(e) for e in exc.errors]}


def _take_prepared(
    found: Iterator[ReadEntity | ReadError], kinds: Kinds, size: int
) -> list[_Prepared | dict[str, Any]]:
    """The next `size` things a location emits, validated; run in a worker thread."""
    batch: list[_Prepared | dict[str, Any]] = []
    for item in itertools.islice(found, size):
        if isinstance(item, ReadError):
            batch.append(_error(item))
            continue
        try:
            document, relations = prepare_document(item.document, kinds)
        except InputError as exc:
            batch.append(_error(item, exc))
            continue
        batch.append(_Prepared(item, document, relations, str(ref_of(document)), document_etag(document)))
    return batch


async def _prepared_batches(found: Iterator[ReadEntity | ReadError], kinds: Kinds) -> AsyncIterator[list]:
    """Batches of what a location emits; the next batch is read and validated in a thread while the caller
    writes this one, so parsing and PostgreSQL work overlap."""
    pending = asyncio.ensure_future(asyncio.to_thread(_take_prepared, found, kinds, READ_BATCH))
    try:
        while batch := await pending:
            pending = asyncio.ensure_future(asyncio.to_thread(_take_prepared, found, kinds, READ_BATCH))
            yield batch
    finally:
        pending.cancel()


async def apply_read(
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    actor: Actor,
    policy: IngestionPolicy,
    location_id: str,
    scope: str,
    found: Iterator[ReadEntity | ReadError],
) -> dict[str, Any]:
    """Bring the location's entities in line with what it emits now, batch by batch, then stitch every entity
    touched once, in `conn`'s transaction; returns counts and errors. New entities are held aside until then
    (`store.hold_new_entities`), so each is written once, with its served form. A large read also takes a
    connection from `pool` to merge index entries while it stitches (`stitching.restitch_bulk`), and runs without
    the garbage collector's full collections (`full_collections_deferred`).

    The read and each of its phases are spans, so the trace of a slow read shows which phase took the time."""
    with full_collections_deferred(), tracer.start_as_current_span("catalog.location.read") as span:
        applied = await _apply_read(pool, conn, actor, policy, location_id, scope, found)
        span.set_attributes({f"catalog.entities.{outcome}": n for outcome, n in applied.items() if outcome != "errors"})
        span.set_attribute("catalog.location.errors", len(applied["errors"]))
        return applied


async def _apply_read(
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    actor: Actor,
    policy: IngestionPolicy,
    location_id: str,
    scope: str,
    found: Iterator[ReadEntity | ReadError],
) -> dict[str, Any]:
    errors: list[dict[str, Any]] = []
    counts = {"created": 0, "updated": 0, "orphaned": 0, "deleted": 0, "unchanged": 0, "conflicts": 0, "denied": 0}
    seen: set[str] = set()
    stale: Stale = set()
    held: Held = set()  # the new entities, stored with their served form once every batch is written
    kinds = await kinds_module.load(conn)
    await store.defer_index_merges(conn)
    await store.hold_new_entities(conn)
    with tracer.start_as_current_span("catalog.location.read.batches"):
        async for batch in _prepared_batches(found, kinds):
            fresh: list[_Prepared] = []
            for item in batch:
                if isinstance(item, dict):
                    errors.append(item)
                elif item.ref in seen:
                    message = f"{item.ref} is emitted twice by this location"
                    errors.append({"location": item.read.location, "message": message})
                else:
                    seen.add(item.ref)
                    fresh.append(item)
            current = await store.get_many(conn, scope, [item.ref for item in fresh], lock=True)
            writes = []
            for item in fresh:
                outcome, write = _classify(item, current.get(item.ref), location_id, scope, kinds, errors, policy.admit)
                counts[outcome] += 1
                if write is not None:
                    writes.append(write)
            stale |= await write_entities(conn, actor, scope, writes, kinds=kinds, stage_events=True, held=held)
    with tracer.start_as_current_span("catalog.location.read.orphans"):
        stale |= await _write_orphans(conn, actor, policy, location_id, scope, seen, kinds, counts, held)
    with tracer.start_as_current_span("catalog.location.read.stitch") as span:
        span.set_attribute("catalog.entities.stitched", len(stale))
        await restitch_bulk(pool, conn, stale, held)
    with tracer.start_as_current_span("catalog.location.read.events"):
        await write_staged_events(conn)
    await store.record_location_read(conn, location_id, errors)
    return {**counts, "errors": errors}


async def _write_orphans(
    conn: asyncpg.Connection,
    actor: Actor,
    policy: IngestionPolicy,
    location_id: str,
    scope: str,
    seen: set[str],
    kinds: Kinds,
    counts: dict[str, int],
    held: Held,
) -> Stale:
    """Orphan (or delete, as the strategy says) the entities of the location it no longer emits."""
    gone = sorted(set(await store.refs_of_location(conn, location_id)) - seen)
    orphans = list((await store.get_many(conn, scope, gone, lock=True)).values())
    if policy.orphan_strategy == "delete":
        writes = [EntityWrite(entity, None) for entity in orphans]
        counts["deleted"] += len(writes)
    else:
        writes = [
            EntityWrite(entity, dataclasses.replace(entity, orphan=True), served_relations(entity, kinds))
            for entity in orphans
            if not entity.orphan
        ]
        counts["orphaned"] += len(writes)
    return await write_entities(conn, actor, scope, writes, kinds=kinds, stage_events=True, held=held)


def _classify(
    item: _Prepared,
    current: StoredEntity | None,
    location_id: str,
    scope: str,
    kinds: Kinds,
    errors: list[dict[str, Any]],
    admit: EntityAdmission | None,
) -> tuple[str, EntityWrite | None]:
    """What an emitted entity does to what is stored: created, updated, unchanged, a conflict with another
    location, or denied by policy (both reported in `errors`, nothing written: a stored entity stays as it was)."""
    key = item.read.location_key
    changes = current is None or current.document != item.document
    if admit is not None and changes:
        action = "catalog_entity_create" if current is None else "catalog_entity_edit"
        denials = admit(action, scope, item.document)
        if denials:
            errors.append(
                {"location": item.read.location, "message": f"{item.ref} denied by policy: " + "; ".join(denials)}
            )
            return "denied", None
    if current is None:
        entity = StoredEntity(str(uuid_utils.uuid4()), scope, item.ref, item.document, item.etag, 1, location_id, key)
        return "created", EntityWrite(None, entity, item.relations)
    if current.location_key not in (None, key):
        errors.append(
            {
                "location": item.read.location,
                "message": f"Detected conflicting entityRef {item.ref} "
                f"already referenced by {current.location_key} and now also {key}",
            }
        )
        return "conflicts", None
    if current.document != item.document or current.orphan or current.location_id != location_id:
        updated = revised(current, item.document, location_id=location_id, location_key=key, orphan=False)
        return "updated", EntityWrite(current, updated, served_relations(updated, kinds))
    return "unchanged", None


async def refresh_location(pool: asyncpg.Pool, policy: IngestionPolicy, actor: Actor, location_id: str) -> dict:
    """Read a registered location again and apply what changed."""
    async with pool.acquire() as conn:
        location = await store.get_location(conn, location_id)
    if location is None:
        raise NotFoundError(f"no location {location_id}")
    found = open_read(LocationSpec(type=location["type"], target=location["target"]), policy)
    async with transaction(pool) as conn:
        applied = await apply_read(pool, conn, actor, policy, location_id, location["scope"], found)
    _maintain_after_bulk(pool, applied)
    return applied


_maintenance: set[asyncio.Task] = set()
"""Running VACUUM tasks (held so they are not garbage-collected before they finish)."""


def _maintain_after_bulk(pool: asyncpg.Pool, applied: dict[str, Any]) -> None:
    """VACUUM (ANALYZE) after a large read, in the background: the read is committed and queryable already, and
    at 100,000 entities the VACUUM takes seconds nobody has to wait for."""
    if sum(applied[k] for k in ("created", "updated", "orphaned", "deleted")) >= BULK_CHANGES:
        task = asyncio.create_task(_vacuum(pool))
        _maintenance.add(task)
        task.add_done_callback(_maintenance.discard)


async def _vacuum(pool: asyncpg.Pool) -> None:
    try:
        async with pool.acquire() as conn:
            await store.vacuum_analyze(conn)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("VACUUM after a bulk read failed: %s", exc)


async def refresh_entity(pool: asyncpg.Pool, policy: IngestionPolicy, actor: Actor, scope: str, entity_ref: str):
    """Backstage's `POST /refresh`: re-read the location that emits this entity (nothing to do without one)."""
    ref, scope = parse_scoped_ref(entity_ref, check_scope(scope), "$.entityRef")
    async with pool.acquire() as conn:
        entity = await store.get_by_ref(conn, scope, str(ref))
    if entity is None:
        raise NotFoundError(f"no entity {entity_ref} at scope {scope}")
    if entity.location_id is not None:
        await refresh_location(pool, policy, actor, entity.location_id)


async def remove_location(
    pool: asyncpg.Pool, actor: Actor, location_id: str, authorize: Callable[[str], object]
) -> None:
    """Unregister a location and delete the entities it emits, if `authorize(its scope)` does not raise."""
    async with transaction(pool) as conn:
        location = await store.get_location(conn, location_id)
        if location is None:
            raise NotFoundError(f"no location {location_id}")
        authorize(location["scope"])
        writes = [EntityWrite(entity, None) for entity in await store.entities_of_location(conn, location_id)]
        await apply_writes(conn, actor, location["scope"], writes, kinds=await kinds_module.load(conn))
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


async def list_locations(pool: asyncpg.Pool, visible: Visibility = EVERYTHING) -> list[LocationView]:
    """The registered locations at the scopes `visible` covers."""
    async with pool.acquire() as conn:
        return [location_view(row) for row in await store.list_locations(conn, visible)]


async def get_location(pool: asyncpg.Pool, location_id: str, visible: Visibility = EVERYTHING) -> LocationView:
    async with pool.acquire() as conn:
        row = await store.get_location(conn, location_id)
    if row is None or not visible.covers(row["scope"]):
        raise NotFoundError(f"no location {location_id}")
    return location_view(row)


async def location_of_entity(
    pool: asyncpg.Pool, query: ByNameQuery, kind: str, namespace: str, name: str
) -> LocationView:
    ref = str(parse_entity_ref({"kind": kind, "namespace": namespace, "name": name}))
    scopes = ScopeSelector.of(query.scope, parents=query.includeParents).exact_scopes()
    async with pool.acquire() as conn:
        entity = await store.get_nearest(conn, scopes, ref)
        row = await store.get_location(conn, entity.location_id) if entity and entity.location_id else None
    if row is None:
        raise NotFoundError(f"no location emits {ref} at scope {query.scope}")
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
