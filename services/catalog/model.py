"""Catalog entities as stored and served: stitching, etags and what an API write may contain. Pure."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from services.catalog.properties import apply_properties
from services.catalog.query import SearchRow, build_search_rows, full_text_fields
from services.catalog.relations import Relation
from shared.errors import FieldError
from shared.events import Actor, ResourceRef, new_event

SCOPE_ANNOTATION = "seed-idp.dev/scope"
"""Where a served entity says which scope it lives at (Backstage clients ignore unknown annotations)."""
SERVER_METADATA = ("uid", "etag", "generation")
_canonical_json = msgspec.json.Encoder(order="sorted")


ORPHAN_ANNOTATION = "backstage.io/orphan"


@dataclass(frozen=True)
class StoredEntity:
    uid: str
    scope: str
    ref: str
    document: dict[str, Any]
    etag: str
    generation: int
    location_id: str | None = None
    """The registered location that emits it; None when written through the Entity API."""
    location_key: str | None = None
    orphan: bool = False
    """Its location stopped emitting it (orphan strategy `keep`)."""
    properties: dict[str, Any] = field(default_factory=dict)
    """Set through the ingestion API; overlaid on `document` when served."""

    @functools.cached_property
    def served_document(self) -> dict[str, Any]:
        """The document with the ingested properties set; computed once (a deep copy when there are any)."""
        return apply_properties(self.document, self.properties)


def ingestible_document(entity: dict[str, Any]) -> dict[str, Any]:
    """The part of an entity a client writes: computed fields (relations, status, uid, etag, generation,
    the scope annotation) are dropped, so a document read from the API can be written back unchanged."""
    metadata = {k: v for k, v in (entity.get("metadata") or {}).items() if k not in SERVER_METADATA}
    annotations = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k not in (SCOPE_ANNOTATION, ORPHAN_ANNOTATION)
    }
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    return {k: (metadata if k == "metadata" else v) for k, v in entity.items() if k not in ("relations", "status")}


def document_etag(document: dict[str, Any]) -> str:
    """A stable hash of the document: unchanged content keeps its etag, any change gives a new one."""
    return hashlib.sha256(_canonical_json.encode(document)).hexdigest()[:32]


def next_generation(current: StoredEntity, document: dict[str, Any]) -> int:
    """Backstage bumps `generation` when the spec changes, not for metadata edits."""
    return current.generation + 1 if current.document.get("spec") != document.get("spec") else current.generation


def stitch(entity: StoredEntity, relations: list[Relation]) -> dict[str, Any]:
    """The entity as served: document + uid/etag/generation + scope annotation + its relations, sorted by
    type then target as Backstage sorts them. `targetRef` stays a Backstage ref; a target at another scope than
    the entity's is marked with `targetScope` (Backstage clients ignore the extra member)."""
    document = entity.served_document
    metadata = dict(document.get("metadata") or {})
    metadata.update(uid=entity.uid, etag=entity.etag, generation=entity.generation)
    metadata["annotations"] = {**(metadata.get("annotations") or {}), SCOPE_ANNOTATION: entity.scope}
    if entity.orphan:
        metadata["annotations"][ORPHAN_ANNOTATION] = "true"
    return {**document, "metadata": metadata, "relations": served_relations_of(entity, relations)}


def _served_relation(kind: str, target: str, target_scope: str, own_scope: str) -> dict[str, str]:
    if target_scope == own_scope:
        return {"type": kind, "targetRef": target}
    return {"type": kind, "targetRef": target, "targetScope": target_scope}


SOURCE = "catalog"
"""The `source` of the catalog's events."""


def entity_event(verb: str, actor: Actor, entity: StoredEntity, data: dict[str, Any]):
    """`catalog.entity.<verb>` about `entity`, its uid first in the data."""
    return new_event(
        f"catalog.entity.{verb}",
        source=SOURCE,
        actor=actor,
        scope=entity.scope,
        resource=ResourceRef("entity", entity.ref),
        data={"uid": entity.uid, **data},
    )


def served_relations_of(entity: StoredEntity, relations: Iterable[Relation]) -> list[dict[str, str]]:
    """The `relations` array of `entity` as served, from the relations among `relations` that start at it."""
    ordered = sorted(
        {(r.type, r.target, r.target_scope) for r in relations if r.source == entity.ref and r.scope == entity.scope}
    )
    return [_served_relation(kind, target, scope, entity.scope) for kind, target, scope in ordered]


