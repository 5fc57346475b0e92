"""Identity use cases for users, groups and service accounts, shared by the HTTP routes and the sync
sources: one transaction = the change + its `identity.*` event in the outbox."""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
import msgspec

from services.identity_sync import access_service, access_store, store
from services.identity_sync.model import (
    Group,
    GroupCreate,
    GroupPage,
    GroupPatch,
    GroupQuery,
    ServiceAccount,
    ServiceAccountCreate,
    ServiceAccountPage,
    ServiceAccountPatch,
    ServiceAccountQuery,
    User,
    UserCreate,
    UserPage,
    UserPatch,
    UserQuery,
    changed_fields,
    check_no_cycle,
    check_parent_scope,
    group_state,
    service_account_state,
    user_state,
)
from shared.access import ACCESS_EVENTS, VERSION_FIELD
from shared.authz import EVERYTHING, Visibility
from shared.cursors import decode_cursor, encode_cursor
from shared.db import transaction
from shared.errors import ConflictError, FieldError, InputError, NotFoundError
from shared.etag import check_if_match
from shared.events import DEFAULT_SCOPE, Actor, Event, ResourceRef, new_event, utc_now
from shared.outbox import write_event, write_events
from shared.scopes import check_scope

SOURCE = "identity_sync"
USER_FIELDS = ("username", "display_name", "emails", "active", "external_id", "source", "attributes", "deactivated_at")
GROUP_FIELDS = ("name", "display_name", "parent", "external_id", "source")
ACCOUNT_FIELDS = ("display_name", "description", "active")
T = TypeVar("T")


_BATCH: contextvars.ContextVar[list[Event] | None] = contextvars.ContextVar("identity_event_batch", default=None)
"""Events of the bulk change in progress, written together when it ends (see `batched_events`)."""


