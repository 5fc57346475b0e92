"""Every SQL statement of identity-sync. Functions take a connection; callers own transactions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
import msgspec

from services.identity_sync.model import (
    ApiKey,
    Group,
    GroupQuery,
    ServiceAccount,
    ServiceAccountQuery,
    SyncRun,
    User,
    UserQuery,
)
from shared.authz import EVERYTHING, Visibility, visibility_condition
from shared.db import like_escape

_USER_COLUMNS = """u.id::text AS id, u.username, u.display_name, u.emails, u.active, u.external_id, u.source,
    u.attributes, u.version, u.created_at, u.updated_at, u.deactivated_at, u.last_seen,
    coalesce((SELECT array_agg(m.group_id::text ORDER BY m.group_id) FROM group_members m WHERE m.user_id = u.id),
             '{}') AS groups"""
_GROUP_COLUMNS = """g.id::text AS id, g.name, g.display_name, g.scope, g.parent_id::text AS parent, g.external_id,
    g.source, g.version, g.created_at, g.updated_at"""
_ACCOUNT_COLUMNS = """a.id::text AS id, a.name, a.display_name, a.description, a.scope, a.active, a.version,
    a.created_at, a.updated_at, a.last_seen"""


class _Where:
    """A WHERE clause built from optional filters, with numbered arguments."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, clause: Callable[[], str], when: bool = True) -> None:
        if when:
            self.clauses.append(clause())

    def sql(self) -> str:
        return " AND ".join(self.clauses) or "TRUE"


def _like(value: str) -> str:
    return "%" + like_escape(value) + "%"


def _scope_clause(w: _Where, column: str, scope: str, include_subscopes: bool) -> str:
    if not include_subscopes:
        return f"{column} = {w.arg(scope)}"
    prefix = like_escape(scope) + ".%"
    return f"({column} = {w.arg(scope)} OR {column} LIKE {w.arg(prefix)})"


# --- users -------------------------------------------------------------------------------------------


def _user(row: asyncpg.Record) -> User:
    return User(**dict(row))


async def get_user(conn: asyncpg.Connection, user_id: str, *, lock: bool = False) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = $1::uuid" + (" FOR UPDATE" if lock else ""), user_id
    )
    return _user(row) if row else None


async def get_user_by_username(conn: asyncpg.Connection, username: str) -> User | None:
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM users u WHERE lower(u.username) = lower($1)", username)
    return _user(row) if row else None