@dataclass(frozen=True, slots=True)
class StitchedEntity:
    """What stitching stores for one entity: the JSON reads serve, and what filters and searches match."""

    uid: str
    final_entity: str
    search_rows: list[SearchRow]
    full_text: tuple[str, str, str, str]


_json = msgspec.json.Encoder()


def stitched(entity: StoredEntity, relations: list[Relation]) -> StitchedEntity:
    served = stitch(entity, relations)
    return StitchedEntity(
        entity.uid, _json.encode(served).decode(), build_search_rows(served), full_text_fields(served)
    )


@dataclass(frozen=True, slots=True)
class ServedEntity:
    """A stored entity ready to send: its stitched JSON and etag."""

    etag: str
    json: str


def body_ref_mismatches(document: dict[str, Any], kind: str, namespace: str, name: str) -> list[FieldError]:
    """A replace names the entity in its path; where the body names another, one error per field."""
    metadata = document.get("metadata") or {}
    pairs = [
        ("$.kind", str(document.get("kind", "")), kind),
        ("$.metadata.namespace", str(metadata.get("namespace") or "default"), namespace),
        ("$.metadata.name", str(metadata.get("name", "")), name),
    ]
    return [
        FieldError(f, f"must be {want!r} as in the path, not {got!r}")
        for f, got, want in pairs
        if got.lower() != want.lower()
    ]


class EntityListQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`GET /entities`: Backstage's parameters plus `scope`."""

    filter: list[str] | str | None = None
    fields: list[str] | str | None = None
    order: list[str] | str | None = None
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=10000)] | None = None
    after: str | None = None
    scope: str = "account"
    includeParents: bool = False
    includeChildren: bool = False


class ScopeQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scope: str = "account"


class ByRefsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /entities/by-refs`: entities the `filter` does not select come back as `null` (Backstage)."""

    scope: str = "account"
    includeParents: bool = False
    """A ref without `@scope` may resolve at the nearest scope above `scope` that has it."""
    filter: list[str] | str | None = None


class ByNameQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scope: str = "account"
    includeParents: bool = False
    """Without the entity at `scope`, answer the one at the nearest scope above it (visible from below)."""


class ScopeReadQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A read at `scope`, with the scopes above it (`includeParents`) and/or below it (`includeChildren`)."""

    scope: str = "account"
    includeParents: bool = False
    includeChildren: bool = False


class EntityQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`GET /entities/by-query`: Backstage's parameters plus `scope`. With `cursor`, everything but `fields`
    and `limit` comes from the cursor."""

    filter: list[str] | str | None = None
    fields: list[str] | str | None = None
    limit: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 20
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    orderField: list[str] | str | None = None
    cursor: str | None = None
    fullTextFilterTerm: str | None = None
    fullTextFilterFields: list[str] | str | None = None
    scope: str = "account"
    includeParents: bool = False
    includeChildren: bool = False


class QueryCursor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a `nextCursor`/`prevCursor` carries: the query and the page position."""

    filter: list[str]
    orderField: list[str]
    fullTextFilterTerm: str | None
    fullTextFilterFields: list[str]
    scope: str
    offset: int
    includeParents: bool = False
    includeChildren: bool = False


class PageInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    nextCursor: str | None = None
    prevCursor: str | None = None


Served = dict[str, Any] | msgspec.Raw
"""An entity in a response: its stored JSON as it is, or a dict when `fields` cut it down."""


class QueryPage(msgspec.Struct, frozen=True):
    items: list[Served]
    totalItems: int
    pageInfo: PageInfo


class SearchQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`GET /search`: ranked full-text search. Filters of one name match any of their values; different
    filters must all match. With `cursor`, everything but `limit` comes from the cursor."""

    q: Annotated[str, msgspec.Meta(max_length=200)] = ""
    """Words to find in name, title, description, tags, owner and annotation values; each word matches the
    start of a word (`bill` finds `billing-api`)."""
    kind: list[str] | str | None = None
    type: list[str] | str | None = None
    """`spec.type`."""
    owner: list[str] | str | None = None
    """Owner entity ref; kind defaults to `group`, namespace to `default`."""
    tag: list[str] | str | None = None
    scope: str = "account"
    """Searches this scope and the scopes below it."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    cursor: str | None = None


class SearchCursor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a search `nextCursor`/`prevCursor` carries: the search and the page position."""

    q: str
    kind: list[str]
    type: list[str]
    owner: list[str]
    tag: list[str]
    scope: str
    offset: int


class SearchHit(msgspec.Struct, frozen=True):
    entity: Served
    score: float
    """Higher is better: `ts_rank` over the weighted document (name and title weigh most), +1 for the exact name."""
    highlight: str
    """Name, title and description with the matched words between `**`; plain text, not HTML."""


class SearchPage(msgspec.Struct, frozen=True):
    items: list[SearchHit]
    totalItems: int
    pageInfo: PageInfo


class ByRefsRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entityRefs: Annotated[list[str], msgspec.Meta(max_length=10000)]
    fields: list[str] | None = None
    query: dict[str, Any] | None = None
    """A predicate (as in `POST /entities/by-query`); entities that do not match come back as `null`."""


class ByRefsResponse(msgspec.Struct, frozen=True):
    items: list[Served | None]


class FacetsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    facet: list[str] | str
    filter: list[str] | str | None = None
    scope: str = "account"
    includeParents: bool = False
    includeChildren: bool = False


class FacetValue(msgspec.Struct, frozen=True):
    value: str
    count: int


class FacetsResponse(msgspec.Struct, frozen=True):
    facets: dict[str, list[FacetValue]]


class LocationSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of `POST /locations`."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    target: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class LocationView(msgspec.Struct, frozen=True, omit_defaults=True):
    """A location as Backstage serves it, plus the problems of its last read."""

    id: str
    type: str
    target: str
    errors: list[dict[str, Any]] = []


class LocationQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dryRun: bool = False
    scope: str = "account"


class RefreshRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entityRef: str
    authorizationToken: str | None = None


class GraphQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    root: str
    """Entity ref to start from (`kind:namespace/name`; namespace defaults to `default`)."""
    depth: Annotated[int, msgspec.Meta(ge=0, le=6)] = 2
    relations: list[str] | str | None = None
    """Relation types to follow (comma list or repeated); all when absent."""
    scope: str = "account"
    includeParents: bool = False
    """A root without `@scope` may resolve at the nearest scope above `scope` that has it."""


class GraphNode(msgspec.Struct, frozen=True, omit_defaults=True):
    ref: str
    kind: str
    name: str
    title: str | None = None
    missing: bool = False
    """A relation points at it but no such entity exists (a dangling reference)."""


class GraphEdge(msgspec.Struct, frozen=True):
    source: str
    type: str
    target: str


class Graph(msgspec.Struct, frozen=True):
    root: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class ValidateEntityRequest(msgspec.Struct, frozen=True):
    entity: Any
    location: str | None = None


class IngestItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entityRef: str
    properties: dict[str, Any]
    """{path: value}, e.g. {"metadata.annotations.pagerduty.com/service-id": "P123", "spec.lifecycle": "production"}."""


class IngestRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /ingest`: `merge` sets the given paths; `replace` makes them the entity's only properties."""

    items: Annotated[list[IngestItem], msgspec.Meta(min_length=1, max_length=10000)]
    mode: Literal["merge", "replace"] = "merge"


class IngestResult(msgspec.Struct, frozen=True):
    updated: int
    unchanged: int


class OrderBy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    field: Annotated[str, msgspec.Meta(min_length=1)]
    order: Literal["asc", "desc"] = "asc"


class FullTextFilter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    term: str
    fields: list[str] | None = None


class PredicateQueryRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`POST /entities/by-query` (Backstage's predicate form). With `cursor`, everything but `fields` and
    `limit` comes from the cursor."""

    query: dict[str, Any] | None = None
    cursor: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 20
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0
    orderBy: list[OrderBy] | None = None
    fullTextFilter: FullTextFilter | None = None
    fields: list[str] | None = None
    totalItems: bool = True
    """Accepted for Backstage's client; the total is always counted."""


class PredicateCursor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a predicate query's cursor carries. Backstage's client sends a cursor whose JSON has a `query`
    key to `POST /entities/by-query`, any other to `GET`, so `query` is always present."""

    query: dict[str, Any] | None
    orderBy: list[OrderBy]
    fullTextFilter: FullTextFilter | None
    scope: str
    offset: int
    includeParents: bool = False
    includeChildren: bool = False


class PredicateFacetsRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /entity-facets`."""

    facets: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100)]
    query: dict[str, Any] | None = None


class AncestryItem(msgspec.Struct, frozen=True):
    entity: dict[str, Any]
    parentEntityRefs: list[str]


class Ancestry(msgspec.Struct, frozen=True):
    rootEntityRef: str
    items: list[AncestryItem]
