"""Access-control use cases: one transaction each = the object, its references checked, an outbox event.

Every write bumps the replicated state's version and carries it in its event, so the replicas in every
service (shared/access.py) apply changes in order and skip what their snapshot already holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import msgspec

from services.identity_sync import access_store as store
from services.identity_sync.access_model import (
    DOCUMENT_TYPES,
    PERMISSION_RESOURCE,
    AccessObject,
    AccessPage,
    Input,
    Kind,
    ListQuery,
    PolicyEvaluation,
    PolicyEvaluationResult,
    builtin_role_objects,
    document_from,
    name_of,
)
from shared.access import VERSION_FIELD, AccessSnapshot
from shared.authz import BUILTIN_ROLES, Resource, ResourceGroup, Role, RoleBinding, validate_binding
from shared.cursors import decode_cursor, encode_cursor
from shared.db import transaction
from shared.errors import ConflictError, InputError, NotFoundError
from shared.etag import check_if_match
from shared.events import Actor, ResourceRef, diff_fields, new_event, new_event_id
from shared.outbox import write_event
from shared.policy import Policy, PolicySet, compile_policy, validate_policy_set

SOURCE = "identity_sync"
Authorize = Callable[[str, Resource], None]
"""Raises NotAllowedError unless the caller holds the permission on the resource."""
_BUILTIN_ROLES = {role.id: role for role in BUILTIN_ROLES}


def _resource(kind: Kind, scope: str, object_id: str | None = None) -> Resource:
    return Resource(PERMISSION_RESOURCE[kind], scope, object_id)


async def _event(conn: asyncpg.Connection, actor: Actor, kind: Kind, verb: str, obj: AccessObject, **data: Any):
    await write_event(
        conn,
        new_event(
            f"identity.{kind}.{verb}",
            source=SOURCE,
            actor=actor,
            scope=obj.scope,
            resource=ResourceRef(kind, obj.id),
            data={VERSION_FIELD: obj.version, **data},
        ),
    )


async def _checked(conn: asyncpg.Connection, kind: Kind, document: Any) -> None:
    """Validate what a document refers to, locking the referenced objects until the transaction ends."""
    if isinstance(document, Policy):
        compile_policy(document)
    elif isinstance(document, RoleBinding):
        if not await store.subject_exists(conn, document.subject):
            raise InputError.for_field("subject", f"no principal {document.subject}")
        role: Role | None = _BUILTIN_ROLES.get(document.role_id)
        if role is None:
            stored = await store.get_object(conn, "role", document.role_id, lock=True)
            role = msgspec.convert(stored.document, Role) if stored else None
        group_row = await store.get_object(conn, "resource_group", document.resource_group_id, lock=True)
        group = msgspec.convert(group_row.document, ResourceGroup) if group_row else None
        validate_binding(document, role, group)
    elif isinstance(document, PolicySet):
        policies = {}
        for policy_id in document.policy_ids:
            row = await store.get_object(conn, "policy", policy_id, lock=True)
            if row is not None:
                policies[policy_id] = msgspec.convert(row.document, Policy)
        validate_policy_set(document, policies)


async def create_object(
    pool: asyncpg.Pool, authorize: Authorize, actor: Actor, kind: Kind, body: Input
) -> AccessObject:
    authorize(f"{PERMISSION_RESOURCE[kind]}_create", _resource(kind, body.scope))
    object_id = new_event_id()
    document = document_from(kind, object_id, body)
    async with transaction(pool) as conn:
        await _checked(conn, kind, document)
        version = await store.next_version(conn)
        created = await store.insert_object(
            conn,
            kind,
            object_id,
            body.scope,
            name_of(kind, body),
            getattr(body, "description", ""),
            msgspec.to_builtins(document),
            version,
        )
        if created is None:
            raise ConflictError(f"a {kind} named {name_of(kind, body)!r} already exists at {body.scope}")
        await _event(conn, actor, kind, "created", created, **{kind: created.document})
    return created


async def get_object(pool: asyncpg.Pool, authorize: Authorize, kind: Kind, object_id: str) -> AccessObject:
    builtin = next((o for o in builtin_role_objects() if o.id == object_id), None) if kind == "role" else None
    if builtin is not None:
        return builtin
    async with pool.acquire() as conn:
        found = await store.get_object(conn, kind, object_id)
    if found is None:
        raise NotFoundError(f"no {kind} {object_id}")
    authorize(f"{PERMISSION_RESOURCE[kind]}_view", _resource(kind, found.scope, found.id))
    return found


async def replace_object(
    pool: asyncpg.Pool,
    authorize: Authorize,
    actor: Actor,
    kind: Kind,
    object_id: str,
    body: Input,
    if_match: str | None,
) -> AccessObject:
    if object_id in _BUILTIN_ROLES:
        raise ConflictError("built-in roles are read-only")
    async with transaction(pool) as conn:
        current = await store.lock_for_change(conn, kind, object_id)
        if current is None:
            raise NotFoundError(f"no {kind} {object_id}")
        authorize(f"{PERMISSION_RESOURCE[kind]}_edit", _resource(kind, current.scope, object_id))
        check_if_match(if_match, str(current.version))
        if body.scope != current.scope:
            raise InputError.for_field("scope", f"a {kind} stays at its scope ({current.scope}); create a new one")
        document = msgspec.to_builtins(document_from(kind, object_id, body))
        description = getattr(body, "description", "")
        if document == current.document and description == current.description:
            return current
        await _checked(conn, kind, msgspec.convert(document, DOCUMENT_TYPES[kind]))
        version = await store.next_version(conn)
        updated = await store.replace_object(conn, kind, object_id, name_of(kind, body), description, document, version)
        if updated is None:
            raise ConflictError(f"a {kind} named {name_of(kind, body)!r} already exists at {body.scope}")
        await _event(
            conn,
            actor,
            kind,
            "updated",
            updated,
            **{kind: document, "changes": diff_fields(current.document, document)},
        )
    return updated


# What may refer to each kind, by the referring document's field.
_REFERENCES: dict[Kind, str] = {"role": "role_id", "resource_group": "resource_group_id", "policy": "policy_ids"}


async def delete_object(
    pool: asyncpg.Pool, authorize: Authorize, actor: Actor, kind: Kind, object_id: str, if_match: str | None
) -> None:
    if object_id in _BUILTIN_ROLES:
        raise ConflictError("built-in roles are read-only")
    async with transaction(pool) as conn:
        current = await store.lock_for_change(conn, kind, object_id)
        if current is None:
            raise NotFoundError(f"no {kind} {object_id}")
        authorize(f"{PERMISSION_RESOURCE[kind]}_delete", _resource(kind, current.scope, object_id))
        check_if_match(if_match, str(current.version))
        if kind in _REFERENCES:
            users = await store.referrers(conn, _REFERENCES[kind], object_id)
            if users:
                raise ConflictError(f"{kind} {object_id} is still used by {', '.join(users)}")
        await store.delete_object(conn, kind, object_id)
        deleted = msgspec.structs.replace(current, version=await store.next_version(conn))
        await _event(conn, actor, kind, "deleted", deleted)


async def remove_bindings_of(conn: asyncpg.Connection, actor: Actor, subject: str) -> None:
    """A principal being deleted takes its role bindings with it (in the caller's transaction)."""
    for binding in await store.bindings_of(conn, subject):
        await store.delete_object(conn, "role_binding", binding.id)
        deleted = msgspec.structs.replace(binding, version=await store.next_version(conn))
        await _event(conn, actor, "role_binding", "deleted", deleted)


async def list_objects(pool: asyncpg.Pool, kind: Kind, query: ListQuery) -> AccessPage:
    after = decode_cursor(query.cursor, str) if query.cursor else None
    async with pool.acquire() as conn:
        rows = await store.list_objects(
            conn,
            kind,
            scope=query.scope,
            include_parents=query.include_parents,
            subject=query.subject,
            after_id=after,
            limit=query.limit + 1,
        )
    page = rows[: query.limit]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > query.limit else None
    # Built-in roles live at `account`; they lead the first page of every listing that reaches it.
    reaches_account = query.scope in (None, "account") or query.include_parents
    if kind == "role" and after is None and reaches_account:
        page = [*builtin_role_objects(), *page]
    return AccessPage(items=page, nextCursor=next_cursor)


async def state_version(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return await store.state_version(conn)


async def snapshot(pool: asyncpg.Pool) -> AccessSnapshot:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        version, documents = await store.all_documents(conn)
        memberships, group_parents = await store.principal_graph(conn)
    return msgspec.convert(
        {
            "version": version,
            "roles": documents.get("role", []),
            "resource_groups": documents.get("resource_group", []),
            "role_bindings": documents.get("role_binding", []),
            "policies": documents.get("policy", []),
            "policy_sets": documents.get("policy_set", []),
            "memberships": memberships,
            "group_parents": group_parents,
        },
        AccessSnapshot,
    )


async def evaluate_policy(pool: asyncpg.Pool, request: PolicyEvaluation) -> PolicyEvaluationResult:
    """Dry run: compile the given source (or load a stored policy) and evaluate it against the sample input."""
    if (request.source is None) == (request.policy_id is None):
        raise InputError.for_field("source", "give either `source` or `policy_id`")
    if request.source is not None:
        policy = Policy("dry-run", "account", "dry-run", request.source)
    else:
        async with pool.acquire() as conn:
            stored = await store.get_object(conn, "policy", request.policy_id)
        if stored is None:
            raise NotFoundError(f"no policy {request.policy_id}")
        policy = msgspec.convert(stored.document, Policy)
    result = compile_policy(policy).evaluate(request.input)
    return PolicyEvaluationResult(deny=list(result.deny), warn=list(result.warn))
