"""SCIM 2.0 (RFC 7643/7644) at `/scim/v2/`: the protocol comes from `scim2-server` on `scim2-models`
(filters, sorting, PATCH paths including `members[value eq "…"]`, ETags, discovery); this module is the
storage under it, mapping SCIM Users and Groups onto identity-sync's own use cases so every change goes
through the same rules and emits the same `identity.*` events as the REST API.
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec
from aiohttp import web
from scim2_models import (
    AuthenticationScheme,
    ChangePassword,
    External,
    Filter,
    InvalidValueException,
    NotFoundException,
    NotImplementedException,
    Patch,
    PreconditionFailedException,
    Reference,
    Resource,
    ResourceType,
    Schema,
    SCIMException,
    ScimProvider,
    SearchRequest,
    ServiceProviderConfig,
    Sort,
    UniquenessException,
)
from scim2_models import Bulk as BulkConfig
from scim2_models import ETag as ETagConfig
from scim2_models.path import AttrPath, CompareOperator, Comparison
from scim2_server.handler import AsyncScimHandler
from scim2_server.requests import ScimRequest
from scim2_server.service import ScimService
from scim2_server.storage import AsyncScimStorage, SearchPage
from scim2_server.utils import load_default_resource_types, load_json_resource

from services.identity_sync import service, store
from services.identity_sync.model import (
    CycleError,
    Group,
    GroupCreate,
    GroupPatch,
    User,
    UserCreate,
    UserPatch,
    name_for,
)
from shared.db import transaction
from shared.errors import ConflictError, InputError, NotFoundError, PreconditionFailedError
from shared.events import Actor

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
MAX_RESULTS = 1000
_TABLES = {"User": "users", "Group": "groups"}
# Attributes identity-sync keeps in its own columns, or computes; the rest of a user is `attributes`.
_MODELLED_USER_ATTRIBUTES = {"schemas", "id", "meta", "userName", "displayName", "active", "externalId", "groups"}
# Never stored, never returned (RFC 7643 §4.1.1: password is writeOnly, returned never).
_SECRET_USER_ATTRIBUTES = {"password"}
_ACTOR: contextvars.ContextVar[Actor] = contextvars.ContextVar("scim_actor")
"""Who the current SCIM request acts for; the storage interface has no place for it."""


def provider() -> ScimProvider:
    """The standard User (with the enterprise extension) and Group, and what this server supports."""
    config = ServiceProviderConfig(
        patch=Patch(supported=True),
        bulk=BulkConfig(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=True),
        etag=ETagConfig(supported=True),
        authentication_schemes=[
            AuthenticationScheme(
                type=AuthenticationScheme.Type.oauthbearertoken,
                name="bearer",
                description="A service-account API key, or an access token exchanged for one",
                spec_uri=Reference[External]("https://datatracker.ietf.org/doc/html/rfc6750"),
            )
        ],
    )
    return ScimProvider.from_discovery(_schemas(), load_default_resource_types().values(), config=config)


def _schemas() -> list[Schema]:
    """RFC 7643's schemas, except that a group member's `display` is read-only: members are kept by id."""
    schemas = load_json_resource("default-schemas.json")
    for schema in schemas:
        if schema["id"] == GROUP_SCHEMA:
            members = next(a for a in schema["attributes"] if a["name"] == "members")
            next(a for a in members["subAttributes"] if a["name"] == "display")["mutability"] = "readOnly"
    return [Schema.model_validate(schema) for schema in schemas]


def _version(version: int) -> str:
    return f'W/"{version}"'


def _check_version(expected: str | None, current: int) -> None:
    if expected is not None and expected != _version(current):
        raise PreconditionFailedException(detail="the resource changed since it was read")


def _id_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


class PostgresScimStorage(AsyncScimStorage):
    """SCIM Users and Groups over identity-sync's tables, one transaction per storage call."""

    def __init__(self, pool: asyncpg.Pool, scim: ScimService, group_scope: str) -> None:
        self.pool = pool
        self.group_scope = group_scope
        self.models = {rt.name: scim.get_model(rt) for rt in scim.provider.resource_types}

    # --- reading ---

    async def get(self, resource_type: ResourceType, resource_id: str, *, response_parameters: Any = None) -> Resource:
        async with self.pool.acquire() as conn:
            return await self._get(conn, resource_type.name, resource_id)

    async def _get(self, conn: asyncpg.Connection, kind: str, resource_id: str) -> Resource:
        id_ = _id_or_none(resource_id)
        found = await self._load(conn, kind, [id_]) if id_ else []
        if not found:
            raise NotFoundException(detail=f"no {kind.lower()} {resource_id}")
        return found[0]

    async def _load(self, conn: asyncpg.Connection, kind: str, ids: list[str]) -> list[Resource]:
        """The resources among `ids`, in that order, with a fixed number of queries however many."""
        if kind == "User":
            users = await store.get_users(conn, ids)
            names = await store.group_names(conn, {g for u in users for g in u.groups})
            return [self._user(u, names) for u in users]
        groups = await store.get_groups(conn, ids)
        members = await store.member_ids(conn, [g.id for g in groups])
        children = await store.child_ids(conn, [g.id for g in groups])
        return [self._group(g, sorted(members[g.id]), children.get(g.id, [])) for g in groups]

    def _user(self, user: User, group_names: dict[str, str]) -> Resource:
        doc = dict(user.attributes)
        # A client may leave `active` unassigned; it then reads back unassigned while the user is active.
        if not (doc.pop("active", True) is None and user.active):
            doc["active"] = user.active
        doc["emails"] = _reconciled_emails(doc.get("emails"), user.emails)
        doc.update(
            id=user.id,
            userName=user.username,
            groups=[
                {"value": gid, "display": group_names.get(gid), "type": "direct", "$ref": f"Groups/{gid}"}
                for gid in user.groups
            ],
            meta=_meta("User", user.created_at, user.updated_at, user.version),
        )
        if user.display_name:
            doc["displayName"] = user.display_name
        if user.external_id is not None:
            doc["externalId"] = user.external_id
        doc["schemas"] = [USER_SCHEMA, *(k for k in doc if k.startswith("urn:"))]
        return self.models["User"].model_validate({k: v for k, v in doc.items() if v not in (None, [])})

    def _group(self, group: Group, members: list[str], children: list[str]) -> Resource:
        doc: dict[str, Any] = {
            "schemas": [GROUP_SCHEMA],
            "id": group.id,
            "displayName": group.display_name or group.name,
            "meta": _meta("Group", group.created_at, group.updated_at, group.version),
            # No `display`: clients compare members with what they sent, which names ids only.
            "members": [{"value": uid, "type": "User", "$ref": f"Users/{uid}"} for uid in members]
            + [{"value": cid, "type": "Group", "$ref": f"Groups/{cid}"} for cid in children],
        }
        if group.external_id is not None:
            doc["externalId"] = group.external_id
        return self.models["Group"].model_validate({k: v for k, v in doc.items() if v != []})

    async def search(
        self, resource_types: list[ResourceType], search_request: SearchRequest, *, position: Any = None
    ) -> SearchPage:
        if len(resource_types) != 1:
            raise NotImplementedException(detail="search /Users or /Groups, not the server root")
        kind = resource_types[0].name
        scim_filter = search_request.filter
        start = search_request.start_index_0 or 0
        async with self.pool.acquire() as conn:
            if scim_filter is None and not search_request.sort_by:  # a plain listing pages in SQL
                ids, total = await store.page_ids(conn, _TABLES[kind], start, search_request.count)
                return SearchPage(total=total, resources=await self._load(conn, kind, ids))
            found = await self._candidates(conn, kind, scim_filter.ast if scim_filter is not None else None)
        if scim_filter is not None:
            found = [r for r in found if scim_filter.match(r)]
        found = search_request.sort(found) if search_request.sort_by else found
        stop = None if search_request.count is None else start + search_request.count
        return SearchPage(total=len(found), resources=found[start:stop])

    async def _candidates(self, conn: asyncpg.Connection, kind: str, node: Any) -> list[Resource]:
        """Resources that may match: narrowed in SQL for an `eq` on an indexed attribute (what provisioning
        clients send before each create), otherwise every resource of the kind, filtered by the caller."""
        ids: list[str] | None = None
        if isinstance(node, Comparison) and node.op == CompareOperator.eq and isinstance(node.value, str):
            ids = await _ids_where(conn, kind, node.attr_path, node.value)
        if ids is None:
            ids, _ = await store.page_ids(conn, _TABLES[kind], 0, None)
        return await self._load(conn, kind, ids)

    # --- writing ---

    async def create(self, resource_type: ResourceType, resource: Resource) -> Resource:
        doc = resource.model_dump()
        async with _domain_errors(), transaction(self.pool) as conn, service.batched_events(conn):
            if resource_type.name == "User":
                body, attributes = _user_body(doc)
                created = await service.insert_user(conn, _actor(), body, source="scim", attributes=attributes)
                return self._user(created, {})  # a new user is in no group yet
            group = await service.insert_group(conn, _actor(), await self._group_body(conn, doc), source="scim")
            await self._set_members(conn, group, doc.get("members") or [])
            return await self._get(conn, "Group", group.id)

    async def update(
        self, resource_type: ResourceType, resource: Resource, *, expected_version: str | None = None
    ) -> Resource:
        doc = resource.model_dump()
        async with _domain_errors(), transaction(self.pool) as conn, service.batched_events(conn):
            if resource_type.name == "User":
                user = await store.get_user(conn, resource.id, lock=True) if _id_or_none(resource.id or "") else None
                if user is None:
                    raise NotFoundException(detail=f"no user {resource.id}")
                _check_version(expected_version, user.version)
                body, attributes = _user_body(doc)
                patch = UserPatch(
                    username=body.username,
                    display_name=body.display_name,
                    emails=body.emails,
                    active=body.active,
                    external_id=body.external_id,
                )
                await service.apply_user_patch(conn, _actor(), user, patch, attributes=attributes)
                return await self._get(conn, "User", user.id)
            group = await store.get_group(conn, resource.id, lock=True) if _id_or_none(resource.id or "") else None
            if group is None:
                raise NotFoundException(detail=f"no group {resource.id}")
            _check_version(expected_version, group.version)
            body = _group_patch(doc)
            group = await service.apply_group_patch(conn, _actor(), group, body)
            await self._set_members(conn, group, doc.get("members") or [])
            return await self._get(conn, "Group", group.id)

    async def delete(
        self, resource_type: ResourceType, resource_id: str, *, expected_version: str | None = None
    ) -> None:
        id_ = _id_or_none(resource_id)
        async with _domain_errors(), transaction(self.pool) as conn, service.batched_events(conn):
            if resource_type.name == "User":
                user = await store.get_user(conn, id_, lock=True) if id_ else None
                if user is None:
                    raise NotFoundException(detail=f"no user {resource_id}")
                _check_version(expected_version, user.version)
                await service.remove_user(conn, _actor(), user)
                return
            group = await store.get_group(conn, id_, lock=True) if id_ else None
            if group is None:
                raise NotFoundException(detail=f"no group {resource_id}")
            _check_version(expected_version, group.version)
            await service.remove_group(conn, _actor(), group)

    async def _group_body(self, conn: asyncpg.Connection, doc: dict[str, Any]) -> GroupCreate:
        display_name = doc.get("displayName") or ""
        name = name_for(display_name)
        if await store.group_id_by_name(conn, self.group_scope, name) is not None:
            name = f"{name[:54]}-{uuid.uuid4().hex[:8]}"  # displayName is not unique in SCIM; names are here
        return _validated(
            {
                "name": name,
                "display_name": display_name,
                "scope": self.group_scope,
                "external_id": doc.get("externalId"),
            },
            GroupCreate,
        )

    async def _set_members(self, conn: asyncpg.Connection, group: Group, members: list[dict[str, Any]]) -> None:
        """Make the group's direct members exactly `members`: users by membership, groups by nesting."""
        wanted_users, wanted_groups = set(), set()
        for member in members:
            member_id = _id_or_none(str(member.get("value", "")))
            if member_id is None:
                raise InvalidValueException(detail=f"member {member.get('value')!r} is not a user or group id")
            (wanted_groups if member.get("type") == "Group" else wanted_users).add(member_id)
        current_users = (await store.member_ids(conn, [group.id]))[group.id]
        changed = sorted(wanted_users ^ current_users)
        users = {u.id: u for u in await store.get_users(conn, changed)}
        missing = [user_id for user_id in changed if user_id in wanted_users and user_id not in users]
        if missing:
            raise InvalidValueException(detail=f"no user {missing[0]}")
        changes = [(group, users[i], i in wanted_users) for i in changed if i in users]
        await service.change_memberships(conn, _actor(), changes)
        current_groups = set((await store.child_ids(conn, [group.id])).get(group.id, []))
        for child_id in sorted(wanted_groups ^ current_groups):
            child = await store.get_group(conn, child_id, lock=True)
            if child is None:
                raise InvalidValueException(detail=f"no group {child_id}")
            parent = group.id if child_id in wanted_groups else None
            await service.apply_group_patch(conn, _actor(), child, GroupPatch(parent=parent))


