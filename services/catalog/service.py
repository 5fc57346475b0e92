"""Catalog use cases: the direct Entity API (create, replace, delete) and Backstage's reads.

Every write is one transaction: the entities, the relations they emit, one event per entity in the outbox, and
the stitched form (served JSON, search rows, tokens, full text) of every entity whose relations changed (the
entities themselves and the targets on both sides). Reads serve the stored JSON as it is.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
import msgspec

from services.catalog import kinds as kinds_module
from services.catalog import store
from services.catalog.entity_ref import EntityRefError, parse_entity_ref, ref_of
from services.catalog.kinds import Kinds
from services.catalog.model import (
    SOURCE,
    ByNameQuery,
    ByRefsQuery,
    ByRefsRequest,
    ByRefsResponse,
    EntityListQuery,
    EntityQuery,
    FacetsQuery,
    FacetsResponse,
    FacetValue,
    Graph,
    GraphEdge,
    GraphNode,
    GraphQuery,
    IngestRequest,
    IngestResult,
    PageInfo,
    PredicateCursor,
    PredicateFacetsRequest,
    PredicateQueryRequest,
    QueryCursor,
    QueryPage,
    ScopeReadQuery,
    SearchCursor,
    SearchPage,
    SearchQuery,
    Served,
    ServedEntity,
    StoredEntity,
    body_ref_mismatches,
    document_etag,
    entity_event,
    ingestible_document,
    next_generation,
)
from services.catalog.predicates import Predicate, parse_predicate
from services.catalog.predicates import matches as predicate_matches
from services.catalog.properties import apply_properties, check_path
from services.catalog.query import (
    AllOf,
    KeyValues,
    build_search_rows,
    parse_fields_param,
    parse_filter_params,
    project_fields,
    search_words,
)
from services.catalog.read_cache import FacetCounts, QueryResult, ReadCache, ReadCaches
from services.catalog.relations import Reference, references_of
from services.catalog.resolution import Held, Stale, rewire_referrers, served_relations, write_relations
from services.catalog.scopes import ScopeSelector, names_scope, parse_scoped_ref, scoped_ref
from services.catalog.stitching import restitch, restitch_bulk
from services.catalog.validation import default_namespace, validate_entity
from services.catalog.visibility import EntityGate, EntityViewer, gate_of
from shared import outbox
from shared.authz import EVERYTHING, Resource, Visibility
from shared.cursors import decode_cursor, encode_cursor
from shared.db import transaction
from shared.errors import ConflictError, FieldError, InputError, NotFoundError
from shared.etag import check_if_match
from shared.events import Actor, ResourceRef, diff_fields, new_event
from shared.outbox import write_event
from shared.policy import PolicyOutcome
from shared.scopes import check_scope


def _as_list(value: list[str] | str | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def document_errors(document: dict[str, Any], kinds: Kinds) -> list[FieldError]:
    """Backstage's rules for the envelope and built-in kinds, then the registered schema of a custom kind."""
    return validate_entity(document) or kinds.validate(document)


def prepare_document(raw: Any, kinds: Kinds) -> tuple[dict[str, Any], list]:
    """Validate an entity as Backstage would and compute its relations; raises InputError naming fields."""
    if not isinstance(raw, dict):
        raise InputError.for_field("$", "an entity must be a JSON object")
    document = default_namespace(ingestible_document(raw))
    errors = document_errors(document, kinds)
    if errors:
        raise InputError(f"the entity is not valid: {errors[0].message}", errors=errors)
    relations, ref_errors = references_of(document, kinds.relation_rules(document))
    if ref_errors:
        raise InputError(f"the entity has invalid references: {ref_errors[0].message}", errors=ref_errors)
    return document, relations


@dataclasses.dataclass(frozen=True)
class EntityWrite:
    """One entity change: created (no `before`), updated, or deleted (no `after`)."""

    before: StoredEntity | None
    after: StoredEntity | None
    relations: list[Reference] = dataclasses.field(default_factory=list)
    """The references `after` makes (its relations before their targets' scopes are resolved)."""

    def event(self, actor: Actor):
        if self.before is None:
            return entity_event("created", actor, self.after, {"entity": self.after.document})
        if self.after is None:
            return entity_event("deleted", actor, self.before, {"entity": self.before.document})
        changes = diff_fields(self.before.served_document, self.after.served_document)
        if self.before.orphan != self.after.orphan:
            changes["orphan"] = {"before": self.before.orphan, "after": self.after.orphan}
        verb = "orphaned" if self.after.orphan and list(changes) == ["orphan"] else "updated"
        return entity_event(verb, actor, self.after, {"changes": changes, "generation": self.after.generation})


