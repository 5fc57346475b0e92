"""Catalog HTTP routes: Backstage's catalog REST paths under `/api/catalog`, plus the direct Entity API."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from services.catalog import analyze, ancestry, convert, ingestion, kinds, service
from services.catalog.entity_ref import ref_of
from services.catalog.model import (
    Ancestry,
    ByNameQuery,
    ByRefsQuery,
    ByRefsRequest,
    ByRefsResponse,
    EntityListQuery,
    EntityQuery,
    FacetsQuery,
    FacetsResponse,
    Graph,
    GraphQuery,
    IngestRequest,
    IngestResult,
    LocationQuery,
    LocationSpec,
    LocationView,
    PredicateFacetsRequest,
    PredicateQueryRequest,
    QueryPage,
    RefreshRequest,
    ScopeQuery,
    ScopeReadQuery,
    SearchPage,
    SearchQuery,
    ServedEntity,
    ValidateEntityRequest,
)
from services.catalog.read_cache import ReadCaches, drop_after
from shared.access import record_policy_outcome, warning_headers
from shared.authz import Resource, Visibility
from shared.etag import quoted
from shared.events import DEFAULT_SCOPE, ResourceRef
from shared.http import Operation, Routes, json_response, parse_query, principal_of, read_json
from shared.scopes import check_scope
from shared.service import Deps

BY_NAME = "/api/catalog/entities/by-name/{kind}/{namespace}/{name}"
BY_UID = "/api/catalog/entities/by-uid/{uid}"
KIND = "/api/catalog/kinds/{kind}/{apiVersion:.+}"
"""An apiVersion may hold a `/` (`example.com/v1`), so it takes the rest of the path."""


def _path_ref(request: web.Request) -> tuple[str, str, str]:
    info = request.match_info
    return info["kind"], info["namespace"], info["name"]


def _entity_response(
    entity: dict[str, Any], status: int = 200, headers: list[tuple[str, str]] | None = None
) -> web.Response:
    response = json_response(entity, status=status, headers={"ETag": quoted(entity["metadata"]["etag"])})
    for name, value in headers or []:
        response.headers.add(name, value)
    return response


def _served_response(entity: ServedEntity) -> web.Response:
    """The stored JSON as it is: nothing is decoded or encoded per request."""
    return web.Response(text=entity.json, content_type="application/json", headers={"ETag": quoted(entity.etag)})


def _writes_entities(operation: Operation) -> bool:
    return operation.method != "GET" and not (operation.permission or "").endswith("_view")


def routes(deps: Deps) -> Routes:
    pool = deps.pool
    caches: ReadCaches = deps.context.caches
    policy = deps.settings.ingestion_policy(deps.access, deps.context.fetcher)
    api = Routes(tag="catalog")

    def authorize_write(request: web.Request, permission: str, resource: Resource, body: Any):
        """The caller may write this entity (at its scope, as its owner, or not at all if it is restricted), and
        the policy sets on the action there pass."""
        return deps.access.authorize_write(principal_of(request), permission, resource, body)

    def writer(request: web.Request, permission: str) -> service.AuthorizeEntityWrite:
        return lambda resource, document: authorize_write(request, permission, resource, document)

    def require(request: web.Request, permission: str, scope: str) -> None:
        """The caller holds `permission` at `scope` itself (the route only checked that it holds it somewhere)."""
        deps.access.require_at(principal_of(request), permission, check_scope(scope))

    async def recorded(request: web.Request, action: str, scope: str, entity: dict[str, Any], outcome) -> None:
        ref = ResourceRef("entity", str(ref_of(entity)))
        await record_policy_outcome(pool, "catalog", principal_of(request).actor(), action, scope, ref, outcome)

    def visible(request: web.Request) -> Visibility:
        """The scopes the caller's role bindings let it read; lists keep only those (in the SQL)."""
        return deps.access.visibility(principal_of(request), "catalog_entity_view")

    @api.get(
        "/api/catalog/entities",
        summary="List entities (Backstage: filter, fields, offset, limit)",
        permission="catalog_entity_view",
        query=EntityListQuery,
    )
    async def list_entities(request: web.Request) -> web.Response:
        query = parse_query(request, EntityListQuery)
        return json_response(await service.list_entities(pool, query, visible(request)))

    @api.post(
        "/api/catalog/entities",
        summary="Create an entity at a scope, without a YAML file",
        permission="catalog_entity_create",
        query=ScopeQuery,
        body=dict[str, Any],
        status=201,
    )
    async def create_entity(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeQuery).scope
        body = await read_json(request, dict[str, Any])
        outcome = authorize_write(
            request, "catalog_entity_create", Resource("catalog_entity", check_scope(scope)), body
        )
        created = await service.create_entity(pool, principal_of(request).actor(), scope, body)
        await recorded(request, "catalog_entity_create", scope, created, outcome)
        return _entity_response(created, 201, warning_headers(outcome))

    @api.get(
        BY_NAME, summary="An entity by kind, namespace and name", permission="catalog_entity_view", query=ByNameQuery
    )
    async def get_entity_by_name(request: web.Request) -> web.Response:
        query = parse_query(request, ByNameQuery)
        return _served_response(
            await service.get_by_name(pool, query, *_path_ref(request), visible(request), cache=caches.entities)
        )

    @api.put(
        BY_NAME,
        summary="Replace an entity (honours If-Match)",
        permission="catalog_entity_edit",
        query=ScopeQuery,
        body=dict[str, Any],
    )
    async def replace_entity(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeQuery).scope
        body = await read_json(request, dict[str, Any])
        kind, namespace, name = _path_ref(request)
        resource = await service.access_resource(pool, check_scope(scope), f"{kind}:{namespace}/{name}".lower())
        outcome = authorize_write(request, "catalog_entity_edit", resource, body)
        entity = await service.replace_entity(
            pool, principal_of(request).actor(), scope, _path_ref(request), body, request.headers.get("If-Match")
        )
        await recorded(request, "catalog_entity_edit", scope, entity, outcome)
        return _entity_response(entity, headers=warning_headers(outcome))

    @api.get(
        f"{BY_NAME}/ancestry",
        summary="The Location entities that led to an entity (Backstage)",
        permission="catalog_entity_view",
        query=ByNameQuery,
        response=Ancestry,
    )
    async def get_entity_ancestry(request: web.Request) -> web.Response:
        query = parse_query(request, ByNameQuery)
        await service.get_by_name(pool, query, *_path_ref(request), visible(request))
        return json_response(await ancestry.ancestry(pool, query, *_path_ref(request)))

    @api.get(BY_UID, summary="An entity by uid", permission="catalog_entity_view")
    async def get_entity_by_uid(request: web.Request) -> web.Response:
        return _served_response(await service.get_by_uid(pool, request.match_info["uid"], visible(request)))

    @api.delete(BY_UID, summary="Delete an entity by uid", permission="catalog_entity_delete", status=204)
    async def delete_entity_by_uid(request: web.Request) -> web.Response:
        entity, outcome = await service.delete_entity(
            pool, principal_of(request).actor(), request.match_info["uid"], writer(request, "catalog_entity_delete")
        )
        await recorded(request, "catalog_entity_delete", entity.scope, entity.document, outcome)
        return web.Response(status=204, headers=warning_headers(outcome))

    @api.get(
        "/api/catalog/entities/by-query",
        summary="Query entities with cursor pagination (Backstage)",
        permission="catalog_entity_view",
        query=EntityQuery,
        response=QueryPage,
    )
    async def query_entities(request: web.Request) -> web.Response:
        query = parse_query(request, EntityQuery)
        return json_response(await service.query_entities(pool, query, visible(request), caches=caches))

    @api.post(
        "/api/catalog/entities/by-query",
        summary="Query entities with a predicate ($all, $any, $not, $exists, $in, $hasPrefix, $contains) (Backstage)",
        permission="catalog_entity_view",
        query=ScopeReadQuery,
        body=PredicateQueryRequest,
        response=QueryPage,
    )
    async def query_entities_by_predicate(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeReadQuery)
        body = await read_json(request, PredicateQueryRequest)
        return json_response(await service.query_by_predicate(pool, scope, body, visible(request), caches=caches))

    @api.post(
        "/api/catalog/entities/by-refs",
        summary="Entities by refs, in order, null where missing (Backstage)",
        permission="catalog_entity_view",
        query=ByRefsQuery,
        body=ByRefsRequest,
        response=ByRefsResponse,
    )
    async def get_entities_by_refs(request: web.Request) -> web.Response:
        query = parse_query(request, ByRefsQuery)
        body = await read_json(request, ByRefsRequest)
        return json_response(await service.get_by_refs(pool, query, body, visible(request)))

    @api.get(
        "/api/catalog/search",
        summary="Ranked full-text search, filterable by kind, type, owner, tag and scope",
        permission="catalog_entity_view",
        query=SearchQuery,
        response=SearchPage,
    )
    async def search_entities(request: web.Request) -> web.Response:
        return json_response(await service.search_entities(pool, parse_query(request, SearchQuery), visible(request)))

    @api.get(
        "/api/catalog/entity-facets",
        summary="Value counts per facet (Backstage)",
        permission="catalog_entity_view",
        query=FacetsQuery,
        response=FacetsResponse,
    )
    async def get_entity_facets(request: web.Request) -> web.Response:
        query = parse_query(request, FacetsQuery)
        return json_response(await service.entity_facets(pool, query, visible(request), cache=caches.facets))

    @api.post(
        "/api/catalog/entity-facets",
        summary="Value counts per facet among the entities a predicate selects (Backstage)",
        permission="catalog_entity_view",
        query=ScopeReadQuery,
        body=PredicateFacetsRequest,
        response=FacetsResponse,
    )
    async def query_entity_facets_by_predicate(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeReadQuery)
        body = await read_json(request, PredicateFacetsRequest)
        return json_response(
            await service.facets_by_predicate(pool, scope, body, visible(request), cache=caches.facets)
        )

    @api.post(
        "/api/catalog/locations",
        summary="Register a location (or read it only, with dryRun)",
        permission="catalog_location_create",
        query=LocationQuery,
        body=LocationSpec,
        status=201,
    )
    async def create_location(request: web.Request) -> web.Response:
        query = parse_query(request, LocationQuery)
        spec = await read_json(request, LocationSpec)
        require(request, "catalog_location_create", query.scope)
        result = await ingestion.add_location(
            pool, policy, principal_of(request).actor(), query.scope, spec, dry_run=query.dryRun
        )
        return json_response(result, status=200 if query.dryRun else 201)

    @api.get(
        "/api/catalog/locations",
        summary="Registered locations (Backstage shape: [{data}])",
        permission="catalog_location_view",
    )
    async def list_locations(request: web.Request) -> web.Response:
        visible_locations = deps.access.visibility(principal_of(request), "catalog_location_view")
        return json_response([{"data": view} for view in await ingestion.list_locations(pool, visible_locations)])

    @api.get(
        "/api/catalog/locations/{id}",
        summary="A location and the problems of its last read",
        permission="catalog_location_view",
        response=LocationView,
    )
    async def get_location(request: web.Request) -> web.Response:
        visible_locations = deps.access.visibility(principal_of(request), "catalog_location_view")
        return json_response(await ingestion.get_location(pool, request.match_info["id"], visible_locations))

    @api.delete(
        "/api/catalog/locations/{id}",
        summary="Unregister a location and delete its entities",
        permission="catalog_location_delete",
        status=204,
    )
    async def delete_location(request: web.Request) -> web.Response:
        await ingestion.remove_location(
            pool,
            principal_of(request).actor(),
            request.match_info["id"],
            lambda scope: require(request, "catalog_location_delete", scope),
        )
        return web.Response(status=204)

    @api.get(
        "/api/catalog/locations/by-entity/{kind}/{namespace}/{name}",
        summary="The location of an entity",
        permission="catalog_location_view",
        query=ByNameQuery,
        response=LocationView,
    )
    async def get_location_by_entity(request: web.Request) -> web.Response:
        query = parse_query(request, ByNameQuery)
        require(request, "catalog_location_view", query.scope)
        await service.get_by_name(pool, query, *_path_ref(request), visible(request))
        return json_response(await ingestion.location_of_entity(pool, query, *_path_ref(request)))

    @api.post(
        "/api/catalog/analyze-location",
        summary="What registering a location would bring in: existing entity files, or a proposed entity (Backstage)",
        permission="catalog_location_create",
        query=ScopeQuery,
        body=analyze.AnalyzeLocationRequest,
        response=analyze.AnalyzeLocationResponse,
    )
    async def analyze_location(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeQuery).scope
        body = await read_json(request, analyze.AnalyzeLocationRequest)
        require(request, "catalog_location_create", scope)
        return json_response(await analyze.analyze_location(pool, policy, scope, body))

    @api.post(
        "/api/catalog/refresh",
        summary="Re-read the location of an entity now",
        permission="catalog_entity_refresh",
        query=ScopeQuery,
        body=RefreshRequest,
    )
    async def refresh_entity(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeQuery).scope
        body = await read_json(request, RefreshRequest)
        require(request, "catalog_entity_refresh", scope)
        await ingestion.refresh_entity(pool, policy, principal_of(request).actor(), scope, body.entityRef)
        return web.Response(status=200)

    @api.get(
        "/api/catalog/graph",
        summary="Dependency graph from a root entity: nodes and edges",
        permission="catalog_entity_view",
        query=GraphQuery,
        response=Graph,
    )
    async def get_graph(request: web.Request) -> web.Response:
        return json_response(await service.entity_graph(pool, parse_query(request, GraphQuery), visible(request)))

    @api.post(
        "/api/catalog/validate-entity",
        summary="Validate an entity as ingestion would (Backstage)",
        permission="catalog_entity_view",
        body=ValidateEntityRequest,
    )
    async def validate_entity(request: web.Request) -> web.Response:
        body = await read_json(request, ValidateEntityRequest)
        errors = await service.validate_entity_document(pool, body.entity)
        return json_response({"errors": errors}, status=400) if errors else web.Response(status=200)

    @api.post(
        "/api/catalog/ingest",
        summary="Set extra properties on entities without touching their source",
        permission="catalog_entity_edit",
        query=ScopeQuery,
        body=IngestRequest,
        response=IngestResult,
    )
    async def ingest_properties(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeQuery).scope
        body = await read_json(request, IngestRequest)
        result, outcomes = await service.ingest_properties(
            pool, principal_of(request).actor(), scope, body, writer(request, "catalog_entity_edit")
        )
        for entity, outcome in outcomes:
            await recorded(request, "catalog_entity_edit", entity.scope, entity.served_document, outcome)
        response = json_response(result)
        for name, value in dict.fromkeys(header for _, outcome in outcomes for header in warning_headers(outcome)):
            response.headers.add(name, value)
        return response

    @api.post(
        "/api/catalog/convert",
        summary="Convert Backstage entity YAML to the scoped native form, or back",
        permission="catalog_entity_view",
        query=ScopeQuery,
        body=convert.ConvertRequest,
        response=convert.ConvertResult,
    )
    async def convert_entities(request: web.Request) -> web.Response:
        scope = parse_query(request, ScopeQuery).scope
        body = await read_json(request, convert.ConvertRequest)
        require(request, "catalog_entity_view", scope)
        return json_response(await convert.convert(pool, scope, body))

    @api.post(
        "/api/catalog/kinds",
        summary="Register a custom kind: a JSON Schema for a kind and apiVersion",
        permission="catalog_kind_create",
        body=kinds.KindRegistration,
        response=kinds.KindView,
        status=201,
    )
    async def register_kind(request: web.Request) -> web.Response:
        body = await read_json(request, kinds.KindRegistration)
        require(request, "catalog_kind_create", DEFAULT_SCOPE)  # kinds hold at every scope
        view = await kinds.register(pool, principal_of(request).actor(), body)
        return json_response(view, status=201, headers={"ETag": quoted(view.etag)})

    @api.get(
        "/api/catalog/kinds", summary="Registered custom kinds", permission="catalog_kind_view", response=kinds.KindList
    )
    async def list_kinds(request: web.Request) -> web.Response:
        return json_response(await kinds.list_kinds(pool))

    @api.get(KIND, summary="A registered custom kind", permission="catalog_kind_view", response=kinds.KindView)
    async def get_kind(request: web.Request) -> web.Response:
        view = await kinds.get_kind(pool, request.match_info["kind"], request.match_info["apiVersion"])
        return json_response(view, headers={"ETag": quoted(view.etag)})

    @api.put(
        KIND,
        summary="Replace a custom kind's schema (honours If-Match; refused if existing entities would break)",
        permission="catalog_kind_edit",
        body=kinds.KindSchema,
        response=kinds.KindView,
    )
    async def replace_kind(request: web.Request) -> web.Response:
        body = await read_json(request, kinds.KindSchema)
        require(request, "catalog_kind_edit", DEFAULT_SCOPE)
        view = await kinds.replace(
            pool,
            principal_of(request).actor(),
            request.match_info["kind"],
            request.match_info["apiVersion"],
            body,
            request.headers.get("If-Match"),
        )
        return json_response(view, headers={"ETag": quoted(view.etag)})

    @api.delete(
        KIND,
        summary="Unregister a custom kind (refused while entities of it exist)",
        permission="catalog_kind_delete",
        status=204,
    )
    async def delete_kind(request: web.Request) -> web.Response:
        info = request.match_info
        require(request, "catalog_kind_delete", DEFAULT_SCOPE)
        await kinds.delete(
            pool, principal_of(request).actor(), info["kind"], info["apiVersion"], request.headers.get("If-Match")
        )
        return web.Response(status=204)

    @api.get("/api/catalog/favorites", summary="The caller's starred entities", permission="catalog_entity_view")
    async def list_favorites(request: web.Request) -> web.Response:
        return json_response(await service.favorites(pool, principal_of(request).actor(), visible(request)))

    @api.put("/api/catalog/favorites/{uid}", summary="Star an entity", permission="catalog_entity_view", status=204)
    async def star_entity(request: web.Request) -> web.Response:
        await service.set_favorite(
            pool, principal_of(request).actor(), request.match_info["uid"], True, visible(request)
        )
        return web.Response(status=204)

    @api.delete(
        "/api/catalog/favorites/{uid}", summary="Unstar an entity", permission="catalog_entity_view", status=204
    )
    async def unstar_entity(request: web.Request) -> web.Response:
        await service.set_favorite(
            pool, principal_of(request).actor(), request.match_info["uid"], False, visible(request)
        )
        return web.Response(status=204)

    # What a write route committed is read fresh by its caller's next request (read_cache.py). Routes that need
    # only a view permission (reads sent as POST, favorites) write no entity.
    api.operations = [
        dataclasses.replace(op, handler=drop_after(caches, op.handler)) if _writes_entities(op) else op
        for op in api.operations
    ]
    return api