def _meta(kind: str, created: Any, modified: Any, version: int) -> dict[str, Any]:
    return {"resourceType": kind, "created": created, "lastModified": modified, "version": _version(version)}


async def _ids_where(conn: asyncpg.Connection, kind: str, path: AttrPath, value: str) -> list[str] | None:
    attribute = (path.attr + ("." + path.sub_attr if path.sub_attr else "")).lower()
    if path.uri not in (None, USER_SCHEMA if kind == "User" else GROUP_SCHEMA):
        return None
    if kind == "User":
        column = {
            "username": "lower(username) = lower($1)",
            "externalid": "external_id = $1",
            "id": "id::text = $1",
            "emails.value": "EXISTS (SELECT FROM unnest(emails) e WHERE lower(e) = lower($1))",
            "emails": "EXISTS (SELECT FROM unnest(emails) e WHERE lower(e) = lower($1))",
        }.get(attribute)
        table = "users"
    else:
        column = {"externalid": "external_id = $1", "id": "id::text = $1"}.get(attribute)
        table = "groups"
    if column is None:
        return None
    return [r["id"] for r in await conn.fetch(f"SELECT id::text AS id FROM {table} WHERE {column}", value)]


def _reconciled_emails(scim_emails: Any, emails: list[str]) -> list[dict[str, Any]]:
    """The provisioned email objects (type, primary …) for the addresses the user has now."""
    by_value = {e.get("value"): e for e in scim_emails or [] if isinstance(e, dict)}
    return [by_value.get(address, {"value": address}) for address in emails]