async def write_entities(
    conn: asyncpg.Connection,
    actor: Actor,
    scope: str,
    writes: list[EntityWrite],
    *,
    kinds: Kinds,
    stage_events: bool = False,
    held: Held | None = None,
) -> Stale:
    """Store entity changes at one scope set-based: rows, the relations they emit, and one event each in the
    outbox (staged, for a bulk transaction that calls `write_staged_events` before it commits). With `held`, the
    created entities are held aside (`store.hold_new_entities`) and added to it, for `restitch` to store. Returns the
    (scope, ref) whose served form is now stale: the entities, both ends of their old and new relations where
    those changed (an entity's served form depends on its own document and the relations from it only), and
    both ends of the references elsewhere that the created and deleted entities made resolve to another scope;
    the caller stitches them, once per batch."""
    if not writes:
        return set()
    rewired = [
        w for w in writes if w.after is None or w.before is None or w.relations != served_relations(w.before, kinds)
    ]
    existing = [w.before.uid for w in rewired if w.before is not None]
    stale = await store.emitted_targets(conn, existing) if existing else set()
    deleted = [w.before.uid for w in writes if w.after is None and w.before is not None]
    created = [w.after for w in writes if w.before is None and w.after is not None]
    updated = [w.after for w in writes if w.before is not None and w.after is not None]
    if deleted:
        await store.delete_entities(conn, deleted)
    if created:
        await store.insert_entities(conn, created, held=held is not None)
        if held is not None:
            held.update((scope, entity.ref) for entity in created)
    if updated:
        await store.update_entities(conn, updated)
    emitted = [(w.after.uid, w.after.ref, w.relations) for w in rewired if w.after is not None]
    if emitted:
        stale |= await write_relations(conn, scope, emitted, held)
    stale.update((scope, w.after.ref) for w in writes if w.after is not None)
    moved, relation_events = await rewire_referrers(
        conn, actor, scope, [e.ref for e in created], [w.before.ref for w in writes if w.after is None], kinds, held
    )
    events = [write.event(actor) for write in writes] + relation_events
    await (outbox.stage_events if stage_events else outbox.write_events)(conn, events)
    return stale | moved


async def apply_writes(
    conn: asyncpg.Connection, actor: Actor, scope: str, writes: list[EntityWrite], *, kinds: Kinds
) -> None:
    """`write_entities`, then stitch what it touched: the whole change is queryable when the transaction commits."""
    await restitch(conn, await write_entities(conn, actor, scope, writes, kinds=kinds))


def revised(current: StoredEntity, document: dict[str, Any], **fields: Any) -> StoredEntity:
    """`current` with a new document (etag and generation follow) and other fields replaced."""
    properties = fields.pop("properties", current.properties)
    return dataclasses.replace(
        current,
        document=document,
        properties=properties,
        etag=document_etag(apply_properties(document, properties)),
        generation=next_generation(current, document),
        **fields,
    )


async def _served_document(conn: asyncpg.Connection, scope: str, ref: str) -> dict[str, Any]:
    served = await store.served_by_ref(conn, scope, ref)
    assert served is not None, "read in the transaction that stitched it"
    return msgspec.json.decode(served.json)


async def create_entity(pool: asyncpg.Pool, actor: Actor, scope: str, raw: Any) -> dict[str, Any]:
    check_scope(scope)
    try:
        async with transaction(pool) as conn:
            kinds = await kinds_module.load(conn)
            document, relations = prepare_document(raw, kinds)
            ref = str(ref_of(document))
            entity = StoredEntity(str(uuid.uuid4()), scope, ref, document, document_etag(document), 1)
            await apply_writes(conn, actor, scope, [EntityWrite(None, entity, relations)], kinds=kinds)
            return await _served_document(conn, scope, ref)
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"{ref} already exists at scope {scope}") from None


async def replace_entity(
    pool: asyncpg.Pool, actor: Actor, scope: str, path_ref: tuple[str, str, str], raw: Any, if_match: str | None
) -> dict[str, Any]:
    """Replace an entity's document (`If-Match` honoured); an identical document writes and emits nothing."""
    check_scope(scope)
    async with transaction(pool) as conn:
        kinds = await kinds_module.load(conn)
        document, _ = prepare_document(raw, kinds)  # validates references; relations come from the served document
        errors = body_ref_mismatches(document, *path_ref)
        if errors:
            raise InputError("the body names another entity than the path", errors=errors)
        ref = str(ref_of(document))
        current = await store.get_by_ref(conn, scope, ref, lock=True)
        if current is None:
            raise NotFoundError(f"no entity {ref} at scope {scope}")
        check_if_match(if_match, current.etag)
        if current.document != document:
            updated = revised(current, document)
            write = EntityWrite(current, updated, served_relations(updated, kinds))
            await apply_writes(conn, actor, scope, [write], kinds=kinds)
        return await _served_document(conn, scope, ref)