@asynccontextmanager
async def batched_events(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Within the block, events are collected and written to the outbox in one statement at its end, in
    order and in the same transaction: a sync of thousands of principals is not a round trip per event."""
    batch: list[Event] = []
    token = _BATCH.set(batch)
    try:
        yield
    finally:
        _BATCH.reset(token)
    if batch:
        await write_events(conn, batch)


async def _emit(
    conn: asyncpg.Connection, type_: str, actor: Actor, kind: str, id_: str, data: dict[str, Any], scope: str
) -> Event:
    if f"identity.{kind}.{type_}" in ACCESS_EVENTS:
        # Memberships, nesting and deletions change what principals may do: they take their place in the
        # access-control order, and a deleted principal's role bindings go with it.
        if type_ == "deleted":
            await access_service.remove_bindings_of(conn, actor, f"{kind}:{id_}")
        data = {**data, VERSION_FIELD: await access_store.next_version(conn)}
    event = new_event(
        f"identity.{kind}.{type_}", source=SOURCE, actor=actor, scope=scope, resource=ResourceRef(kind, id_), data=data
    )
    batch = _BATCH.get()
    if batch is None:
        return await write_event(conn, event)
    batch.append(event)
    return event


def _next_cursor(items: list[Any], more: bool, key: Callable[[Any], str]) -> str | None:
    """The cursor after the last item, a (sort key, id) pair, when there are more."""
    return encode_cursor((key(items[-1]), items[-1].id)) if items and more else None


async def _read(pool: asyncpg.Pool, fetch: Callable[..., Awaitable[T | None]], id_: str, what: str) -> T:
    async with pool.acquire() as conn:
        found = await fetch(conn, _check_id(id_, "path.id"))
    if found is None:
        raise NotFoundError(f"no {what} {id_}")
    return found


async def _locked(conn: asyncpg.Connection, fetch: Callable[..., Awaitable[T | None]], id_: str, what: str) -> T:
    found = await fetch(conn, _check_id(id_, "path.id"), lock=True)
    if found is None:
        raise NotFoundError(f"no {what} {id_}")
    return found


def is_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_id(value: str, field: str) -> str:
    if not is_id(value):
        raise InputError.for_field(field, f"{value!r} is not an id")
    return value


# --- users -------------------------------------------------------------------------------------------


async def get_user(pool: asyncpg.Pool, user_id: str) -> User:
    return await _read(pool, store.get_user, user_id, "user")


async def list_users(pool: asyncpg.Pool, query: UserQuery) -> UserPage:
    after = decode_cursor(query.cursor, tuple[str, str]) if query.cursor else None
    async with pool.acquire() as conn:
        items, total = await store.list_users(conn, msgspec.structs.replace(query, limit=query.limit + 1), after)
    page = items[: query.limit]
    more = len(items) > query.limit
    return UserPage(items=page, totalItems=total, nextCursor=_next_cursor(page, more, lambda u: u.username))


async def create_user(pool: asyncpg.Pool, actor: Actor, body: UserCreate, *, source: str = "api") -> User:
    async with transaction(pool) as conn:
        return await insert_user(conn, actor, body, source=source)


async def insert_user(
    conn: asyncpg.Connection, actor: Actor, body: UserCreate, *, source: str, attributes: dict[str, Any] | None = None
) -> User:
    return (await insert_users(conn, actor, [(body, attributes or {})], source=source))[0]


async def insert_users(
    conn: asyncpg.Connection, actor: Actor, bodies: Sequence[tuple[UserCreate, dict[str, Any]]], *, source: str
) -> list[User]:
    """Create users (with their SCIM attributes) in one statement, each with its `identity.user.created`."""
    now = utc_now()
    users = [
        User(
            id=str(uuid.uuid4()),
            username=body.username,
            display_name=body.display_name,
            emails=list(body.emails),
            active=body.active,
            external_id=body.external_id,
            source=source,
            groups=[],
            attributes=attributes,
            version=1,
            created_at=now,
            updated_at=now,
            deactivated_at=None if body.active else now,
            last_seen=None,
        )
        for body, attributes in bodies
    ]
    try:
        await store.insert_users(conn, users)
    except asyncpg.UniqueViolationError:
        raise _username_taken(bodies[0][0].username if len(bodies) == 1 else "of one of these users") from None
    for user in users:
        await _emit(conn, "created", actor, "user", user.id, user_state(user), DEFAULT_SCOPE)
    return users


def _username_taken(username: str) -> ConflictError:
    return ConflictError(f"username {username!r} is already taken", errors=[FieldError("$.username", "already taken")])


async def update_user(
    pool: asyncpg.Pool, actor: Actor, user_id: str, patch: UserPatch, if_match: str | None, *, source: str | None = None
) -> User:
    async with transaction(pool) as conn:
        current = await _locked(conn, store.get_user, user_id, "user")
        check_if_match(if_match, str(current.version))
        return await apply_user_patch(conn, actor, current, patch, source=source)


async def apply_user_patch(
    conn: asyncpg.Connection,
    actor: Actor,
    current: User,
    patch: UserPatch,
    *,
    source: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> User:
    """Apply a merge patch to a locked user; a patch that changes nothing writes and emits nothing.

    A change of `active` is its own event (`deactivated`/`reactivated`), which every service's token
    verifier listens to.
    """
    values = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not msgspec.UNSET}
    if source is not None:
        values["source"] = source
    if attributes is not None:
        values["attributes"] = attributes
    if "active" in values and values["active"] != current.active:
        values["deactivated_at"] = None if values["active"] else utc_now()
    updated = msgspec.structs.replace(current, **values)
    changes = changed_fields(current, updated, USER_FIELDS)
    if not changes:
        return current
    updated = msgspec.structs.replace(updated, version=current.version + 1, updated_at=utc_now())
    try:
        await store.update_user(conn, updated)
    except asyncpg.UniqueViolationError:
        raise _username_taken(updated.username) from None
    verb = "updated"
    if "active" in changes:  # its own verb whatever else changed: every token verifier listens for it
        verb = "reactivated" if updated.active else "deactivated"
    data = {**user_state(updated), "changes": changes}
    event = await _emit(conn, verb, actor, "user", updated.id, data, DEFAULT_SCOPE)
    if verb == "deactivated":
        await store.record_revocation(conn, "user", updated.id, event.time)
    return updated


async def delete_user(pool: asyncpg.Pool, actor: Actor, user_id: str, if_match: str | None) -> None:
    async with transaction(pool) as conn:
        user = await _locked(conn, store.get_user, user_id, "user")
        check_if_match(if_match, str(user.version))
        await remove_user(conn, actor, user)


async def remove_user(conn: asyncpg.Connection, actor: Actor, user: User) -> None:
    """Delete a user and its memberships; the event keeps what the catalog needs to flag its ownership."""
    await store.delete_user(conn, user.id)
    names = await store.group_names(conn, user.groups)
    data = {**user_state(user), "group_names": sorted(names.values())}
    event = await _emit(conn, "deleted", actor, "user", user.id, data, DEFAULT_SCOPE)
    await store.record_revocation(conn, "user", user.id, event.time)


# --- groups ------------------------------------------------------------------------------------------


async def get_group(pool: asyncpg.Pool, group_id: str) -> Group:
    return await _read(pool, store.get_group, group_id, "group")


async def list_groups(pool: asyncpg.Pool, query: GroupQuery, visible: Visibility = EVERYTHING) -> GroupPage:
    """A page of the groups `visible` reaches that match `query`."""
    if query.scope is not None:
        check_scope(query.scope)
    after = decode_cursor(query.cursor, tuple[str, str]) if query.cursor else None
    async with pool.acquire() as conn:
        items, total = await store.list_groups(
            conn, msgspec.structs.replace(query, limit=query.limit + 1), after, visible
        )
    page = items[: query.limit]
    more = len(items) > query.limit
    return GroupPage(items=page, totalItems=total, nextCursor=_next_cursor(page, more, lambda g: g.name))


async def _check_parent(conn: asyncpg.Connection, group: Group) -> str | None:
    """The parent's name after checking it exists, its scope contains the group's, and there is no cycle."""
    if group.parent is None:
        return None
    _check_id(group.parent, "$.parent")
    parent = await store.get_group(conn, group.parent)
    if parent is None:
        raise InputError.for_field("$.parent", f"no group {group.parent}")
    check_parent_scope(group.scope, parent.scope)
    check_no_cycle(group.id, group.parent, await store.ancestors(conn, group.parent))
    return parent.name


async def create_group(pool: asyncpg.Pool, actor: Actor, body: GroupCreate, *, source: str = "api") -> Group:
    check_scope(body.scope, "$.scope")
    async with transaction(pool) as conn:
        return await insert_group(conn, actor, body, source=source)


async def insert_group(conn: asyncpg.Connection, actor: Actor, body: GroupCreate, *, source: str) -> Group:
    now = utc_now()
    group = Group(
        id=str(uuid.uuid4()),
        name=body.name,
        display_name=body.display_name,
        scope=body.scope,
        parent=body.parent,
        external_id=body.external_id,
        source=source,
        version=1,
        created_at=now,
        updated_at=now,
    )
    parent_name = await _check_parent(conn, group)
    try:
        await store.insert_group(conn, group)
    except asyncpg.UniqueViolationError:
        raise _group_name_taken(group) from None
    await _emit(conn, "created", actor, "group", group.id, group_state(group, parent_name), group.scope)
    return group


def _group_name_taken(group: Group) -> ConflictError:
    return ConflictError(
        f"a group named {group.name!r} already exists at {group.scope}", errors=[FieldError("$.name", "already taken")]
    )


async def update_group(
    pool: asyncpg.Pool,
    actor: Actor,
    group_id: str,
    patch: GroupPatch,
    if_match: str | None,
    *,
    source: str | None = None,
) -> Group:
    async with transaction(pool) as conn:
        current = await _locked(conn, store.get_group, group_id, "group")
        check_if_match(if_match, str(current.version))
        return await apply_group_patch(conn, actor, current, patch, source=source)


async def apply_group_patch(
    conn: asyncpg.Connection, actor: Actor, current: Group, patch: GroupPatch, *, source: str | None = None
) -> Group:
    values = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not msgspec.UNSET}
    if source is not None:
        values["source"] = source
    updated = msgspec.structs.replace(current, **values)
    changes = changed_fields(current, updated, GROUP_FIELDS)
    if not changes:
        return current
    updated = msgspec.structs.replace(updated, version=current.version + 1, updated_at=utc_now())
    parent_name = await _check_parent(conn, updated)
    try:
        await store.update_group(conn, updated)
    except asyncpg.UniqueViolationError:
        raise _group_name_taken(updated) from None
    await _emit(
        conn,
        "updated",
        actor,
        "group",
        updated.id,
        {**group_state(updated, parent_name), "changes": changes},
        updated.scope,
    )
    return updated


async def delete_group(pool: asyncpg.Pool, actor: Actor, group_id: str, if_match: str | None) -> None:
    """Delete a group; its child groups move up to its parent (each an `updated` event), members leave."""
    async with transaction(pool) as conn:
        group = await _locked(conn, store.get_group, group_id, "group")
        check_if_match(if_match, str(group.version))
        await remove_group(conn, actor, group)


async def remove_group(conn: asyncpg.Connection, actor: Actor, group: Group) -> None:
    for child in await store.child_groups(conn, group.id):
        await apply_group_patch(conn, actor, child, GroupPatch(parent=group.parent))
    members = await store.member_usernames(conn, group.id)
    await store.delete_group(conn, group.id)
    await _emit(
        conn,
        "deleted",
        actor,
        "group",
        group.id,
        {**group_state(group, None), "member_usernames": [name for _, name in members]},
        group.scope,
    )


async def set_membership(pool: asyncpg.Pool, actor: Actor, group_id: str, user_id: str, member: bool) -> None:
    """Add or remove a direct member; repeating either is a no-op that emits nothing."""
    _check_id(user_id, "path.user_id")
    async with transaction(pool) as conn:
        group = await _locked(conn, store.get_group, group_id, "group")
        user = await store.get_user(conn, user_id)
        if user is None:
            raise NotFoundError(f"no user {user_id}")
        await change_membership(conn, actor, group, user, member)


async def change_membership(conn: asyncpg.Connection, actor: Actor, group: Group, user: User, member: bool) -> bool:
    changed = await (store.add_member if member else store.remove_member)(conn, group.id, user.id)
    if changed:
        await _membership_event(conn, actor, group, user, member)
    return changed


async def change_memberships(conn: asyncpg.Connection, actor: Actor, changes: list[tuple[Group, User, bool]]) -> None:
    """Apply known membership changes (additions that are new, removals that exist) in two statements."""
    await store.add_members(conn, [(g.id, u.id) for g, u, member in changes if member])
    await store.remove_members(conn, [(g.id, u.id) for g, u, member in changes if not member])
    for group, user, member in changes:
        await _membership_event(conn, actor, group, user, member)


async def _membership_event(conn: asyncpg.Connection, actor: Actor, group: Group, user: User, member: bool) -> None:
    data = {"group_id": group.id, "group_name": group.name, "user_id": user.id, "username": user.username}
    await _emit(conn, "member_added" if member else "member_removed", actor, "group", group.id, data, group.scope)


# --- service accounts --------------------------------------------------------------------------------


async def get_service_account(pool: asyncpg.Pool, account_id: str) -> ServiceAccount:
    return await _read(pool, store.get_service_account, account_id, "service account")


async def list_service_accounts(
    pool: asyncpg.Pool, query: ServiceAccountQuery, visible: Visibility = EVERYTHING
) -> ServiceAccountPage:
    """A page of the service accounts `visible` reaches that match `query`."""
    if query.scope is not None:
        check_scope(query.scope)
    after = decode_cursor(query.cursor, tuple[str, str]) if query.cursor else None
    async with pool.acquire() as conn:
        items, total = await store.list_service_accounts(
            conn, msgspec.structs.replace(query, limit=query.limit + 1), after, visible
        )
    page = items[: query.limit]
    more = len(items) > query.limit
    return ServiceAccountPage(items=page, totalItems=total, nextCursor=_next_cursor(page, more, lambda a: a.name))


async def create_service_account(pool: asyncpg.Pool, actor: Actor, body: ServiceAccountCreate) -> ServiceAccount:
    check_scope(body.scope, "$.scope")
    now = utc_now()
    account = ServiceAccount(
        id=str(uuid.uuid4()),
        name=body.name,
        display_name=body.display_name,
        description=body.description,
        scope=body.scope,
        active=True,
        version=1,
        created_at=now,
        updated_at=now,
        last_seen=None,
    )
    try:
        async with transaction(pool) as conn:
            await store.insert_service_account(conn, account)
            await _emit(
                conn, "created", actor, "service_account", account.id, service_account_state(account), account.scope
            )
    except asyncpg.UniqueViolationError:
        raise ConflictError(
            f"a service account named {body.name!r} already exists at {body.scope}",
            errors=[FieldError("$.name", "already taken")],
        ) from None
    return account


async def update_service_account(
    pool: asyncpg.Pool, actor: Actor, account_id: str, patch: ServiceAccountPatch, if_match: str | None
) -> ServiceAccount:
    async with transaction(pool) as conn:
        current = await _locked(conn, store.get_service_account, account_id, "service account")
        check_if_match(if_match, str(current.version))
        values = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not msgspec.UNSET}
        updated = msgspec.structs.replace(current, **values)
        changes = changed_fields(current, updated, ACCOUNT_FIELDS)
        if not changes:
            return current
        updated = msgspec.structs.replace(updated, version=current.version + 1, updated_at=utc_now())
        await store.update_service_account(conn, updated)
        verb = "updated"
        if "active" in changes:
            verb = "reactivated" if updated.active else "deactivated"
        data = {**service_account_state(updated), "changes": changes}
        event = await _emit(conn, verb, actor, "service_account", updated.id, data, updated.scope)
        if verb == "deactivated":
            await store.record_revocation(conn, "service_account", updated.id, event.time)
        return updated


async def delete_service_account(pool: asyncpg.Pool, actor: Actor, account_id: str, if_match: str | None) -> None:
    async with transaction(pool) as conn:
        account = await _locked(conn, store.get_service_account, account_id, "service account")
        check_if_match(if_match, str(account.version))
        await store.delete_service_account(conn, account.id)
        event = await _emit(
            conn, "deleted", actor, "service_account", account.id, service_account_state(account), account.scope
        )
        await store.record_revocation(conn, "service_account", account.id, event.time)