def _user_body(doc: dict[str, Any]) -> tuple[UserCreate, dict[str, Any]]:
    emails = [e["value"] for e in doc.get("emails") or [] if e.get("value")]
    body = _validated(
        {
            "username": doc.get("userName"),
            "display_name": doc.get("displayName") or "",
            "emails": emails,
            "active": doc.get("active", True) is not False,
            "external_id": doc.get("externalId"),
        },
        UserCreate,
    )
    attributes = {
        k: v for k, v in doc.items() if k not in _MODELLED_USER_ATTRIBUTES and k not in _SECRET_USER_ATTRIBUTES
    }
    if doc.get("active") is None:
        attributes["active"] = None
    return body, attributes


def _group_patch(doc: dict[str, Any]) -> GroupPatch:
    return _validated({"display_name": doc.get("displayName") or "", "external_id": doc.get("externalId")}, GroupPatch)


def _validated(raw: dict[str, Any], type_: type) -> Any:
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:
        raise InvalidValueException(detail=str(exc)) from None


def _actor() -> Actor:
    return _ACTOR.get()


@asynccontextmanager
async def _domain_errors() -> AsyncIterator[None]:
    """Identity-sync's errors in SCIM's vocabulary (RFC 7644 §3.12)."""
    try:
        yield
    except CycleError as exc:
        raise InvalidValueException(detail=exc.detail) from None
    except ConflictError as exc:
        raise UniquenessException(detail=exc.detail) from None
    except InputError as exc:
        raise InvalidValueException(detail=exc.detail) from None
    except NotFoundError as exc:
        raise NotFoundException(detail=exc.detail) from None
    except PreconditionFailedError as exc:
        raise PreconditionFailedException(detail=exc.detail) from None


