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
from typing import Any, TypeVar

import asyncpg
import msgspec

from services.catalog import store
from services.catalog.entity_ref import EntityRefError, parse_entity_ref, ref_of
from services.catalog.model import (
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
    QueryCursor,
    QueryPage,
    SearchCursor,
    SearchPage,
    SearchQuery,
    Served,
    ServedEntity,
    StoredEntity,
    body_ref_mismatches,
    check_scope,
    document_etag,
    ingestible_document,
    next_generation,
)
from services.catalog.properties import apply_properties, check_path
from services.catalog.query import (
    AllOf,
    KeyValues,
    parse_fields_param,
    parse_filter_params,
    project_fields,
    search_words,
)
from services.catalog.relations import Relation, relations_of
from services.catalog.stitching import restitch
from services.catalog.validation import default_namespace, validate_entity
from shared.db import transaction
from shared.errors import ConflictError, FieldError, InputError, NotFoundError
from shared.etag import check_if_match
from shared.events import Actor, ResourceRef, diff_fields, new_event
from shared.outbox import write_event, write_events

SOURCE = "catalog"


def _as_list(value: list[str] | str | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else value


def prepare_document(raw: Any) -> tuple[dict[str, Any], list]:
    """Validate an entity as Backstage would and compute its relations; raises InputError naming fields."""
    if not isinstance(raw, dict):
        raise InputError.for_field("$", "an entity must be a JSON object")
    document = default_namespace(ingestible_document(raw))
    errors = validate_entity(document)
    if errors:
        raise InputError(f"the entity is not valid: {errors[0].message}", errors=errors)
    relations, ref_errors = relations_of(document)
    if ref_errors:
        raise InputError(f"the entity has invalid references: {ref_errors[0].message}", errors=ref_errors)
    return document, relations


def _event(kind: str, actor: Actor, entity: StoredEntity, data: dict[str, Any]):
    return new_event(
        f"catalog.entity.{kind}",
        source=SOURCE,
        actor=actor,
        scope=entity.scope,
        resource=ResourceRef("entity", entity.ref),
        data={"uid": entity.uid, **data},
    )


@dataclasses.dataclass(frozen=True)
class EntityWrite:
    """One entity change: created (no `before`), updated, or deleted (no `after`)."""

    before: StoredEntity | None
    after: StoredEntity | None
    relations: list[Relation] = dataclasses.field(default_factory=list)
    """The relations `after` emits."""

    def event(self, actor: Actor):
        if self.before is None:
            return _event("created", actor, self.after, {"entity": self.after.document})
        if self.after is None:
            return _event("deleted", actor, self.before, {"entity": self.before.document})
        changes = diff_fields(self.before.served_document, self.after.served_document)
        if self.before.orphan != self.after.orphan:
            changes["orphan"] = {"before": self.before.orphan, "after": self.after.orphan}
        verb = "orphaned" if self.after.orphan and list(changes) == ["orphan"] else "updated"
        return _event(verb, actor, self.after, {"changes": changes, "generation": self.after.generation})


async def write_entities(conn: asyncpg.Connection, actor: Actor, scope: str, writes: list[EntityWrite]) -> set[str]:
    """Store entity changes at one scope set-based: rows, the relations they emit, and one event each in the
    outbox. Returns the refs whose served form is now stale: the entities, and both ends of their old and new
    relations where those changed (an entity's served form depends on its own document and the relations
    from it only); the caller stitches them, once per batch."""
    if not writes:
        return set()
    rewired = [w for w in writes if w.after is None or w.before is None or w.relations != served_relations(w.before)]
    existing = [w.before.uid for w in rewired if w.before is not None]
    stale = await store.emitted_targets(conn, existing) if existing else set()
    deleted = [w.before.uid for w in writes if w.after is None and w.before is not None]
    created = [w.after for w in writes if w.before is None and w.after is not None]
    updated = [w.after for w in writes if w.before is not None and w.after is not None]
    if deleted:
        await store.delete_entities(conn, deleted)
    if created:
        await store.insert_entities(conn, created)
    if updated:
        await store.update_entities(conn, updated)
    emitted = {w.after.uid: w.relations for w in rewired if w.after is not None}
    if emitted:
        await store.replace_relations(conn, scope, emitted)
    stale.update(w.after.ref for w in writes if w.after is not None)
    stale.update(r.target for w in rewired for r in w.relations)
    await write_events(conn, [write.event(actor) for write in writes])
    return stale


async def apply_writes(conn: asyncpg.Connection, actor: Actor, scope: str, writes: list[EntityWrite]) -> None:
    """`write_entities`, then stitch what it touched: the whole change is queryable when the transaction commits."""
    await restitch(conn, scope, await write_entities(conn, actor, scope, writes))


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


def served_relations(entity: StoredEntity) -> list:
    """Relations of the document as served: ingested properties may set `spec.owner` and the like."""
    return relations_of(entity.served_document)[0]


async def _served_document(conn: asyncpg.Connection, scope: str, ref: str) -> dict[str, Any]:
    served = await store.served_by_ref(conn, scope, ref)
    assert served is not None, "read in the transaction that stitched it"
    return msgspec.json.decode(served.json)


async def create_entity(pool: asyncpg.Pool, actor: Actor, scope: str, raw: Any) -> dict[str, Any]:
    check_scope(scope)
    document, relations = prepare_document(raw)
    ref = str(ref_of(document))
    entity = StoredEntity(str(uuid.uuid4()), scope, ref, document, document_etag(document), 1)
    try:
        async with transaction(pool) as conn:
            await apply_writes(conn, actor, scope, [EntityWrite(None, entity, relations)])
            return await _served_document(conn, scope, ref)
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"{ref} already exists at scope {scope}") from None


