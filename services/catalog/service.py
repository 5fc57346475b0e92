"""Catalog use cases: the direct Entity API (create, replace, delete) and Backstage's reads.

Every write is one transaction: the entity, the relations it emits, the search rows of every entity whose
relations changed (the entity itself and the targets on both sides), and its event in the outbox.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from services.catalog import kinds as kinds_module
from services.catalog import store
from services.catalog.entity_ref import parse_entity_ref, ref_of
from services.catalog.kinds import Kinds
from services.catalog.model import (
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
    StoredEntity,
    body_ref_mismatches,
    check_scope,
    document_etag,
    ingestible_document,
    next_generation,
    stitch,
)
from services.catalog.predicates import Predicate, parse_predicate
from services.catalog.predicates import matches as predicate_matches
from services.catalog.properties import apply_properties, check_path
from services.catalog.query import AllOf, build_search_rows, parse_fields_param, parse_filter_params, project_fields
from services.catalog.relations import relations_of
from services.catalog.scopes import ScopeSelector, names_scope, parse_scoped_ref
from services.catalog.validation import default_namespace, validate_entity
from shared.db import transaction
from shared.errors import ConflictError, FieldError, InputError, NotFoundError
from shared.etag import check_if_match
from shared.events import Actor, ResourceRef, diff_fields, new_event
from shared.outbox import write_event

SOURCE = "catalog"


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
    relations, ref_errors = relations_of(document, kinds.relation_rules(document))
    if ref_errors:
        raise InputError(f"the entity has invalid references: {ref_errors[0].message}", errors=ref_errors)
    return document, relations


async def _restitch(conn: asyncpg.Connection, scope: str, refs: set[str]) -> None:
    """Rebuild the search rows of the existing entities among `refs`, whose relations may have changed."""
    entities = await store.get_many(conn, scope, sorted(refs))
    relations = await store.relations_from(conn, scope, entities)
    await store.replace_search_rows(conn, {e.uid: build_search_rows(stitch(e, relations)) for e in entities.values()})


def _event(kind: str, actor: Actor, entity: StoredEntity, data: dict[str, Any]):
    return new_event(
        f"catalog.entity.{kind}",
        source=SOURCE,
        actor=actor,
        scope=entity.scope,
        resource=ResourceRef("entity", entity.ref),
        data={"uid": entity.uid, **data},
    )


async def insert_entity(conn: asyncpg.Connection, actor: Actor, entity: StoredEntity, relations: list) -> None:
    """Store a new entity with its relations, re-stitch what it touches, and emit `catalog.entity.created`."""
    await store.insert_entity(conn, entity)
    await store.replace_relations(conn, entity.uid, entity.scope, relations)
    await _restitch(conn, entity.scope, {entity.ref} | {r.target for r in relations})
    await write_event(conn, _event("created", actor, entity, {"entity": entity.document}))


async def update_entity(
    conn: asyncpg.Connection, actor: Actor, current: StoredEntity, updated: StoredEntity, relations: list
) -> None:
    """Store a changed entity, re-stitch both old and new relation targets, and emit the changed fields."""
    affected = await store.emitted_targets(conn, current.uid)
    await store.update_entity(conn, updated)
    await store.replace_relations(conn, updated.uid, updated.scope, relations)
    await _restitch(conn, updated.scope, affected | {updated.ref} | {r.target for r in relations})
    changes = diff_fields(current.served_document, updated.served_document)
    if current.orphan != updated.orphan:
        changes["orphan"] = {"before": current.orphan, "after": updated.orphan}
    verb = "orphaned" if updated.orphan and list(changes) == ["orphan"] else "updated"
    await write_event(conn, _event(verb, actor, updated, {"changes": changes, "generation": updated.generation}))


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


def served_relations(entity: StoredEntity, kinds: Kinds) -> list:
    """Relations of the document as served: ingested properties may set `spec.owner` and the like."""
    document = entity.served_document
    return relations_of(document, kinds.relation_rules(document))[0]


async def create_entity(pool: asyncpg.Pool, actor: Actor, scope: str, raw: Any) -> dict[str, Any]:
    check_scope(scope)
    try:
        async with transaction(pool) as conn:
            document, relations = prepare_document(raw, await kinds_module.load(conn))
            ref = str(ref_of(document))
            entity = StoredEntity(str(uuid.uuid4()), scope, ref, document, document_etag(document), 1)
            await insert_entity(conn, actor, entity, relations)
            return stitch(entity, await store.relations_from(conn, scope, [ref]))
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
        if current.document == document:
            return stitch(current, await store.relations_from(conn, scope, [ref]))
        updated = revised(current, document)
        await update_entity(conn, actor, current, updated, served_relations(updated, kinds))
        return stitch(updated, await store.relations_from(conn, scope, [ref]))


async def delete_entity(pool: asyncpg.Pool, actor: Actor, uid: str) -> None:
    async with transaction(pool) as conn:
        entity = await store.get_by_uid(conn, uid, lock=True)
        if entity is None:
            raise NotFoundError(f"no entity with uid {uid}")
        await remove_entity(conn, actor, entity)


async def remove_entity(conn: asyncpg.Connection, actor: Actor, entity: StoredEntity) -> None:
    """Delete an entity and its relations, re-stitch what they pointed at, and emit `catalog.entity.deleted`."""
    affected = await store.emitted_targets(conn, entity.uid)
    await store.delete_entity(conn, entity.uid)
    await _restitch(conn, entity.scope, affected - {entity.ref})
    await write_event(conn, _event("deleted", actor, entity, {"entity": entity.document}))


async def _serve(conn: asyncpg.Connection, entities: list[StoredEntity]) -> list[dict[str, Any]]:
    """Stitch many entities with one relations query per scope among them."""
    refs_by_scope: dict[str, list[str]] = {}
    for entity in entities:
        refs_by_scope.setdefault(entity.scope, []).append(entity.ref)
    relations = [r for scope, refs in refs_by_scope.items() for r in await store.relations_from(conn, scope, refs)]
    return [stitch(entity, relations) for entity in entities]


async def _served(conn: asyncpg.Connection, entity: StoredEntity | None, missing: str) -> dict[str, Any]:
    if entity is None:
        raise NotFoundError(missing)
    return stitch(entity, await store.relations_from(conn, entity.scope, [entity.ref]))


async def get_by_name(pool: asyncpg.Pool, query: ByNameQuery, kind: str, namespace: str, name: str) -> dict[str, Any]:
    ref = str(parse_entity_ref({"kind": kind, "namespace": namespace, "name": name}))
    scopes = ScopeSelector.of(query.scope, parents=query.includeParents).exact_scopes()
    async with pool.acquire() as conn:
        return await _served(conn, (await store.get_nearest(conn, scopes, [ref])).get(ref), f"no entity {ref}")


async def get_by_uid(pool: asyncpg.Pool, uid: str) -> dict[str, Any]:
    async with pool.acquire() as conn:
        return await _served(conn, await store.get_by_uid(conn, uid), f"no entity with uid {uid}")


async def list_entities(pool: asyncpg.Pool, query: EntityListQuery) -> list[dict[str, Any]]:
    """Backstage's `GET /entities`: filter, fields, offset and limit, at a scope (and those around it, if asked)."""
    scope = ScopeSelector.of(query.scope, parents=query.includeParents, children=query.includeChildren)
    where = parse_filter_params(_as_list(query.filter))
    fields = parse_fields_param(_as_list(query.fields))
    async with pool.acquire() as conn:
        served = await _serve(
            conn, await store.list_entities(conn, scope, where, offset=query.offset, limit=query.limit)
        )
    return [project_fields(e, fields) for e in served] if fields else served


