"""The sync engine every source shares (CSV, Backstage YAML, LDAP): make identity-sync match a source's
snapshot, through the same use cases (and events) as the API, in one transaction per run.

Users are matched by username, groups by name at the run's scope. Principals this source created or
updated before and that are missing now get the run's strategy: `keep`, `deactivate` (users; groups are
kept) or `delete`.
"""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from services.identity_sync import ldap, service, store
from services.identity_sync.model import (
    Group,
    GroupCreate,
    GroupPatch,
    Issue,
    Strategy,
    SyncRun,
    SyncRunList,
    User,
    UserCreate,
    UserPatch,
)
from services.identity_sync.sources import Snapshot
from shared.db import transaction
from shared.errors import ConflictError, InputError, NotFoundError
from shared.events import Actor, ResourceRef, new_event, utc_now
from shared.outbox import write_event
from shared.scopes import check_scope


class _Tally:
    def __init__(self) -> None:
        self.created = self.updated = self.unchanged = self.deactivated = self.deleted = 0
        self.issues: list[Issue] = []


async def run_sync(
    pool: asyncpg.Pool, actor: Actor, source: str, snapshot: Snapshot, strategy: Strategy, scope: str
) -> SyncRun:
    check_scope(scope, "query.scope")
    started = utc_now()
    tally = _Tally()
    tally.issues += snapshot.issues
    async with transaction(pool) as conn:
        await store.lock_source(conn, source)
        async with service.batched_events(conn):
            users = await _sync_users(conn, actor, source, snapshot, strategy, tally)
            groups = await _sync_groups(conn, actor, source, snapshot, scope, strategy, tally)
            await _sync_memberships(conn, actor, snapshot, users, groups, tally)
        run = SyncRun(
            id=str(uuid.uuid4()),
            source=source,
            strategy=strategy,
            started_at=started,
            finished_at=utc_now(),
            created=tally.created,
            updated=tally.updated,
            unchanged=tally.unchanged,
            deactivated=tally.deactivated,
            deleted=tally.deleted,
            issues=tally.issues,
        )
        await store.insert_sync_run(conn, run)
        data = {k: v for k, v in msgspec.structs.asdict(run).items() if k != "issues"}
        data["issues"] = len(run.issues)
        await write_event(
            conn,
            new_event(
                "identity.sync_run.completed",
                source=service.SOURCE,
                actor=actor,
                resource=ResourceRef("sync_run", run.id),
                data=msgspec.to_builtins(data),
            ),
        )
    return run


async def _sync_users(
    conn: asyncpg.Connection, actor: Actor, source: str, snapshot: Snapshot, strategy: Strategy, tally: _Tally
) -> dict[str, User]:
    """Create or update the snapshot's users; returns every user by lower-case username."""
    existing = {u.username.lower(): u for u in await store.all_users(conn)}
    seen = set()
    new: list[tuple[UserCreate, dict]] = []
    for wanted in snapshot.users:
        key = wanted.username.lower()
        if key in seen:
            tally.issues.append(Issue(f"user {wanted.username}", "listed twice; the first entry was used"))
            continue
        seen.add(key)
        current = existing.get(key)
        if current is None:
            body = UserCreate(
                username=wanted.username,
                display_name=wanted.display_name,
                emails=wanted.emails,
                active=wanted.active,
                external_id=wanted.external_id,
            )
            new.append((body, {}))
            continue
        patch = UserPatch(
            username=wanted.username,
            display_name=wanted.display_name,
            emails=wanted.emails,
            active=wanted.active,
            external_id=wanted.external_id,
        )
        updated = await service.apply_user_patch(conn, actor, current, patch, source=source)
        existing[key] = updated
        if updated is current:
            tally.unchanged += 1
        else:
            tally.updated += 1
    for user in await service.insert_users(conn, actor, new, source=source):
        existing[user.username.lower()] = user
    tally.created += len(new)
    for key, user in list(existing.items()):
        if user.source != source or key in seen or strategy == "keep":
            continue
        if strategy == "delete":
            await service.remove_user(conn, actor, user)
            del existing[key]
            tally.deleted += 1
        elif user.active:
            existing[key] = await service.apply_user_patch(conn, actor, user, UserPatch(active=False))
            tally.deactivated += 1
    return existing