async def insert_users(conn: asyncpg.Connection, users: list[User]) -> None:
    await conn.executemany(
        """INSERT INTO users (id, username, display_name, emails, active, external_id, source, version,
                              created_at, updated_at, deactivated_at, attributes)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
        [
            (
                u.id,
                u.username,
                u.display_name,
                u.emails,
                u.active,
                u.external_id,
                u.source,
                u.version,
                u.created_at,
                u.updated_at,
                u.deactivated_at,
                u.attributes,
            )
            for u in users
        ],
    )


async def update_user(conn: asyncpg.Connection, user: User) -> None:
    await conn.execute(
        """UPDATE users SET username = $2, display_name = $3, emails = $4, active = $5, external_id = $6,
                  source = $7, version = $8, updated_at = $9, deactivated_at = $10, attributes = $11
           WHERE id = $1""",
        user.id,
        user.username,
        user.display_name,
        user.emails,
        user.active,
        user.external_id,
        user.source,
        user.version,
        user.updated_at,
        user.deactivated_at,
        user.attributes,
    )


async def delete_user(conn: asyncpg.Connection, user_id: str) -> None:
    await conn.execute("DELETE FROM users WHERE id = $1::uuid", user_id)


def _user_where(query: UserQuery) -> _Where:
    w = _Where()
    if query.q:
        pattern = _like(query.q)
        w.add(
            lambda: (
                f"""(u.username ILIKE {w.arg(pattern)} OR u.display_name ILIKE ${len(w.args)}
                         OR EXISTS (SELECT FROM unnest(u.emails) e WHERE e ILIKE ${len(w.args)}))"""
            )
        )
    w.add(lambda: f"lower(u.username) = lower({w.arg(query.username)})", query.username is not None)
    w.add(
        lambda: f"EXISTS (SELECT FROM unnest(u.emails) e WHERE lower(e) = lower({w.arg(query.email)}))",
        query.email is not None,
    )
    w.add(lambda: f"u.active = {w.arg(query.active)}", query.active is not None)
    w.add(
        lambda: (
            f"EXISTS (SELECT FROM group_members m WHERE m.user_id = u.id AND m.group_id = {w.arg(query.group)}::uuid)"
        ),
        query.group is not None,
    )
    w.add(lambda: f"u.source = {w.arg(query.source)}", query.source is not None)
    w.add(
        lambda: f"coalesce(u.last_seen, u.created_at) < {w.arg(query.inactive_since)}",
        query.inactive_since is not None,
    )
    return w


async def list_users(
    conn: asyncpg.Connection, query: UserQuery, after: tuple[str, str] | None
) -> tuple[list[User], int]:
    """A page ordered by (username, id) after the keyset `after`, and the total matching the filters."""
    w = _user_where(query)
    total = await conn.fetchval(f"SELECT count(*) FROM users u WHERE {w.sql()}", *w.args)
    if after is not None:
        w.add(lambda: f"(u.username, u.id) > ({w.arg(after[0])}, {w.arg(after[1])}::uuid)")
    rows = await conn.fetch(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE {w.sql()} ORDER BY u.username, u.id LIMIT {w.arg(query.limit)}",
        *w.args,
    )
    return [_user(r) for r in rows], total


async def touch_last_seen(conn: asyncpg.Connection, table: str, seen: dict[str, dt.datetime]) -> None:
    """Record when principals were last seen, in one statement, never moving `last_seen` backwards."""
    if table not in ("users", "service_accounts"):
        raise ValueError(table)
    await conn.execute(
        f"""UPDATE {table} t SET last_seen = greatest(t.last_seen, s.seen)
            FROM unnest($1::uuid[], $2::timestamptz[]) AS s(id, seen) WHERE t.id = s.id""",
        list(seen),
        list(seen.values()),
    )


# --- groups ------------------------------------------------------------------------------------------


def _group(row: asyncpg.Record) -> Group:
    return Group(**dict(row))


async def get_group(conn: asyncpg.Connection, group_id: str, *, lock: bool = False) -> Group | None:
    row = await conn.fetchrow(
        f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.id = $1::uuid" + (" FOR UPDATE" if lock else ""), group_id
    )
    return _group(row) if row else None


async def group_names(conn: asyncpg.Connection, ids: Iterable[str]) -> dict[str, str]:
    ids = list(ids)
    if not ids:
        return {}
    rows = await conn.fetch("SELECT id::text AS id, name FROM groups WHERE id = ANY($1::uuid[])", ids)
    return {r["id"]: r["name"] for r in rows}


async def ancestors(conn: asyncpg.Connection, group_id: str) -> dict[str, str | None]:
    """`group_id` and every group above it, each mapped to its parent."""
    rows = await conn.fetch(
        """WITH RECURSIVE up(id, parent_id, depth) AS (
               SELECT id, parent_id, 0 FROM groups WHERE id = $1::uuid
               UNION ALL
               SELECT g.id, g.parent_id, up.depth + 1 FROM groups g JOIN up ON g.id = up.parent_id WHERE up.depth < 1000
           )
           SELECT id::text AS id, parent_id::text AS parent FROM up""",
        group_id,
    )
    return {r["id"]: r["parent"] for r in rows}


async def insert_group(conn: asyncpg.Connection, group: Group) -> None:
    await conn.execute(
        """INSERT INTO groups (id, name, display_name, scope, parent_id, external_id, source, version,
                               created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        group.id,
        group.name,
        group.display_name,
        group.scope,
        group.parent,
        group.external_id,
        group.source,
        group.version,
        group.created_at,
        group.updated_at,
    )


async def update_group(conn: asyncpg.Connection, group: Group) -> None:
    await conn.execute(
        """UPDATE groups SET name = $2, display_name = $3, parent_id = $4, external_id = $5, source = $6,
                  version = $7, updated_at = $8
           WHERE id = $1""",
        group.id,
        group.name,
        group.display_name,
        group.parent,
        group.external_id,
        group.source,
        group.version,
        group.updated_at,
    )


async def child_groups(conn: asyncpg.Connection, group_id: str) -> list[Group]:
    rows = await conn.fetch(
        f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.parent_id = $1::uuid ORDER BY g.name FOR UPDATE", group_id
    )
    return [_group(r) for r in rows]


async def delete_group(conn: asyncpg.Connection, group_id: str) -> None:
    await conn.execute("DELETE FROM groups WHERE id = $1::uuid", group_id)


async def list_groups(
    conn: asyncpg.Connection, query: GroupQuery, after: tuple[str, str] | None, visible: Visibility = EVERYTHING
) -> tuple[list[Group], int]:
    w = _Where()
    w.add(lambda: visibility_condition(visible, "g.scope", w.arg, id_column="g.id::text"), not visible.everything)
    if query.q:
        pattern = _like(query.q)
        w.add(lambda: f"(g.name ILIKE {w.arg(pattern)} OR g.display_name ILIKE ${len(w.args)})")
    w.add(lambda: f"lower(g.name) = lower({w.arg(query.name)})", query.name is not None)
    if query.scope is not None:
        scope = query.scope
        w.add(lambda: _scope_clause(w, "g.scope", scope, query.include_subscopes))
    w.add(lambda: f"g.parent_id = {w.arg(query.parent)}::uuid", query.parent is not None)
    total = await conn.fetchval(f"SELECT count(*) FROM groups g WHERE {w.sql()}", *w.args)
    if after is not None:
        w.add(lambda: f"(g.name, g.id) > ({w.arg(after[0])}, {w.arg(after[1])}::uuid)")
    rows = await conn.fetch(
        f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE {w.sql()} ORDER BY g.name, g.id LIMIT {w.arg(query.limit)}",
        *w.args,
    )
    return [_group(r) for r in rows], total


async def add_member(conn: asyncpg.Connection, group_id: str, user_id: str) -> bool:
    """Whether the membership is new."""
    status = await conn.execute(
        "INSERT INTO group_members (group_id, user_id) VALUES ($1::uuid, $2::uuid) ON CONFLICT DO NOTHING",
        group_id,
        user_id,
    )
    return status.endswith(" 1")


async def add_members(conn: asyncpg.Connection, pairs: list[tuple[str, str]]) -> None:
    """(group id, user id) memberships, in one statement."""
    if pairs:
        await conn.execute(
            """INSERT INTO group_members (group_id, user_id) SELECT * FROM unnest($1::uuid[], $2::uuid[])
               ON CONFLICT DO NOTHING""",
            [g for g, _ in pairs],
            [u for _, u in pairs],
        )


async def remove_members(conn: asyncpg.Connection, pairs: list[tuple[str, str]]) -> None:
    if pairs:
        await conn.execute(
            """DELETE FROM group_members m USING unnest($1::uuid[], $2::uuid[]) AS p(g, u)
               WHERE m.group_id = p.g AND m.user_id = p.u""",
            [g for g, _ in pairs],
            [u for _, u in pairs],
        )


async def remove_member(conn: asyncpg.Connection, group_id: str, user_id: str) -> bool:
    status = await conn.execute(
        "DELETE FROM group_members WHERE group_id = $1::uuid AND user_id = $2::uuid", group_id, user_id
    )
    return status.endswith(" 1")


async def member_usernames(conn: asyncpg.Connection, group_id: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        """SELECT u.id::text AS id, u.username FROM group_members m JOIN users u ON u.id = m.user_id
           WHERE m.group_id = $1::uuid ORDER BY u.username""",
        group_id,
    )
    return [(r["id"], r["username"]) for r in rows]


# --- service accounts --------------------------------------------------------------------------------


def _account(row: asyncpg.Record) -> ServiceAccount:
    return ServiceAccount(**dict(row))


async def get_service_account(
    conn: asyncpg.Connection, account_id: str, *, lock: bool = False
) -> ServiceAccount | None:
    row = await conn.fetchrow(
        f"SELECT {_ACCOUNT_COLUMNS} FROM service_accounts a WHERE a.id = $1::uuid" + (" FOR UPDATE" if lock else ""),
        account_id,
    )
    return _account(row) if row else None


async def insert_service_account(conn: asyncpg.Connection, account: ServiceAccount) -> None:
    await conn.execute(
        """INSERT INTO service_accounts (id, name, display_name, description, scope, active, version,
                                         created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
        account.id,
        account.name,
        account.display_name,
        account.description,
        account.scope,
        account.active,
        account.version,
        account.created_at,
        account.updated_at,
    )


async def update_service_account(conn: asyncpg.Connection, account: ServiceAccount) -> None:
    await conn.execute(
        """UPDATE service_accounts SET display_name = $2, description = $3, active = $4, version = $5,
                  updated_at = $6
           WHERE id = $1""",
        account.id,
        account.display_name,
        account.description,
        account.active,
        account.version,
        account.updated_at,
    )


async def delete_service_account(conn: asyncpg.Connection, account_id: str) -> None:
    await conn.execute("DELETE FROM service_accounts WHERE id = $1::uuid", account_id)


async def list_service_accounts(
    conn: asyncpg.Connection,
    query: ServiceAccountQuery,
    after: tuple[str, str] | None,
    visible: Visibility = EVERYTHING,
) -> tuple[list[ServiceAccount], int]:
    w = _Where()
    w.add(lambda: visibility_condition(visible, "a.scope", w.arg, id_column="a.id::text"), not visible.everything)
    if query.q:
        pattern = _like(query.q)
        w.add(lambda: f"(a.name ILIKE {w.arg(pattern)} OR a.display_name ILIKE ${len(w.args)})")
    if query.scope is not None:
        scope = query.scope
        w.add(lambda: _scope_clause(w, "a.scope", scope, query.include_subscopes))
    w.add(lambda: f"a.active = {w.arg(query.active)}", query.active is not None)
    total = await conn.fetchval(f"SELECT count(*) FROM service_accounts a WHERE {w.sql()}", *w.args)
    if after is not None:
        w.add(lambda: f"(a.name, a.id) > ({w.arg(after[0])}, {w.arg(after[1])}::uuid)")
    rows = await conn.fetch(
        f"""SELECT {_ACCOUNT_COLUMNS} FROM service_accounts a WHERE {w.sql()}
            ORDER BY a.name, a.id LIMIT {w.arg(query.limit)}""",
        *w.args,
    )
    return [_account(r) for r in rows], total


# --- tokens ------------------------------------------------------------------------------------------


async def record_revocation(conn: asyncpg.Connection, kind: str, id_: str, at: dt.datetime) -> None:
    await conn.execute(
        """INSERT INTO revocations (kind, id, revoked_at) VALUES ($1, $2, $3)
           ON CONFLICT (kind, id) DO UPDATE SET revoked_at = greatest(revocations.revoked_at, excluded.revoked_at)""",
        kind,
        id_,
        at,
    )


async def revocations_since(conn: asyncpg.Connection, since: dt.datetime) -> list[tuple[str, str, dt.datetime]]:
    rows = await conn.fetch("SELECT kind, id, revoked_at FROM revocations WHERE revoked_at > $1", since)
    return [(r["kind"], r["id"], r["revoked_at"]) for r in rows]


async def insert_signing_key(conn: asyncpg.Connection, kid: str, private_key: bytes, public_jwk: dict) -> None:
    await conn.execute(
        "INSERT INTO signing_keys (kid, private_key, public_jwk) VALUES ($1, $2, $3)", kid, private_key, public_jwk
    )


async def lock_signing_keys(conn: asyncpg.Connection) -> None:
    """Serialise key creation and rotation across replicas until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('idp-identity-signing-keys'))")


async def active_signing_key(conn: asyncpg.Connection) -> tuple[str, bytes] | None:
    row = await conn.fetchrow(
        "SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1"
    )
    return (row["kid"], bytes(row["private_key"])) if row else None


async def retire_signing_keys(conn: asyncpg.Connection, keep: str) -> list[str]:
    rows = await conn.fetch(
        "UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL AND kid <> $1 RETURNING kid", keep
    )
    return [r["kid"] for r in rows]


async def published_keys(conn: asyncpg.Connection, retired_after: dt.datetime) -> list[dict]:
    """Public keys of the signing key and of retired keys whose tokens may still be live."""
    rows = await conn.fetch(
        """SELECT public_jwk FROM signing_keys WHERE retired_at IS NULL OR retired_at > $1
           ORDER BY created_at DESC""",
        retired_after,
    )
    return [r["public_jwk"] for r in rows]


async def signing_keys(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT kid, created_at, retired_at FROM signing_keys ORDER BY created_at DESC")


_API_KEY_COLUMNS = """id::text AS id, service_account_id::text AS service_account_id, name, scope, permissions,
    expires_at, created_at, revoked_at, last_used_at"""


async def insert_api_key(conn: asyncpg.Connection, key: ApiKey, secret_hash: bytes) -> None:
    await conn.execute(
        """INSERT INTO api_keys (id, service_account_id, name, secret_hash, scope, permissions, expires_at, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        key.id,
        key.service_account_id,
        key.name,
        secret_hash,
        key.scope,
        key.permissions,
        key.expires_at,
        key.created_at,
    )


async def list_api_keys(conn: asyncpg.Connection, account_id: str) -> list[ApiKey]:
    rows = await conn.fetch(
        f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE service_account_id = $1::uuid ORDER BY created_at", account_id
    )
    return [ApiKey(**dict(r)) for r in rows]


async def get_api_key(conn: asyncpg.Connection, key_id: str, *, lock: bool = False) -> ApiKey | None:
    row = await conn.fetchrow(
        f"SELECT {_API_KEY_COLUMNS} FROM api_keys WHERE id = $1::uuid" + (" FOR UPDATE" if lock else ""), key_id
    )
    return ApiKey(**dict(row)) if row else None


async def revoke_api_key(conn: asyncpg.Connection, key_id: str) -> dt.datetime:
    return await conn.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid RETURNING revoked_at", key_id
    )


async def api_key_for_login(conn: asyncpg.Connection, key_id: str) -> asyncpg.Record | None:
    """The key with its secret hash and its service account's state."""
    return await conn.fetchrow(
        """SELECT k.id::text AS id, k.secret_hash, k.scope, k.permissions, k.expires_at, k.revoked_at,
                  a.id::text AS account_id, a.active
           FROM api_keys k JOIN service_accounts a ON a.id = k.service_account_id WHERE k.id = $1::uuid""",
        key_id,
    )


async def group_id_by_name(conn: asyncpg.Connection, scope: str, name: str) -> str | None:
    return await conn.fetchval("SELECT id::text FROM groups WHERE scope = $1 AND lower(name) = lower($2)", scope, name)


# --- sync --------------------------------------------------------------------------------------------


async def lock_source(conn: asyncpg.Connection, source: str) -> None:
    """One run per source at a time, across replicas, until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('idp-identity-sync:' || $1))", source)


async def all_users(conn: asyncpg.Connection) -> list[User]:
    return [_user(r) for r in await conn.fetch(f"SELECT {_USER_COLUMNS} FROM users u FOR UPDATE OF u")]


async def groups_at(conn: asyncpg.Connection, scope: str) -> list[Group]:
    rows = await conn.fetch(f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.scope = $1 FOR UPDATE OF g", scope)
    return [_group(r) for r in rows]


async def groups_of_source(conn: asyncpg.Connection, source: str) -> list[Group]:
    rows = await conn.fetch(f"SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.source = $1 FOR UPDATE OF g", source)
    return [_group(r) for r in rows]


async def member_ids(conn: asyncpg.Connection, group_ids: list[str]) -> dict[str, set[str]]:
    rows = await conn.fetch(
        "SELECT group_id::text AS g, user_id::text AS u FROM group_members WHERE group_id = ANY($1::uuid[])", group_ids
    )
    found: dict[str, set[str]] = {g: set() for g in group_ids}
    for r in rows:
        found[r["g"]].add(r["u"])
    return found


async def insert_sync_run(conn: asyncpg.Connection, run: SyncRun) -> None:
    await conn.execute(
        """INSERT INTO sync_runs (id, source, strategy, started_at, finished_at, created, updated, unchanged,
                                  deactivated, deleted, issues)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        run.id,
        run.source,
        run.strategy,
        run.started_at,
        run.finished_at,
        run.created,
        run.updated,
        run.unchanged,
        run.deactivated,
        run.deleted,
        [msgspec.structs.asdict(i) for i in run.issues],
    )


_RUN_COLUMNS = """id::text AS id, source, strategy, started_at, finished_at, created, updated, unchanged, deactivated,
    deleted, issues"""


async def get_sync_run(conn: asyncpg.Connection, run_id: str) -> SyncRun | None:
    row = await conn.fetchrow(f"SELECT {_RUN_COLUMNS} FROM sync_runs WHERE id = $1::uuid", run_id)
    return msgspec.convert(dict(row), SyncRun) if row else None


async def list_sync_runs(conn: asyncpg.Connection, source: str | None, limit: int) -> list[SyncRun]:
    rows = await conn.fetch(
        f"""SELECT {_RUN_COLUMNS} FROM sync_runs WHERE $1::text IS NULL OR source = $1
            ORDER BY started_at DESC LIMIT $2""",
        source,
        limit,
    )
    return [msgspec.convert(dict(r), SyncRun) for r in rows]


# --- single sign-on ----------------------------------------------------------------------------------


async def insert_sso_login(conn: asyncpg.Connection, state: str, nonce: str, verifier: str, lifetime: float) -> None:
    await conn.execute("DELETE FROM sso_logins WHERE expires_at < now()")
    await conn.execute(
        """INSERT INTO sso_logins (state, nonce, code_verifier, expires_at)
           VALUES ($1, $2, $3, now() + make_interval(secs => $4))""",
        state,
        nonce,
        verifier,
        lifetime,
    )


async def take_sso_login(conn: asyncpg.Connection, state: str) -> tuple[str, str] | None:
    """(nonce, code verifier) of a pending login, which can be taken once and only before it expires."""
    row = await conn.fetchrow(
        "DELETE FROM sso_logins WHERE state = $1 AND expires_at > now() RETURNING nonce, code_verifier", state
    )
    return (row["nonce"], row["code_verifier"]) if row else None


async def get_users(conn: asyncpg.Connection, ids: list[str]) -> list[User]:
    """The users among `ids`, in that order."""
    rows = await conn.fetch(
        f"""SELECT {_USER_COLUMNS} FROM users u WHERE u.id = ANY($1::uuid[])
            ORDER BY array_position($1::uuid[], u.id)""",
        ids,
    )
    return [_user(r) for r in rows]


async def get_groups(conn: asyncpg.Connection, ids: list[str]) -> list[Group]:
    rows = await conn.fetch(
        f"""SELECT {_GROUP_COLUMNS} FROM groups g WHERE g.id = ANY($1::uuid[])
            ORDER BY array_position($1::uuid[], g.id)""",
        ids,
    )
    return [_group(r) for r in rows]


async def child_ids(conn: asyncpg.Connection, group_ids: list[str]) -> dict[str, list[str]]:
    if not group_ids:
        return {}
    rows = await conn.fetch(
        "SELECT parent_id::text AS p, id::text AS c FROM groups WHERE parent_id = ANY($1::uuid[]) ORDER BY id",
        group_ids,
    )
    found: dict[str, list[str]] = {}
    for r in rows:
        found.setdefault(r["p"], []).append(r["c"])
    return found


async def page_ids(conn: asyncpg.Connection, table: str, offset: int, limit: int | None) -> tuple[list[str], int]:
    """A page of ids of `users` or `groups` in a stable order, and how many there are."""
    if table not in ("users", "groups"):
        raise ValueError(table)
    total = await conn.fetchval(f"SELECT count(*) FROM {table}")
    rows = await conn.fetch(f"SELECT id::text AS id FROM {table} ORDER BY id OFFSET $1 LIMIT $2", offset, limit)
    return [r["id"] for r in rows], total