AuthorizeEntityWrite = Callable[[Resource, dict[str, Any]], PolicyOutcome]
"""Raises unless the caller may write this entity (as the document it would have, or had when deleted);
returns the policy outcome to record."""


async def delete_entity(
    pool: asyncpg.Pool, actor: Actor, uid: str, authorize: AuthorizeEntityWrite
) -> tuple[StoredEntity, PolicyOutcome]:
    async with transaction(pool) as conn:
        entity = await store.get_by_uid(conn, uid, lock=True)
        if entity is None:
            raise NotFoundError(f"no entity with uid {uid}")
        resource = (await access_resources(conn, [(entity.scope, entity.ref)]))[(entity.scope, entity.ref)]
        outcome = authorize(resource, entity.served_document)
        await apply_writes(conn, actor, entity.scope, [EntityWrite(entity, None)], kinds=await kinds_module.load(conn))
    return entity, outcome


def _found(served: ServedEntity | None, missing: str) -> ServedEntity:
    if served is None:
        raise NotFoundError(missing)
    return served


def _items(jsons: list[str], fields: tuple[str, ...] | None) -> list[Served]:
    """Page items: the stored JSON as it is, or decoded and cut down to `fields`."""
    if fields:
        return [project_fields(msgspec.json.decode(json), fields) for json in jsons]
    return [msgspec.Raw(json) for json in jsons]


async def access_resources(
    conn: asyncpg.Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Resource]:
    """Entities at (scope, ref) as access checks see them: restricted or not, and their owners as identity
    subjects (through the User and Group entities mirrored from identity-sync). A missing entity has neither."""
    gates: dict[tuple[str, str], EntityGate | None] = {}
    by_scope: dict[str, list[str]] = {}
    for scope, ref in keys:
        by_scope.setdefault(scope, []).append(ref)
    for scope, refs in by_scope.items():
        served = await store.served_nearest(conn, [scope], refs)
        gates.update(((scope, ref), gate_of(served[ref].json) if ref in served else None) for ref in refs)
    owner_refs = sorted({owner for gate in gates.values() if gate is not None for owner in gate.owners})
    subjects = await store.identities_of_refs(conn, owner_refs) if owner_refs else {}
    return {
        (scope, ref): Resource(
            "catalog_entity",
            scope,
            ref,
            owners=frozenset(subjects[o] for o in gate.owners if o in subjects) if gate else frozenset(),
            restricted=gate.restricted if gate else False,
        )
        for (scope, ref), gate in gates.items()
    }


async def access_resource(pool: asyncpg.Pool, scope: str, ref: str) -> Resource:
    async with pool.acquire() as conn:
        return (await access_resources(conn, [(scope, ref)]))[(scope, ref)]


def viewer(conn: asyncpg.Connection, visible: Visibility) -> EntityViewer:
    return EntityViewer(visible, lambda identity_ids: store.refs_of_identities(conn, identity_ids))


def pooled_viewer(pool: asyncpg.Pool, visible: Visibility) -> EntityViewer:
    """A viewer that takes a connection only if a restricted entity makes it look up the caller's own refs."""

    async def owned_refs(identity_ids: list[str]) -> frozenset[str]:
        async with pool.acquire() as conn:
            return await store.refs_of_identities(conn, identity_ids)

    return EntityViewer(visible, owned_refs)


async def _seen(conn: asyncpg.Connection, visible: Visibility, served: ServedEntity | None) -> ServedEntity | None:
    """`served` if the caller may see it; an entity it may not see reads as missing (visibility.py)."""
    return served if served is not None and await viewer(conn, visible).sees(served.json) else None


async def get_by_name(
    pool: asyncpg.Pool,
    query: ByNameQuery,
    kind: str,
    namespace: str,
    name: str,
    visible: Visibility = EVERYTHING,
    *,
    cache: ReadCache[ServedEntity] | None = None,
) -> ServedEntity:
    """The entity at the scope asked (or the nearest above it), from `cache` when it holds it (read_cache.py)."""
    ref = str(parse_entity_ref({"kind": kind, "namespace": namespace, "name": name}))
    scopes = ScopeSelector.of(query.scope, parents=query.includeParents).exact_scopes()

    async def read(refs: list[str]) -> dict[str, ServedEntity]:
        async with pool.acquire() as conn:
            return await store.served_nearest(conn, scopes, refs)

    if cache is None:
        served = (await read([ref])).get(ref)
    else:
        served = (await cache.get_or_load_batched(tuple(scopes), [ref], read))[0]
    if served is None or not await pooled_viewer(pool, visible).sees(served.json):
        raise NotFoundError(f"no entity {ref}")
    return served


async def get_by_uid(pool: asyncpg.Pool, uid: str, visible: Visibility = EVERYTHING) -> ServedEntity:
    async with pool.acquire() as conn:
        served = await store.served_by_uid(conn, uid)
        return _found(await _seen(conn, visible, served), f"no entity with uid {uid}")