async def get_by_refs(pool: asyncpg.Pool, query: ByRefsQuery, request: ByRefsRequest) -> ByRefsResponse:
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
            (scope_of, ref): entity
            for scope_of, refs in refs_by_scope.items()
            for ref, entity in (await store.get_nearest(conn, [scope_of] if scope_of else default_scopes, refs)).items()
        }
        served = dict(zip(found, await _serve(conn, list(found.values())), strict=True))
    items = [served.get(key) for key in wanted]
    if predicate is not None:
        items = [i if i is not None and predicate_matches(predicate, build_search_rows(i)) else None for i in items]
    return ByRefsResponse([project_fields(i, fields) if i is not None and fields else i for i in items])


def _encode_cursor(cursor: QueryCursor) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(cursor)).decode()


def _decode_cursor(raw: str) -> QueryCursor:
    try:
        return msgspec.json.decode(base64.urlsafe_b64decode(raw.encode()), type=QueryCursor)
    except (ValueError, binascii.Error, msgspec.DecodeError, msgspec.ValidationError):
        raise InputError.for_field("query.cursor", "not a cursor returned by this API") from None


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
        _decode_cursor(query.cursor)
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
    full_text = (term, tuple(f.strip().lower() for f in cursor.fullTextFilterFields if f.strip())) if term else None
    return await query_page(
        pool,
        ScopeSelector.of(cursor.scope, parents=cursor.includeParents, children=cursor.includeChildren),
        parse_filter_params(cursor.filter),
        full_text=full_text,
        order=_order_fields(cursor.orderField),
        offset=cursor.offset,
        limit=query.limit,
        fields=parse_fields_param(_as_list(query.fields)),
        cursor_at=lambda offset: _encode_cursor(msgspec.structs.replace(cursor, offset=offset)),
    )


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
) -> QueryPage:
    """A page of matching entities, the total, and cursors (made by `cursor_at(offset)`) to the pages around."""
    async with pool.acquire() as conn:
        page, total = await store.query_entities(
            conn, scope, where, full_text=full_text, order=order, offset=offset, limit=limit
        )
        items = await _serve(conn, page)
    after = offset + len(page)
    return QueryPage(
        items=[project_fields(i, fields) for i in items] if fields else items,
        totalItems=total,
        pageInfo=PageInfo(
            nextCursor=cursor_at(after) if after < total else None,
            prevCursor=cursor_at(max(0, offset - limit)) if offset > 0 else None,
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


async def query_by_predicate(pool: asyncpg.Pool, scope: ScopeReadQuery, request: PredicateQueryRequest) -> QueryPage:
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
        ScopeSelector.of(cursor.scope, parents=cursor.includeParents, children=cursor.includeChildren),
        predicate,
        full_text=full_text,
        order=[(o.field.strip().lower(), o.order == "desc") for o in cursor.orderBy],
        offset=cursor.offset,
        limit=request.limit,
        fields=parse_fields_param(request.fields or []),
        cursor_at=lambda offset: _encode_predicate_cursor(msgspec.structs.replace(cursor, offset=offset)),
    )


async def facets_by_predicate(
    pool: asyncpg.Pool, scope: ScopeReadQuery, request: PredicateFacetsRequest
) -> FacetsResponse:
    """Backstage's `POST /entity-facets`: facets among the entities a predicate selects."""
    predicate = parse_predicate(request.query) if request.query is not None else None
    selector = ScopeSelector.of(scope.scope, parents=scope.includeParents, children=scope.includeChildren)
    return await facet_counts(pool, selector, predicate, request.facets, field="$.facets")


async def entity_facets(pool: asyncpg.Pool, query: FacetsQuery) -> FacetsResponse:
    """Backstage's `GET /entity-facets`: value counts per facet among the entities the filter selects."""
    where = parse_filter_params(_as_list(query.filter))
    selector = ScopeSelector.of(query.scope, parents=query.includeParents, children=query.includeChildren)
    return await facet_counts(pool, selector, where, _as_list(query.facet), field="query.facet")


async def facet_counts(
    pool: asyncpg.Pool, scope: ScopeSelector, where: Predicate | None, facets: list[str], *, field: str
) -> FacetsResponse:
    keys = [f.strip() for f in facets if f.strip()]
    if not keys:
        raise InputError.for_field(field, "at least one facet is required")
    async with pool.acquire() as conn:
        found = await store.facets(conn, scope, where, [k.lower() for k in keys])
    return FacetsResponse({k: [FacetValue(v, c) for v, c in found[k.lower()]] for k in keys})


async def entity_graph(pool: asyncpg.Pool, query: GraphQuery) -> Graph:
    """The entities reachable from `root` through chosen relation types, up to `depth` hops; dangling targets
    are nodes marked `missing`."""
    root_ref, scope = parse_scoped_ref(query.root, check_scope(query.scope), "query.root")
    root = str(root_ref)
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


async def validate_entity_document(pool: asyncpg.Pool, raw: Any) -> list[dict[str, str]]:
    """Backstage's `POST /validate-entity`: the problems, or none."""
    async with pool.acquire() as conn:
        kinds = await kinds_module.load(conn)
    try:
        prepare_document(raw, kinds)
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
        ref, item_scope = parse_scoped_ref(item.entityRef, scope, f"{field}.entityRef")
        for path in item.properties:
            check_path(path, f"{field}.properties.{path}")
        plans.append((field, str(ref), item_scope, item.properties))
    updated_count = 0
    async with transaction(pool) as conn:
        kinds = await kinds_module.load(conn)
        for field, ref, item_scope, properties in plans:
            current = await store.get_by_ref(conn, item_scope, ref, lock=True)
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
            await update_entity(conn, actor, current, updated, served_relations(updated, kinds))
            updated_count += 1
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
        return await _serve(conn, await store.favorite_entities(conn, f"{actor.kind}:{actor.id}"))


async def get_by_uids(pool: asyncpg.Pool, uids: list[str]) -> list[dict[str, Any]]:
    """The entities with these uids, stitched, in the order asked; unknown uids are left out."""
    for index, uid in enumerate(uids):
        try:
            uuid.UUID(uid)
        except ValueError:
            raise InputError.for_field(f"$.uids[{index}]", f"{uid!r} is not a uid") from None
    async with pool.acquire() as conn:
        return await _serve(conn, await store.get_in_order(conn, uids))


async def entity_page(pool: asyncpg.Pool, after_uid: str | None, limit: int) -> list[dict[str, Any]]:
    """Entities of every scope in uid order after `after_uid`, stitched: one page of a full scan."""
    if after_uid is not None:
        try:
            uuid.UUID(after_uid)
        except ValueError:
            raise InputError.for_field("$.after", f"{after_uid!r} is not a uid") from None
    async with pool.acquire() as conn:
        return await _serve(conn, await store.entities_after(conn, after_uid, limit))
