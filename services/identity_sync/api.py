"""Identity HTTP routes under `/api/identity`: decode, call service.py, encode."""

from __future__ import annotations

import asyncio
from typing import TypeVar

from aiohttp import web

from services.identity_sync import ldap, ownership, service, sources, sso, sync, tokens
from services.identity_sync.model import (
    AccessToken,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    DirectoryLookup,
    DirectoryUserList,
    Group,
    GroupCreate,
    GroupPage,
    GroupPatch,
    GroupQuery,
    ImportQuery,
    MemberQuery,
    OrphanList,
    OrphanQuery,
    ReassignRequest,
    ReassignResult,
    ServiceAccount,
    ServiceAccountCreate,
    ServiceAccountPage,
    ServiceAccountPatch,
    ServiceAccountQuery,
    SigningKeyList,
    SigningKeyView,
    SsoCallback,
    SyncRun,
    SyncRunList,
    SyncRunQuery,
    TokenRequest,
    User,
    UserCreate,
    UserPage,
    UserPatch,
    UserQuery,
)
from services.identity_sync.scim import ScimEndpoint
from shared.authz import Visibility
from shared.errors import AuthenticationError, InputError, NotFoundError
from shared.etag import quoted
from shared.http import PUBLIC, Routes, json_response, parse_query, principal_of, read_json
from shared.scopes import check_scope
from shared.service import Deps
from shared.tokens import Jwks

USERS = "/api/identity/users"
GROUPS = "/api/identity/groups"
ACCOUNTS = "/api/identity/service-accounts"
NO_STORE = {"Cache-Control": "no-store"}
T = TypeVar("T", Group, ServiceAccount)
ACCOUNT = "account"
"""Users, signing keys, imports and directory syncs are account-wide: changing them takes the permission there."""
SCIM_PERMISSIONS = {
    "GET": "identity_scim_view",
    "POST": "identity_scim_edit",
    "PUT": "identity_scim_edit",
    "PATCH": "identity_scim_edit",
    "DELETE": "identity_scim_edit",
}


def _versioned(resource: User | Group | ServiceAccount, status: int = 200) -> web.Response:
    return json_response(resource, status=status, headers={"ETag": quoted(str(resource.version))})


def _if_match(request: web.Request) -> str | None:
    return request.headers.get("If-Match")


async def _text(request: web.Request) -> str:
    try:
        return (await request.read()).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError.for_field("$", "the body is not UTF-8 text") from None