async def list_entities(pool: asyncpg.Pool, query: EntityListQuery, visible: Visibility = EVERYTHING) -> list[Served]:
    """Backstage's `GET /entities`: filter, fields, offset and limit, at a scope (and those around it, if asked),
    among what the caller may see."""
    scope = ScopeSelector.of(query.scope, parents=query.includeParents, children=query.includeChildren, visible=visible)
    where = parse_filter_params(_as_list(query.filter))
    fields = parse_fields_param(_as_list(query.fields))
    async with pool.acquire() as conn:
        served = await store.list_entities(conn, scope, where, offset=query.offset, limit=query.limit)
    return _items(served, fields)


async def get_by_refs(
    pool: asyncpg.Pool, query: ByRefsQuery, request: ByRefsRequest, visible: Visibility = EVERYTHING
) -> ByRefsResponse:
    """Backstage's `POST /entities/by-refs`: the entities in the order asked, `null` where there is none. A ref
    may name its own scope (`kind:namespace/name@scope`); `filter` and the body's predicate `query` both apply."""
    scope = check_scope(query.scope)
    # A ref naming its scope is looked up there only; the others at `scope` (and above it, if asked).
    wanted = [
        (scope_of if names_scope(raw) else None, str(ref))
        for raw, (ref, scope_of) in (
            (raw, parse_scoped_ref(raw, scope, f"$.entityRefs[{i}]")) for i, raw in enumerate(request.entityRefs)
        )
    ]
    default_scopes = ScopeSelector.of(scope, parents=query.includeParents).exact_scopes()
    fields = parse_fields_param(request.fields or [])
    selections = [parse_filter_params(_as_list(query.filter))]
    if request.query is not None:
        selections.append(parse_predicate(request.query))
    chosen = tuple(s for s in selections if s is not None)
    predicate = AllOf(chosen) if chosen else None
    refs_by_scope: dict[str | None, list[str]] = {}
    for scope_of, ref in wanted:
        refs_by_scope.setdefault(scope_of, []).append(ref)
    async with pool.acquire() as conn:
        found = {
            (scope_of, ref): served.json
            for scope_of, refs in refs_by_scope.items()
            for ref, served in (
                await store.served_nearest(conn, [scope_of] if scope_of else default_scopes, refs)
            ).items()
        }
        entity_viewer = viewer(conn, visible)
        found = {key: json for key, json in found.items() if await entity_viewer.sees(json)}
    return ByRefsResponse([_by_refs_item(found.get(key), predicate, fields) for key in wanted])


def _by_refs_item(json: str | None, predicate: Predicate | None, fields: tuple[str, ...] | None) -> Served | None:
    """A found entity as by-refs serves it: `None` where the predicate does not select it."""
    if json is None or predicate is None:
        return None if json is None else _items([json], fields)[0]
    entity = msgspec.json.decode(json)
    if not predicate_matches(predicate, build_search_rows(entity)):
        return None
    return project_fields(entity, fields) if fields else entity


def _page_info(offset: int, count: int, total: int, limit: int, cursor_at: Callable[[int], str]) -> PageInfo:
    """Cursors (made by `cursor_at(offset)`) to the next page (when there is more) and the previous one (when
    this is not the first)."""
    after = offset + count
    return PageInfo(
        nextCursor=cursor_at(after) if after < total else None,
        prevCursor=cursor_at(max(0, offset - limit)) if offset > 0 else None,
    )


def _order_fields(values: list[str]) -> list[tuple[str, bool]]:
    order = []
    for value in values:
        field, _, direction = value.partition(",")
        direction = direction.strip().lower() or "asc"
        if not field.strip() or direction not in ("asc", "desc"):
            raise InputError.for_field("query.orderField", f"{value!r} is not <field>[,asc|desc]")
        order.append((field.strip().lower(), direction == "desc"))
    return order


async def query_entities(
    pool: asyncpg.Pool,
    query: EntityQuery,
    visible: Visibility = EVERYTHING,
    *,
    caches: ReadCaches | None = None,
) -> QueryPage:
    """Backstage's `GET /entities/by-query`: a page, the total, and cursors to the next and previous pages."""
    cursor = (
        decode_cursor(query.cursor, QueryCursor)
        if query.cursor
        else QueryCursor(
            filter=_as_list(query.filter),
            orderField=_as_list(query.orderField),
            fullTextFilterTerm=query.fullTextFilterTerm,
            fullTextFilterFields=_as_list(query.fullTextFilterFields),
            scope=query.scope,
            offset=query.offset,
            includeParents=query.includeParents,
            includeChildren=query.includeChildren,
        )
    )
    term = (cursor.fullTextFilterTerm or "").strip()
    # Backstage's client sends the fields comma-separated in one parameter.
    keys = tuple(f.strip().lower() for value in cursor.fullTextFilterFields for f in value.split(",") if f.strip())
    return await query_page(
        pool,
        ScopeSelector.of(cursor.scope, parents=cursor.includeParents, children=cursor.includeChildren, visible=visible),
        parse_filter_params(cursor.filter),
        full_text=(term, keys) if term else None,
        order=_order_fields(cursor.orderField),
        offset=cursor.offset,
        limit=query.limit,
        fields=parse_fields_param(_as_list(query.fields)),
        cursor_at=lambda offset: encode_cursor(msgspec.structs.replace(cursor, offset=offset)),
        caches=caches,
    )


