"""HTTP routes of access control: permissions, roles, resource groups, role bindings, policies, policy sets,
explain and policy dry runs. Thin: decode, call access_service, encode."""

from __future__ import annotations

from aiohttp import web

from services.identity_sync import access_service as service
from services.identity_sync.access_model import (
    INPUT_TYPES,
    PERMISSION_RESOURCE,
    AccessObject,
    AccessPage,
    ExplainQuery,
    Kind,
    ListQuery,
    PermissionView,
    PolicyEvaluation,
    PolicyEvaluationResult,
    check_subject,
)
from shared.authz import Decision, Resource, all_permissions, check_scope, resource_type_of
from shared.errors import ServiceUnavailableError
from shared.etag import quoted
from shared.http import Routes, json_response, parse_query, principal_of, read_json
from shared.service import Deps

PATHS: dict[Kind, str] = {
    "role": "roles",
    "resource_group": "resource-groups",
    "role_binding": "role-bindings",
    "policy": "policies",
    "policy_set": "policy-sets",
}
READ_ONLY_AFTER_CREATE: set[Kind] = {"role_binding"}
"""A binding is replaced by deleting it and creating another: what it ties together is what it is."""


def add_access_routes(api: Routes, deps: Deps) -> None:
    pool, replica = deps.pool, deps.access

    def authorizer(request: web.Request) -> service.Authorize:
        principal = principal_of(request)
        return lambda permission, resource: replica.require(principal, permission, resource)

    def with_etag(obj: AccessObject, status: int = 200) -> web.Response:
        return json_response(obj, status=status, headers={"ETag": quoted(str(obj.version))})

    @api.get(
        "/api/identity/permissions",
        summary="Every permission of every service",
        permission="identity_role_view",
        response=list[PermissionView],
    )
    async def list_permissions(request: web.Request) -> web.Response:
        return json_response([PermissionView(p, resource_type_of(p), p.rpartition("_")[2]) for p in all_permissions()])

    @api.get(
        "/api/identity/access/explain",
        summary="Whether a principal holds a permission on a resource, and which binding decides it",
        permission="identity_binding_view",
        query=ExplainQuery,
        response=Decision,
    )
    async def explain(request: web.Request) -> web.Response:
        query = parse_query(request, ExplainQuery)
        subject = check_subject(query.principal, "query.principal")
        resource = Resource(resource_type_of(query.permission), check_scope(query.scope, "query.scope"), query.resource)
        if not await replica.caught_up(await service.state_version(pool)):
            raise ServiceUnavailableError("access control is still loading; try again")
        return json_response(replica.control.check(subject, query.permission, resource))

    @api.post(
        "/api/identity/policies/evaluate",
        summary="Dry run: evaluate a policy (source or stored id) against a sample input",
        permission="identity_policy_view",
        body=PolicyEvaluation,
        response=PolicyEvaluationResult,
    )
    async def evaluate_policy(request: web.Request) -> web.Response:
        return json_response(await service.evaluate_policy(pool, await read_json(request, PolicyEvaluation)))

    for kind, path in PATHS.items():
        _add_kind_routes(api, kind, f"/api/identity/{path}", pool, authorizer, with_etag)


def _add_kind_routes(api: Routes, kind: Kind, base: str, pool, authorizer, with_etag) -> None:
    body_type = INPUT_TYPES[kind]
    permission = PERMISSION_RESOURCE[kind]
    label = kind.replace("_", " ")

    @api.get(f"{base}", summary=f"List {label}s", permission=f"{permission}_view", query=ListQuery, response=AccessPage)
    async def list_objects(request: web.Request) -> web.Response:
        return json_response(await service.list_objects(pool, kind, parse_query(request, ListQuery)))

    @api.post(
        f"{base}",
        summary=f"Create a {label}",
        permission=f"{permission}_create",
        body=body_type,
        response=AccessObject,
        status=201,
    )
    async def create_object(request: web.Request) -> web.Response:
        body = await read_json(request, body_type)
        created = await service.create_object(pool, authorizer(request), principal_of(request).actor(), kind, body)
        return with_etag(created, status=201)

    @api.get(f"{base}/{{id}}", summary=f"One {label}", permission=f"{permission}_view", response=AccessObject)
    async def get_object(request: web.Request) -> web.Response:
        return with_etag(await service.get_object(pool, authorizer(request), kind, request.match_info["id"]))

    if kind not in READ_ONLY_AFTER_CREATE:

        @api.put(
            f"{base}/{{id}}",
            summary=f"Replace a {label} (honours If-Match)",
            permission=f"{permission}_edit",
            body=body_type,
            response=AccessObject,
        )
        async def replace_object(request: web.Request) -> web.Response:
            body = await read_json(request, body_type)
            updated = await service.replace_object(
                pool,
                authorizer(request),
                principal_of(request).actor(),
                kind,
                request.match_info["id"],
                body,
                request.headers.get("If-Match"),
            )
            return with_etag(updated)

    @api.delete(
        f"{base}/{{id}}", summary=f"Delete a {label} (honours If-Match)", permission=f"{permission}_delete", status=204
    )
    async def delete_object(request: web.Request) -> web.Response:
        await service.delete_object(
            pool,
            authorizer(request),
            principal_of(request).actor(),
            kind,
            request.match_info["id"],
            request.headers.get("If-Match"),
        )
        return web.Response(status=204)