async def replace_entity(
    pool: asyncpg.Pool, actor: Actor, scope: str, path_ref: tuple[str, str, str], raw: Any, if_match: str | None
) -> dict[str, Any]:
    """Replace an entity's document (`If-Match` honoured); an identical document writes and emits nothing."""
    check_scope(scope)
    document, _ = prepare_document(raw)  # validates references; relations come from the served document
    errors = body_ref_mismatches(document, *path_ref)
    if errors:
        raise InputError("the body names another entity than the path", errors=errors)
    ref = str(ref_of(document))
    async with transaction(pool) as conn:
        current = await store.get_by_ref(conn, scope, ref, lock=True)
        if current is None:
            raise NotFoundError(f"no entity {ref} at scope {scope}")
        check_if_match(if_match, current.etag)
        if current.document != document:
            updated = revised(current, document)
            await apply_writes(conn, actor, scope, [EntityWrite(current, updated, served_relations(updated))])
        return await _served_document(conn, scope, ref)


async def delete_entity(pool: asyncpg.Pool, actor: Actor, uid: str) -> None:
    async with transaction(pool) as conn:
        entity = await store.get_by_uid(conn, uid, lock=True)
        if entity is None:
            raise NotFoundError(f"no entity with uid {uid}")
        await apply_writes(conn, actor, entity.scope, [EntityWrite(entity, None)])


def _found(served: ServedEntity | None, missing: str) -> ServedEntity:
    if served is None:
        raise NotFoundError(missing)
    return served


def _items(jsons: list[str], fields: tuple[str, ...] | None) -> list[Served]:
    """Page items: the stored JSON as it is, or decoded and cut down to `fields`."""
    if fields:
        return [project_fields(msgspec.json.decode(json), fields) for json in jsons]
    return [msgspec.Raw(json) for json in jsons]


async def get_by_name(pool: asyncpg.Pool, scope: str, kind: str, namespace: str, name: str) -> ServedEntity:
    ref = str(parse_entity_ref({"kind": kind, "namespace": namespace, "name": name}))
    async with pool.acquire() as conn:
        return _found(await store.served_by_ref(conn, check_scope(scope), ref), f"no entity {ref}")


async def get_by_uid(pool: asyncpg.Pool, uid: str) -> ServedEntity:
    async with pool.acquire() as conn:
        return _found(await store.served_by_uid(conn, uid), f"no entity with uid {uid}")


async def list_entities(pool: asyncpg.Pool, query: EntityListQuery) -> list[Served]:
    """Backstage's `GET /entities`: filter, fields, offset and limit, at one scope."""
    scope = check_scope(query.scope)
    where = parse_filter_params(_as_list(query.filter))
    fields = parse_fields_param(_as_list(query.fields))
    async with pool.acquire() as conn:
        served = await store.list_entities(conn, scope, where, offset=query.offset, limit=query.limit)
    return _items(served, fields)