class ScimEndpoint:
    """The aiohttp side: a SCIM request in, the handler's response out, acting as the authenticated caller."""

    def __init__(self, pool: asyncpg.Pool, group_scope: str) -> None:
        self.scim = ScimService(provider())
        self.handler = AsyncScimHandler(self.scim, PostgresScimStorage(pool, self.scim, group_scope))

    async def serve(self, request: web.Request, actor: Actor | None) -> web.Response:
        base_url = f"{request.scheme}://{request.host}/scim/v2"
        scim_request = ScimRequest(
            method=request.method,
            base_url=base_url,
            path="/" + request.match_info.get("path", "ServiceProviderConfig").removesuffix(".scim"),
            query=dict(request.query),
            headers=list(request.headers.items()),
            body=await request.read(),
            subject=actor,
        )
        token = _ACTOR.set(actor) if actor is not None else None
        try:
            response = await self.handler.handle(scim_request)
        except SCIMException as exc:
            response = self.scim.error_response(exc)
        finally:
            if token is not None:
                _ACTOR.reset(token)
        headers = {**response.headers, "Cache-Control": "no-cache"}
        headers.setdefault("Location", scim_request.url)
        body = msgspec.json.encode(response.body) if response.body is not None else None
        status = int(response.status)
        return web.Response(status=status, body=body if status != HTTPStatus.NO_CONTENT else None, headers=headers)