def routes(deps: Deps) -> Routes:
    pool = deps.pool
    api = Routes(tag="identity")

    # The route checked that the caller holds the permission somewhere; these check it where the resource is.
    def require(request: web.Request, permission: str, scope: str = ACCOUNT, resource_id: str | None = None) -> None:
        deps.access.require_at(principal_of(request), permission, scope, resource_id)

    def visible(request: web.Request, permission: str) -> Visibility:
        return deps.access.visibility(principal_of(request), permission)

    def reachable(request: web.Request, resource: T, view_permission: str, permission: str, what: str) -> T:
        """`resource` (a group or service account) if the caller holds `permission` on it; one it may not even
        see reads as missing."""
        if not visible(request, view_permission).covers(resource.scope, resource.id):
            raise NotFoundError(f"no {what} {resource.id}")
        require(request, permission, resource.scope, resource.id)
        return resource

    async def group_for(request: web.Request, permission: str) -> Group:
        group = await service.get_group(pool, request.match_info["id"])
        return reachable(request, group, "identity_group_view", permission, "group")

    async def account_for(request: web.Request, permission: str) -> ServiceAccount:
        account = await service.get_service_account(pool, request.match_info["id"])
        return reachable(request, account, "identity_service_account_view", permission, "service account")

    # --- users ---

    @api.get(USERS, summary="List users", permission="identity_user_view", query=UserQuery, response=UserPage)
    async def list_users(request: web.Request) -> web.Response:
        return json_response(await service.list_users(pool, parse_query(request, UserQuery)))

    @api.post(
        USERS, summary="Create a user", permission="identity_user_create", body=UserCreate, response=User, status=201
    )
    async def create_user(request: web.Request) -> web.Response:
        body = await read_json(request, UserCreate)
        require(request, "identity_user_create")
        return _versioned(await service.create_user(pool, principal_of(request).actor(), body), 201)

    @api.get(USERS + "/{id}", summary="A user", permission="identity_user_view", response=User)
    async def get_user(request: web.Request) -> web.Response:
        return _versioned(await service.get_user(pool, request.match_info["id"]))

    @api.patch(
        USERS + "/{id}",
        summary="Change a user (merge patch, If-Match)",
        permission="identity_user_edit",
        body=UserPatch,
        response=User,
    )
    async def patch_user(request: web.Request) -> web.Response:
        body = await read_json(request, UserPatch)
        require(request, "identity_user_edit", resource_id=request.match_info["id"])
        user = await service.update_user(
            pool, principal_of(request).actor(), request.match_info["id"], body, _if_match(request)
        )
        return _versioned(user)

    @api.post(
        USERS + "/{id}/deactivate",
        summary="Deactivate a user: it keeps its history and ownership but its tokens stop working",
        permission="identity_user_edit",
        response=User,
    )
    async def deactivate_user(request: web.Request) -> web.Response:
        return await _set_user_active(request, False)

    @api.post(USERS + "/{id}/reactivate", summary="Reactivate a user", permission="identity_user_edit", response=User)
    async def reactivate_user(request: web.Request) -> web.Response:
        return await _set_user_active(request, True)

    async def _set_user_active(request: web.Request, active: bool) -> web.Response:
        require(request, "identity_user_edit", resource_id=request.match_info["id"])
        user = await service.update_user(
            pool, principal_of(request).actor(), request.match_info["id"], UserPatch(active=active), _if_match(request)
        )
        return _versioned(user)

    @api.delete(USERS + "/{id}", summary="Delete a user", permission="identity_user_delete", status=204)
    async def delete_user(request: web.Request) -> web.Response:
        require(request, "identity_user_delete", resource_id=request.match_info["id"])
        await service.delete_user(pool, principal_of(request).actor(), request.match_info["id"], _if_match(request))
        return web.Response(status=204)

    # --- groups ---

    @api.get(GROUPS, summary="List groups", permission="identity_group_view", query=GroupQuery, response=GroupPage)
    async def list_groups(request: web.Request) -> web.Response:
        query = parse_query(request, GroupQuery)
        return json_response(await service.list_groups(pool, query, visible(request, "identity_group_view")))

    @api.post(
        GROUPS,
        summary="Create a group at a scope",
        permission="identity_group_create",
        body=GroupCreate,
        response=Group,
        status=201,
    )
    async def create_group(request: web.Request) -> web.Response:
        body = await read_json(request, GroupCreate)
        require(request, "identity_group_create", check_scope(body.scope, "$.scope"))
        return _versioned(await service.create_group(pool, principal_of(request).actor(), body), 201)

    @api.get(GROUPS + "/{id}", summary="A group", permission="identity_group_view", response=Group)
    async def get_group(request: web.Request) -> web.Response:
        return _versioned(await group_for(request, "identity_group_view"))

    @api.patch(
        GROUPS + "/{id}",
        summary="Change a group: rename, re-parent (cycles refused) (merge patch, If-Match)",
        permission="identity_group_edit",
        body=GroupPatch,
        response=Group,
    )
    async def patch_group(request: web.Request) -> web.Response:
        body = await read_json(request, GroupPatch)
        await group_for(request, "identity_group_edit")
        group = await service.update_group(
            pool, principal_of(request).actor(), request.match_info["id"], body, _if_match(request)
        )
        return _versioned(group)

    @api.delete(
        GROUPS + "/{id}",
        summary="Delete a group; its child groups move to its parent",
        permission="identity_group_delete",
        status=204,
    )
    async def delete_group(request: web.Request) -> web.Response:
        await group_for(request, "identity_group_delete")
        await service.delete_group(pool, principal_of(request).actor(), request.match_info["id"], _if_match(request))
        return web.Response(status=204)

    @api.get(
        GROUPS + "/{id}/members",
        summary="Direct members of a group",
        permission="identity_group_view",
        query=MemberQuery,
        response=UserPage,
    )
    async def list_members(request: web.Request) -> web.Response:
        group = await group_for(request, "identity_group_view")
        paging = parse_query(request, MemberQuery)
        return json_response(
            await service.list_users(pool, UserQuery(group=group.id, limit=paging.limit, cursor=paging.cursor))
        )

    @api.put(
        GROUPS + "/{id}/members/{user_id}",
        summary="Add a user to a group (idempotent)",
        permission="identity_group_edit",
        status=204,
    )
    async def add_member(request: web.Request) -> web.Response:
        return await _set_member(request, True)

    @api.delete(
        GROUPS + "/{id}/members/{user_id}",
        summary="Remove a user from a group (idempotent)",
        permission="identity_group_edit",
        status=204,
    )
    async def remove_member(request: web.Request) -> web.Response:
        return await _set_member(request, False)

    async def _set_member(request: web.Request, member: bool) -> web.Response:
        info = request.match_info
        await group_for(request, "identity_group_edit")
        await service.set_membership(pool, principal_of(request).actor(), info["id"], info["user_id"], member)
        return web.Response(status=204)

    # --- service accounts ---

    @api.get(
        ACCOUNTS,
        summary="List service accounts",
        permission="identity_service_account_view",
        query=ServiceAccountQuery,
        response=ServiceAccountPage,
    )
    async def list_service_accounts(request: web.Request) -> web.Response:
        query = parse_query(request, ServiceAccountQuery)
        reach = visible(request, "identity_service_account_view")
        return json_response(await service.list_service_accounts(pool, query, reach))

    @api.post(
        ACCOUNTS,
        summary="Create a service account at a scope",
        permission="identity_service_account_create",
        body=ServiceAccountCreate,
        response=ServiceAccount,
        status=201,
    )
    async def create_service_account(request: web.Request) -> web.Response:
        body = await read_json(request, ServiceAccountCreate)
        require(request, "identity_service_account_create", check_scope(body.scope, "$.scope"))
        return _versioned(await service.create_service_account(pool, principal_of(request).actor(), body), 201)

    @api.get(
        ACCOUNTS + "/{id}",
        summary="A service account",
        permission="identity_service_account_view",
        response=ServiceAccount,
    )
    async def get_service_account(request: web.Request) -> web.Response:
        return _versioned(await account_for(request, "identity_service_account_view"))

    @api.patch(
        ACCOUNTS + "/{id}",
        summary="Change a service account (merge patch, If-Match); `active: false` revokes its tokens",
        permission="identity_service_account_edit",
        body=ServiceAccountPatch,
        response=ServiceAccount,
    )
    async def patch_service_account(request: web.Request) -> web.Response:
        body = await read_json(request, ServiceAccountPatch)
        await account_for(request, "identity_service_account_edit")
        account = await service.update_service_account(
            pool, principal_of(request).actor(), request.match_info["id"], body, _if_match(request)
        )
        return _versioned(account)

    @api.delete(
        ACCOUNTS + "/{id}",
        summary="Delete a service account and its keys",
        permission="identity_service_account_delete",
        status=204,
    )
    async def delete_service_account(request: web.Request) -> web.Response:
        await account_for(request, "identity_service_account_delete")
        await service.delete_service_account(
            pool, principal_of(request).actor(), request.match_info["id"], _if_match(request)
        )
        return web.Response(status=204)

    # --- credentials ---

    ttl = deps.settings.access_token_ttl_seconds

    @api.post(
        ACCOUNTS + "/{id}/keys",
        summary="Create an API key; the key is in this response only",
        permission="identity_api_key_create",
        body=ApiKeyCreate,
        response=ApiKeyCreated,
        status=201,
    )
    async def create_api_key(request: web.Request) -> web.Response:
        body = await read_json(request, ApiKeyCreate)
        await account_for(request, "identity_api_key_create")
        key = await tokens.create_api_key(pool, principal_of(request).actor(), request.match_info["id"], body)
        return json_response(key, status=201, headers=NO_STORE)

    @api.get(
        ACCOUNTS + "/{id}/keys",
        summary="A service account's API keys (never their secrets)",
        permission="identity_api_key_view",
        response=ApiKeyList,
    )
    async def list_api_keys(request: web.Request) -> web.Response:
        await account_for(request, "identity_api_key_view")
        return json_response(await tokens.list_api_keys(pool, request.match_info["id"]))

    @api.delete(
        ACCOUNTS + "/{id}/keys/{key_id}",
        summary="Revoke an API key and the access tokens exchanged for it",
        permission="identity_api_key_delete",
        status=204,
    )
    async def revoke_api_key(request: web.Request) -> web.Response:
        info = request.match_info
        await account_for(request, "identity_api_key_delete")
        await tokens.revoke_api_key(pool, principal_of(request).actor(), info["id"], info["key_id"])
        return web.Response(status=204)

    # Public: the API key in the body is the credential (OAuth client credentials in spirit).
    @api.post(
        "/api/identity/token",
        summary="Exchange a service-account API key for a short-lived access token",
        permission=PUBLIC,
        body=TokenRequest,
        response=AccessToken,
    )
    async def exchange_api_key(request: web.Request) -> web.Response:
        body = await read_json(request, TokenRequest)
        return json_response(await tokens.exchange_api_key(pool, body.api_key, ttl), headers=NO_STORE)

    @api.post(
        USERS + "/{id}/tokens",
        summary="Issue an access token for a user (administrators; SSO issues them otherwise)",
        permission="identity_token_create",
        response=AccessToken,
    )
    async def issue_user_token(request: web.Request) -> web.Response:
        require(request, "identity_token_create", resource_id=request.match_info["id"])
        return json_response(await tokens.issue_user_token(pool, request.match_info["id"], ttl), headers=NO_STORE)

    @api.get(
        "/api/identity/.well-known/jwks.json",
        summary="Public keys that verify access tokens (JWKS)",
        permission=PUBLIC,
        response=Jwks,
    )
    async def jwks(request: web.Request) -> web.Response:
        return json_response(await tokens.jwks(pool, ttl))

    @api.get(
        "/api/identity/signing-keys",
        summary="Signing keys, newest first (no private material)",
        permission="identity_signing_key_view",
        response=SigningKeyList,
    )
    async def list_signing_keys(request: web.Request) -> web.Response:
        return json_response(await tokens.list_signing_keys(pool))

    @api.post(
        "/api/identity/signing-keys/rotate",
        summary="Sign with a new key; tokens signed by the old one stay valid until they expire",
        permission="identity_signing_key_rotate",
        response=SigningKeyView,
        status=201,
    )
    async def rotate_signing_key(request: web.Request) -> web.Response:
        require(request, "identity_signing_key_rotate")
        return json_response(await tokens.rotate_signing_key(pool, principal_of(request).actor()), status=201)

    # --- bulk imports ---

    @api.post(
        "/api/identity/imports/csv",
        summary="Import users (and the groups they list) from CSV; reports what changed and what was skipped",
        permission="identity_import_create",
        query=ImportQuery,
        response=SyncRun,
    )
    async def import_csv(request: web.Request) -> web.Response:
        query = parse_query(request, ImportQuery)
        snapshot = sources.parse_csv(await _text(request))
        return json_response(await _import(request, f"csv:{query.source}", snapshot, query))

    @api.post(
        "/api/identity/imports/backstage",
        summary="Import Backstage User and Group entities (YAML); reports what changed and what was skipped",
        permission="identity_import_create",
        query=ImportQuery,
        response=SyncRun,
    )
    async def import_backstage(request: web.Request) -> web.Response:
        query = parse_query(request, ImportQuery)
        snapshot = sources.parse_backstage(await request.read())
        return json_response(await _import(request, f"backstage:{query.source}", snapshot, query))

    async def _import(request: web.Request, source: str, snapshot: sources.Snapshot, query: ImportQuery) -> SyncRun:
        require(request, "identity_import_create")  # it writes users, which are account-wide
        return await sync.run_sync(pool, principal_of(request).actor(), source, snapshot, query.strategy, query.scope)

    @api.get(
        "/api/identity/sync-runs",
        summary="Recent sync runs, newest first",
        permission="identity_sync_run_view",
        query=SyncRunQuery,
        response=SyncRunList,
    )
    async def list_sync_runs(request: web.Request) -> web.Response:
        query = parse_query(request, SyncRunQuery)
        return json_response(await sync.list_sync_runs(pool, query.source, query.limit))

    @api.get(
        "/api/identity/sync-runs/{id}", summary="A sync run", permission="identity_sync_run_view", response=SyncRun
    )
    async def get_sync_run(request: web.Request) -> web.Response:
        return json_response(await sync.get_sync_run(pool, request.match_info["id"]))

    # --- single sign-on ---

    oidc = sso.OidcClient(deps.settings.oidc) if deps.settings.oidc is not None else None

    def oidc_client() -> sso.OidcClient:
        if oidc is None:
            raise NotFoundError("single sign-on is not configured")
        return oidc

    # Public: these two routes are how a person without a token gets one.
    @api.get(
        "/api/identity/sso/login",
        summary="Start an OpenID Connect login: redirects to the identity provider",
        permission=PUBLIC,
        status=302,
    )
    async def sso_login(request: web.Request) -> web.Response:
        raise web.HTTPFound(await sso.begin_login(pool, oidc_client()))

    @api.get(
        "/api/identity/sso/callback",
        summary="Finish an OpenID Connect login: provisions the user and returns an access token",
        permission=PUBLIC,
        query=SsoCallback,
        response=AccessToken,
    )
    async def sso_callback(request: web.Request) -> web.Response:
        query = parse_query(request, SsoCallback)
        if query.error:
            raise AuthenticationError(f"the identity provider refused the login: {query.error}")
        if not query.code:
            raise InputError.for_field("query.code", "required")
        token = await sso.complete_login(pool, oidc_client(), query.code, query.state, ttl)
        return json_response(token, headers=NO_STORE)

    # --- LDAP ---

    def ldap_source() -> ldap.LdapSettings:
        if deps.settings.ldap is None:
            raise NotFoundError("no LDAP source is configured")
        return deps.settings.ldap

    @api.post(
        "/api/identity/ldap/sync",
        summary="Sync the configured LDAP / Active Directory source now",
        permission="identity_ldap_sync",
        response=SyncRun,
    )
    async def sync_ldap(request: web.Request) -> web.Response:
        require(request, "identity_ldap_sync")
        return json_response(await sync.sync_ldap(pool, principal_of(request).actor(), ldap_source()))

    @api.get(
        "/api/identity/ldap/users",
        summary="Look a username up in the directory",
        permission="identity_ldap_view",
        query=DirectoryLookup,
        response=DirectoryUserList,
    )
    async def find_ldap_users(request: web.Request) -> web.Response:
        query = parse_query(request, DirectoryLookup)
        config = ldap_source()
        ldap.lookup_filter(config, query.username)  # refuses filter syntax before touching the directory
        found = await asyncio.to_thread(ldap.find_users, config, query.username)
        return json_response(DirectoryUserList(found))

    # --- ownership left behind ---

    def catalog(request: web.Request) -> ownership.CatalogClient:
        return ownership.CatalogClient(deps.settings.catalog_url, request.headers.get("Authorization"))

    @api.get(
        "/api/identity/orphans",
        summary="Catalog entities owned by deactivated or deleted users and groups",
        permission="identity_orphan_view",
        query=OrphanQuery,
        response=OrphanList,
    )
    async def list_orphans(request: web.Request) -> web.Response:
        return json_response(await ownership.orphans(catalog(request), parse_query(request, OrphanQuery).scope))

    @api.post(
        "/api/identity/reassign",
        summary="Move ownership of catalog entities to a group (through the catalog, as the caller)",
        permission="identity_orphan_reassign",
        body=ReassignRequest,
        response=ReassignResult,
    )
    async def reassign(request: web.Request) -> web.Response:
        body = await read_json(request, ReassignRequest)
        require(request, "identity_orphan_reassign")
        return json_response(await ownership.reassign(catalog(request), body))

    # --- SCIM 2.0 ---

    scim = ScimEndpoint(pool, deps.settings.scim_group_scope)

    # RFC 7643 §5: the service provider configuration is readable without authentication.
    @api.get("/scim/v2/ServiceProviderConfig", summary="SCIM service provider configuration", permission=PUBLIC)
    async def scim_service_provider_config(request: web.Request) -> web.Response:
        return await scim.serve(request, None)

    def scim_operation(method: str, permission: str):
        async def operation(request: web.Request) -> web.Response:
            require(request, permission)  # SCIM provisions the account's users and groups
            return await scim.serve(request, principal_of(request).actor())

        operation.__name__ = f"scim_{method.lower()}"
        return operation

    for method, permission in SCIM_PERMISSIONS.items():
        api.route(
            method,
            "/scim/v2/{path:.+}",
            summary=f"SCIM 2.0 Users, Groups and discovery ({method})",
            permission=permission,
        )(scim_operation(method, permission))

    return api