async def get_by_refs(pool: asyncpg.Pool, scope: str, request: ByRefsRequest) -> ByRefsResponse:
    """Backstage's `POST /entities/by-refs`: the entities in the order asked, `null` where there is none."""
    check_scope(scope)
    refs = []
    for index, raw in enumerate(request.entityRefs):
        try:
            refs.append(str(parse_entity_ref(raw)))
        except EntityRefError as exc:
            raise InputError.for_field(f"$.entityRefs[{index}]", str(exc)) from None
    fields = parse_fields_param(request.fields or [])
    async with pool.acquire() as conn:
        found = await store.served_by_refs(conn, scope, refs)
    return ByRefsResponse([_items([found[ref]], fields)[0] if ref in found else None for ref in refs])


Cursor = TypeVar("Cursor", QueryCursor, SearchCursor)


def _encode_cursor(cursor: QueryCursor | SearchCursor) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode()


def _decode_cursor(raw: str, cursor_type: type[Cursor]) -> Cursor:
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(raw.encode()), type=cursor_type)
    except (ValueError, binascii.Error, msgspec.DecodeError, msgspec.ValidationError):
        raise InputError.for_field("query.cursor", "not a cursor returned by this API") from None


def _page_info(cursor: Cursor, count: int, total: int, limit: int) -> PageInfo:
    """Cursors to the next page (when there is more) and the previous one (when this is not the first)."""
    after = cursor.offset + count
    return PageInfo(
        nextCursor=_encode_cursor(msgspec.structs.replace(cursor, offset=after)) if after < total else None,
        prevCursor=_encode_cursor(msgspec.structs.replace(cursor, offset=max(0, cursor.offset - limit)))
        if cursor.offset > 0
        else None,
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


async def query_entities(pool: asyncpg.Pool, query: EntityQuery) -> QueryPage:
    """Backstage's `GET /entities/by-query`: a page, the total, and cursors to the next and previous pages."""
    cursor = (
        _decode_cursor(query.cursor, QueryCursor)
        if query.cursor
        else QueryCursor(
            filter=_as_list(query.filter),
            orderField=_as_list(query.orderField),
            fullTextFilterTerm=query.fullTextFilterTerm,
            fullTextFilterFields=_as_list(query.fullTextFilterFields),
            scope=query.scope,
            offset=query.offset,
        )
    )
    scope = check_scope(cursor.scope)
    where = parse_filter_params(cursor.filter)
    term = (cursor.fullTextFilterTerm or "").strip()
    # Backstage's client sends the fields comma-separated in one parameter.
    keys = tuple(f.strip().lower() for value in cursor.fullTextFilterFields for f in value.split(",") if f.strip())
    full_text = (term, keys) if term else None
    fields = parse_fields_param(_as_list(query.fields))
    async with pool.acquire() as conn:
        page, total = await store.query_entities(
            conn,
            scope,
            where,
            full_text=full_text,
            order=_order_fields(cursor.orderField),
            offset=cursor.offset,
            limit=query.limit,
        )
    return QueryPage(_items(page, fields), total, _page_info(cursor, len(page), total, query.limit))


async def search_entities(pool: asyncpg.Pool, query: SearchQuery) -> SearchPage:
    """Ranked full-text search over name, title, description, tags, owner and annotations, filtered by kind,
    type, owner and tag, at a scope and the scopes below it."""
    cursor = (
        _decode_cursor(query.cursor, SearchCursor)
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
    scope = check_scope(cursor.scope)
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
    return SearchPage(hits, total, _page_info(cursor, len(hits), total, query.limit))


async def entity_facets(pool: asyncpg.Pool, query: FacetsQuery) -> FacetsResponse:
    """Backstage's `GET /entity-facets`: value counts per facet among the entities the filter selects."""
    scope = check_scope(query.scope)
    keys = [f.strip() for f in _as_list(query.facet) if f.strip()]
    if not keys:
        raise InputError.for_field("query.facet", "at least one facet is required")
    async with pool.acquire() as conn:
        found = await store.facets(conn, scope, parse_filter_params(_as_list(query.filter)), [k.lower() for k in keys])
    return FacetsResponse({k: [FacetValue(v, c) for v, c in found[k.lower()]] for k in keys})


async def entity_graph(pool: asyncpg.Pool, query: GraphQuery) -> Graph:
    """The entities reachable from `root` through chosen relation types, up to `depth` hops; dangling targets
    are nodes marked `missing`."""
    scope = check_scope(query.scope)
    try:
        root = str(parse_entity_ref(query.root))
    except EntityRefError as exc:
        raise InputError.for_field("query.root", str(exc)) from None
    wanted = {t.strip().lower() for value in _as_list(query.relations) for t in value.split(",") if t.strip()}
    seen, frontier, edges = {root}, {root}, set()
    async with pool.acquire() as conn:
        if await store.get_by_ref(conn, scope, root) is None:
            raise NotFoundError(f"no entity {root} at scope {scope}")
        for _ in range(query.depth):
            step = [
                r for r in await store.relations_from(conn, scope, frontier) if not wanted or r.type.lower() in wanted
            ]
            edges.update(step)
            frontier = {r.target for r in step} - seen
            seen |= frontier
            if not frontier:
                break
        found = await store.get_many(conn, scope, sorted(seen))
    nodes = []
    for ref in sorted(seen):
        kind, _, rest = ref.partition(":")
        entity = found.get(ref)
        metadata = entity.document.get("metadata", {}) if entity else {}
        nodes.append(
            GraphNode(
                ref=ref,
                kind=entity.document["kind"] if entity else kind,
                name=metadata.get("name", rest.partition("/")[2]),
                title=metadata.get("title"),
                missing=entity is None,
            )
        )
    return Graph(
        root=root,
        nodes=nodes,
        edges=[
            GraphEdge(r.source, r.type, r.target) for r in sorted(edges, key=lambda r: (r.source, r.type, r.target))
        ],
    )


def validate_entity_document(raw: Any) -> list[dict[str, str]]:
    """Backstage's `POST /validate-entity`: the problems, or none."""
    try:
        prepare_document(raw)
    except InputError as exc:
        return [{"name": "InputError", "message": e.message, "field": e.field} for e in exc.errors]
    return []


async def ingest_properties(pool: asyncpg.Pool, actor: Actor, scope: str, request: IngestRequest) -> IngestResult:
    """Set extra properties on existing entities without touching their source, all or nothing.

    Each entity's served document (document + properties) must still be valid; a refresh of its location
    replaces the document and keeps the properties.
    """
    check_scope(scope)
    plans = []
    for index, item in enumerate(request.items):
        field = f"$.items[{index}]"
        try:
            ref = str(parse_entity_ref(item.entityRef))
        except EntityRefError as exc:
            raise InputError.for_field(f"{field}.entityRef", str(exc)) from None
        for path in item.properties:
            check_path(path, f"{field}.properties.{path}")
        plans.append((field, ref, item.properties))
    updated_count = 0
    async with transaction(pool) as conn:
        originals = await store.get_many(conn, scope, sorted({ref for _, ref, _ in plans}), lock=True)
        latest = dict(originals)
        for field, ref, properties in plans:
            current = latest.get(ref)
            if current is None:
                raise InputError.for_field(f"{field}.entityRef", f"no entity {ref} at scope {scope}")
            merged = properties if request.mode == "replace" else {**current.properties, **properties}
            if merged == current.properties:
                continue
            updated = revised(current, current.document, properties=merged)
            errors = validate_entity(updated.served_document)
            if errors:
                raise InputError(
                    f"{ref} would not be valid: {errors[0].message}",
                    errors=[FieldError(f"{field}.properties", f"{e.field}: {e.message}") for e in errors],
                )
            latest[ref] = updated
            updated_count += 1
        writes = [
            EntityWrite(originals[ref], entity, served_relations(entity))
            for ref, entity in latest.items()
            if entity is not originals[ref]
        ]
        await apply_writes(conn, actor, scope, writes)
    return IngestResult(updated=updated_count, unchanged=len(plans) - updated_count)


async def set_favorite(pool: asyncpg.Pool, actor: Actor, uid: str, starred: bool) -> None:
    """Star or unstar an entity for the caller; repeating either is a no-op that emits nothing."""
    principal = f"{actor.kind}:{actor.id}"
    async with transaction(pool) as conn:
        entity = await store.get_by_uid(conn, uid)
        if entity is None:
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


async def favorites(pool: asyncpg.Pool, actor: Actor) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return _items(await store.favorite_entities(conn, f"{actor.kind}:{actor.id}"), None)