RESULT_WINDOW = 1_000
"""Matches a `by-query` reads at once, from the first: ten pages of 100, so turning pages costs one query."""


async def query_page(
    pool: asyncpg.Pool,
    scope: ScopeSelector,
    where: Predicate | None,
    *,
    full_text: tuple[str, tuple[str, ...]] | None,
    order: list[tuple[str, bool]],
    offset: int,
    limit: int,
    fields: tuple[str, ...] | None,
    cursor_at: Callable[[int], str],
    caches: ReadCaches | None = None,
) -> QueryPage:
    """A page of matching entities, the total, and cursors (made by `cursor_at(offset)`) to the pages around.

    Matches are read in windows of `RESULT_WINDOW` from the first: the pages a client turns through share one
    query. With `caches`, the result is remembered for the pages after (`caches.results`; read once for the
    requests that ask it meanwhile) and the entities' served JSON comes from `caches.entities` where it holds them
    (read_cache.py); only what neither holds is read."""
    key = (scope, where, full_text, tuple(order))
    end = offset + limit

    async def read_matches() -> QueryResult:
        window = -(-end // RESULT_WINDOW) * RESULT_WINDOW
        async with pool.acquire() as conn:
            return await store.query_entities(
                conn, scope, where, full_text=full_text, order=order, offset=0, limit=window
            )

    if caches is None:
        remembered = await read_matches()
    else:
        remembered = await caches.results.get_or_load(key, read_matches)
        if len(remembered[0]) < min(end, remembered[1]):  # a page past what was read: read further, from the first
            epoch = caches.results.epoch
            remembered = await read_matches()
            caches.results.put(key, remembered, epoch)
    uids, total = remembered
    page = await _served_by_uids(pool, uids[offset:end], caches.entities if caches is not None else None)
    return QueryPage(_items(page, fields), total, _page_info(offset, len(page), total, limit, cursor_at))


async def _served_by_uids(pool: asyncpg.Pool, uids: list[Any], cache: ReadCache[ServedEntity] | None) -> list[str]:
    """The served JSON of these entities in the order given (missing ones skipped): from `cache` where it holds
    them by uid, the rest read together with the other pages' misses meanwhile, which the cache then keeps."""

    async def read(missing: list[Any]) -> dict[Any, ServedEntity]:
        async with pool.acquire() as conn:
            return await store.served_by_uids(conn, missing)

    if cache is None:
        found = await read(uids)
        served = [found.get(uid) for uid in uids]
    else:
        served = await cache.get_or_load_batched((), uids, read)
    return [entity.json for entity in served if entity is not None]


async def search_entities(pool: asyncpg.Pool, query: SearchQuery, visible: Visibility = EVERYTHING) -> SearchPage:
    """Ranked full-text search over name, title, description, tags, owner and annotations, filtered by kind,
    type, owner and tag, at a scope and the scopes below it."""
    cursor = (
        decode_cursor(query.cursor, SearchCursor)
        if query.cursor
        else SearchCursor(
            q=query.q,
            kind=_as_list(query.kind),
            type=_as_list(query.type),
            owner=_as_list(query.owner),
            tag=_as_list(query.tag),
            scope=query.scope,
            offset=0,
        )
    )
    scope = ScopeSelector.of(cursor.scope, children=True, visible=visible)
    words = search_words(cursor.q)
    if not words:
        raise InputError.for_field("query.q", "give at least one word (letters or digits) to search for")
    owners = []
    for owner in cursor.owner:
        try:
            owners.append(str(parse_entity_ref(owner, default_kind="group")))
        except EntityRefError as exc:
            raise InputError.for_field("query.owner", str(exc)) from None
    wanted = {
        "kind": [k.lower() for k in cursor.kind],
        "spec.type": [t.lower() for t in cursor.type],
        "relations.ownedby": owners,
        "metadata.tags": [t.lower() for t in cursor.tag],
    }
    filters = tuple(KeyValues(key, tuple(values)) for key, values in wanted.items() if values)
    async with pool.acquire() as conn:
        hits, total = await store.search_entities(
            conn, scope, AllOf(filters) if filters else None, words, offset=cursor.offset, limit=query.limit
        )
    return SearchPage(
        hits,
        total,
        _page_info(
            cursor.offset,
            len(hits),
            total,
            query.limit,
            lambda offset: encode_cursor(msgspec.structs.replace(cursor, offset=offset)),
        ),
    )


def _encode_predicate_cursor(cursor: PredicateCursor) -> str:
    # Standard base64, as Backstage's client decodes it with `atob` to see whether it holds a `query`.
    return base64.b64encode(msgspec.json.encode(cursor)).decode()


def _decode_predicate_cursor(raw: str) -> PredicateCursor:
    try:
        return msgspec.json.decode(base64.b64decode(raw.encode(), validate=True), type=PredicateCursor)
    except (ValueError, binascii.Error, msgspec.DecodeError, msgspec.ValidationError):
        raise InputError.for_field("$.cursor", "not a cursor returned by this API") from None


async def query_by_predicate(
    pool: asyncpg.Pool,
    scope: ScopeReadQuery,
    request: PredicateQueryRequest,
    visible: Visibility = EVERYTHING,
    *,
    caches: ReadCaches | None = None,
) -> QueryPage:
    """Backstage's `POST /entities/by-query`: the predicate form of `GET /entities/by-query`."""
    cursor = (
        _decode_predicate_cursor(request.cursor)
        if request.cursor
        else PredicateCursor(
            query=request.query,
            orderBy=request.orderBy or [],
            fullTextFilter=request.fullTextFilter,
            scope=scope.scope,
            offset=request.offset,
            includeParents=scope.includeParents,
            includeChildren=scope.includeChildren,
        )
    )
    predicate = parse_predicate(cursor.query) if cursor.query is not None else None
    text = cursor.fullTextFilter
    term = text.term.strip() if text else ""
    full_text = (term, tuple(f.strip().lower() for f in text.fields or [] if f.strip())) if text and term else None
    return await query_page(
        pool,
        ScopeSelector.of(cursor.scope, parents=cursor.includeParents, children=cursor.includeChildren, visible=visible),
        predicate,
        full_text=full_text,
        order=[(o.field.strip().lower(), o.order == "desc") for o in cursor.orderBy],
        offset=cursor.offset,
        limit=request.limit,
        fields=parse_fields_param(request.fields or []),
        cursor_at=lambda offset: _encode_predicate_cursor(msgspec.structs.replace(cursor, offset=offset)),
        caches=caches,
    )


async def facets_by_predicate(
    pool: asyncpg.Pool,
    scope: ScopeReadQuery,
    request: PredicateFacetsRequest,
    visible: Visibility = EVERYTHING,
    *,
    cache: ReadCache[FacetCounts] | None = None,
) -> FacetsResponse:
    """Backstage's `POST /entity-facets`: facets among the entities a predicate selects."""
    predicate = parse_predicate(request.query) if request.query is not None else None
    selector = ScopeSelector.of(
        scope.scope, parents=scope.includeParents, children=scope.includeChildren, visible=visible
    )
    return await facet_counts(pool, selector, predicate, request.facets, field="$.facets", cache=cache)


async def entity_facets(
    pool: asyncpg.Pool,
    query: FacetsQuery,
    visible: Visibility = EVERYTHING,
    *,
    cache: ReadCache[FacetCounts] | None = None,
) -> FacetsResponse:
    """Backstage's `GET /entity-facets`: value counts per facet among the entities the filter selects."""
    where = parse_filter_params(_as_list(query.filter))
    selector = ScopeSelector.of(
        query.scope, parents=query.includeParents, children=query.includeChildren, visible=visible
    )
    return await facet_counts(pool, selector, where, _as_list(query.facet), field="query.facet", cache=cache)


async def facet_counts(
    pool: asyncpg.Pool,
    scope: ScopeSelector,
    where: Predicate | None,
    facets: list[str],
    *,
    field: str,
    cache: ReadCache[FacetCounts] | None = None,
) -> FacetsResponse:
    """Value counts per facet among the entities `scope` and `where` select; with `cache`, remembered until the
    next entity write, and counted once for the requests that ask meanwhile (read_cache.py)."""
    keys = [f.strip() for f in facets if f.strip()]
    if not keys:
        raise InputError.for_field(field, "at least one facet is required")
    lowered = tuple(sorted({k.lower() for k in keys}))

    async def count() -> FacetCounts:
        async with pool.acquire() as conn:
            return await store.facets(conn, scope, where, list(lowered))

    found = await (cache.get_or_load((scope, where, lowered), count) if cache is not None else count())
    return FacetsResponse({k: [FacetValue(v, c) for v, c in found[k.lower()]] for k in keys})


async def entity_graph(pool: asyncpg.Pool, query: GraphQuery, visible: Visibility = EVERYTHING) -> Graph:
    """The entities reachable from `root` through chosen relation types, up to `depth` hops, across scopes;
    dangling targets are nodes marked `missing`. Nodes at another scope than the root's are named by scoped ref
    (`kind:namespace/name@scope`). Entities the caller may not see are left out, with their edges, and not
    followed."""
    root_ref, scope = parse_scoped_ref(query.root, check_scope(query.scope), "query.root")
    wanted = {t.strip().lower() for value in _as_list(query.relations) for t in value.split(",") if t.strip()}
    async with pool.acquire() as conn:
        entity_viewer = viewer(conn, visible)
        scopes = ScopeSelector.of(scope, parents=query.includeParents and not names_scope(query.root)).exact_scopes()
        found_at = await store.nearest_scopes(conn, scopes, [str(root_ref)])
        if str(root_ref) not in found_at:
            raise NotFoundError(f"no entity {root_ref} at scope {scope}")
        root = (found_at[str(root_ref)], str(root_ref))
        if await _hidden(conn, entity_viewer, {root}):
            raise NotFoundError(f"no entity {root_ref} at scope {scope}")
        seen, frontier, edges = {root}, {root}, set()
        for _ in range(query.depth):
            step = [r for r in await _relations_from(conn, frontier) if not wanted or r.type.lower() in wanted]
            frontier = {(r.target_scope, r.target) for r in step} - seen
            hidden = await _hidden(conn, entity_viewer, frontier)
            frontier -= hidden
            edges.update(r for r in step if (r.target_scope, r.target) not in hidden)
            seen |= frontier
            if not frontier:
                break
        found = {(e.scope, e.ref): e for e in await _entities_at(conn, seen)}

    def key(node_scope: str, ref: str) -> str:
        return ref if node_scope == root[0] else scoped_ref(ref, node_scope)

    nodes = []
    for node_scope, ref in sorted(seen, key=lambda node: key(*node)):
        kind, _, rest = ref.partition(":")
        entity = found.get((node_scope, ref))
        metadata = entity.document.get("metadata", {}) if entity else {}
        nodes.append(
            GraphNode(
                ref=key(node_scope, ref),
                kind=entity.document["kind"] if entity else kind,
                name=metadata.get("name", rest.partition("/")[2]),
                title=metadata.get("title"),
                missing=entity is None,
            )
        )
    named = sorted((key(r.scope, r.source), r.type, key(r.target_scope, r.target)) for r in edges)
    return Graph(root=key(*root), nodes=nodes, edges=[GraphEdge(*edge) for edge in named])


def _by_scope(nodes: set[tuple[str, str]]) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for scope, ref in sorted(nodes):
        refs.setdefault(scope, []).append(ref)
    return refs


async def _hidden(
    conn: asyncpg.Connection, entity_viewer: EntityViewer, nodes: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """The nodes that are entities the caller may not see (dangling targets are not hidden: nothing is there)."""
    if entity_viewer.sees_everything:
        return set()
    hidden = set()
    for scope, refs in _by_scope(nodes).items():
        for ref, served in (await store.served_nearest(conn, [scope], refs)).items():
            if not await entity_viewer.sees(served.json):
                hidden.add((scope, ref))
    return hidden


async def _relations_from(conn: asyncpg.Connection, nodes: set[tuple[str, str]]) -> list:
    return [r for scope, refs in _by_scope(nodes).items() for r in await store.relations_from(conn, scope, refs)]


async def _entities_at(conn: asyncpg.Connection, nodes: set[tuple[str, str]]) -> list[StoredEntity]:
    return [e for scope, refs in _by_scope(nodes).items() for e in (await store.get_many(conn, scope, refs)).values()]


async def validate_entity_document(pool: asyncpg.Pool, raw: Any) -> list[dict[str, str]]:
    """Backstage's `POST /validate-entity`: the problems, or none."""
    async with pool.acquire() as conn:
        kinds = await kinds_module.load(conn)
    try:
        prepare_document(raw, kinds)
    except InputError as exc:
        return [{"name": "InputError", "message": e.message, "field": e.field} for e in exc.errors]
    return []


async def ingest_properties(
    pool: asyncpg.Pool, actor: Actor, scope: str, request: IngestRequest, authorize: AuthorizeEntityWrite
) -> tuple[IngestResult, list[tuple[StoredEntity, PolicyOutcome]]]:
    """Set extra properties on existing entities without touching their source, all or nothing.

    Each entity's served document (document + properties) must still be valid and pass `authorize` (the
    caller's permission on it and the policy sets on the edit); a refresh of its location replaces the document
    and keeps the properties. Returns the result and each changed entity's policy outcome.
    """
    check_scope(scope)
    plans = []
    for index, item in enumerate(request.items):
        field = f"$.items[{index}]"
        ref, item_scope = parse_scoped_ref(item.entityRef, scope, f"{field}.entityRef")
        for path in item.properties:
            check_path(path, f"{field}.properties.{path}")
        plans.append((field, str(ref), item_scope, item.properties))
    updated_count = 0
    async with transaction(pool) as conn:
        kinds = await kinds_module.load(conn)
        await store.defer_index_merges(conn)  # one call may set properties on thousands of entities
        originals: dict[tuple[str, str], StoredEntity] = {}
        for item_scope in sorted({item_scope for _, _, item_scope, _ in plans}):
            refs = sorted({ref for _, ref, s, _ in plans if s == item_scope})
            found = await store.get_many(conn, item_scope, refs, lock=True)
            originals.update(((item_scope, ref), entity) for ref, entity in found.items())
        latest = dict(originals)
        for field, ref, item_scope, properties in plans:
            current = latest.get((item_scope, ref))
            if current is None:
                raise InputError.for_field(f"{field}.entityRef", f"no entity {ref} at scope {item_scope}")
            merged = properties if request.mode == "replace" else {**current.properties, **properties}
            if merged == current.properties:
                continue
            updated = revised(current, current.document, properties=merged)
            errors = document_errors(updated.served_document, kinds)
            if errors:
                raise InputError(
                    f"{ref} would not be valid: {errors[0].message}",
                    errors=[FieldError(f"{field}.properties", f"{e.field}: {e.message}") for e in errors],
                )
            latest[(item_scope, ref)] = updated
            updated_count += 1
        # Every entity named is authorized, changed or not: a no-op must not tell an outsider more than a 403.
        resources = await access_resources(conn, list(latest))
        outcomes = [(entity, authorize(resources[key], entity.served_document)) for key, entity in latest.items()]
        writes: dict[str, list[EntityWrite]] = {}
        for (item_scope, _), entity in latest.items():
            original = originals[(item_scope, entity.ref)]
            if entity is not original:
                writes.setdefault(item_scope, []).append(EntityWrite(original, entity, served_relations(entity, kinds)))
        stale: Stale = set()
        for item_scope, scope_writes in writes.items():
            stale |= await write_entities(conn, actor, item_scope, scope_writes, kinds=kinds)
        await restitch_bulk(pool, conn, stale)
    return IngestResult(updated=updated_count, unchanged=len(plans) - updated_count), outcomes


async def set_favorite(
    pool: asyncpg.Pool, actor: Actor, uid: str, starred: bool, visible: Visibility = EVERYTHING
) -> None:
    """Star or unstar an entity for the caller; repeating either is a no-op that emits nothing."""
    principal = f"{actor.kind}:{actor.id}"
    async with transaction(pool) as conn:
        entity = await store.get_by_uid(conn, uid)
        if entity is None or await _seen(conn, visible, await store.served_by_uid(conn, uid)) is None:
            raise NotFoundError(f"no entity with uid {uid}")
        changed = await (store.add_favorite if starred else store.remove_favorite)(conn, principal, uid)
        if changed:
            verb = "added" if starred else "removed"
            await write_event(
                conn,
                new_event(
                    f"catalog.favorite.{verb}",
                    source=SOURCE,
                    actor=actor,
                    scope=entity.scope,
                    resource=ResourceRef("entity", entity.ref),
                    data={"uid": uid},
                ),
            )


async def favorites(pool: asyncpg.Pool, actor: Actor, visible: Visibility = EVERYTHING) -> list[dict[str, Any]]:
    """The caller's starred entities that it may (still) see."""
    async with pool.acquire() as conn:
        starred = await store.favorite_entities(conn, f"{actor.kind}:{actor.id}")
        return _items(await viewer(conn, visible).visible_only(starred), None)


async def get_by_uids(pool: asyncpg.Pool, uids: list[str]) -> list[dict[str, Any]]:
    """The entities with these uids as served (stitched), in the order asked; unknown uids are left out."""
    for index, uid in enumerate(uids):
        try:
            uuid.UUID(uid)
        except ValueError:
            raise InputError.for_field(f"$.uids[{index}]", f"{uid!r} is not a uid") from None
    async with pool.acquire() as conn:
        return [msgspec.json.decode(json) for json in await store.served_in_order(conn, uids)]


async def entity_page(pool: asyncpg.Pool, after_uid: str | None, limit: int) -> list[dict[str, Any]]:
    """Entities of every scope in uid order after `after_uid` as served (stitched): one page of a full scan."""
    if after_uid is not None:
        try:
            uuid.UUID(after_uid)
        except ValueError:
            raise InputError.for_field("$.after", f"{after_uid!r} is not a uid") from None
    async with pool.acquire() as conn:
        return [msgspec.json.decode(json) for json in await store.entities_after(conn, after_uid, limit)]