async def _sync_groups(
    conn: asyncpg.Connection,
    actor: Actor,
    source: str,
    snapshot: Snapshot,
    scope: str,
    strategy: Strategy,
    tally: _Tally,
) -> dict[str, Group]:
    """Create or update the snapshot's groups at `scope`, then their nesting; returns groups by lower-case name."""
    existing = {g.name.lower(): g for g in await store.groups_at(conn, scope)}
    wanted_names = {g.name.lower() for g in snapshot.groups}
    for wanted in snapshot.groups:
        current = existing.get(wanted.name.lower())
        if current is None:
            body = GroupCreate(
                name=wanted.name, display_name=wanted.display_name, scope=scope, external_id=wanted.external_id
            )
            existing[wanted.name.lower()] = await service.insert_group(conn, actor, body, source=source)
            tally.created += 1
            continue
        patch = GroupPatch(display_name=wanted.display_name, external_id=wanted.external_id)
        updated = await service.apply_group_patch(conn, actor, current, patch, source=source)
        existing[wanted.name.lower()] = updated
        tally.updated += updated is not current
        tally.unchanged += updated is current
    for wanted in snapshot.groups:
        group = existing[wanted.name.lower()]
        parent = existing.get(wanted.parent.lower()) if wanted.parent else None
        if wanted.parent and parent is None:
            tally.issues.append(Issue(f"group {wanted.name}", f"parent {wanted.parent} does not exist"))
            continue
        parent_id = parent.id if parent else None
        if group.parent != parent_id:
            try:
                existing[wanted.name.lower()] = await service.apply_group_patch(
                    conn, actor, group, GroupPatch(parent=parent_id)
                )
            except (ConflictError, InputError) as exc:
                tally.issues.append(Issue(f"group {wanted.name}", exc.detail))
    if strategy == "delete":
        for group in await store.groups_of_source(conn, source):
            if group.name.lower() not in wanted_names:
                await service.remove_group(conn, actor, group)
                existing.pop(group.name.lower(), None)
                tally.deleted += 1
    return existing


async def _sync_memberships(
    conn: asyncpg.Connection,
    actor: Actor,
    snapshot: Snapshot,
    users: dict[str, User],
    groups: dict[str, Group],
    tally: _Tally,
) -> None:
    """Each snapshot group's direct members become exactly the ones the source lists."""
    targets = [groups[g.name.lower()] for g in snapshot.groups]
    current = await store.member_ids(conn, [g.id for g in targets])
    by_id = {u.id: u for u in users.values()}
    changes = []
    for wanted, group in zip(snapshot.groups, targets, strict=True):
        member_ids = {users[u.lower()].id for u in wanted.members if u.lower() in users}
        tally.issues += [
            Issue(f"group {wanted.name}", f"member {u} does not exist")
            for u in wanted.members
            if u.lower() not in users
        ]
        for user_id in sorted(member_ids ^ current[group.id]):
            user = by_id.get(user_id) or await store.get_user(conn, user_id)
            if user is not None:
                changes.append((group, user, user_id in member_ids))
    await service.change_memberships(conn, actor, changes)


async def sync_ldap(pool: asyncpg.Pool, actor: Actor, config: ldap.LdapSettings) -> SyncRun:
    """Read the directory, then make identity-sync match it."""
    snapshot = await ldap.read_directory_async(config)
    return await run_sync(pool, actor, f"ldap:{config.source}", snapshot, config.strategy, config.group_scope)


async def get_sync_run(pool: asyncpg.Pool, run_id: str) -> SyncRun:
    async with pool.acquire() as conn:
        run = await store.get_sync_run(conn, run_id) if service.is_id(run_id) else None
    if run is None:
        raise NotFoundError(f"no sync run {run_id}")
    return run


async def list_sync_runs(pool: asyncpg.Pool, source: str | None, limit: int) -> SyncRunList:
    async with pool.acquire() as conn:
        return SyncRunList(await store.list_sync_runs(conn, source, limit))
