"""SQL of identity-sync's access-control objects. Functions take a connection; callers own transactions."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.identity_sync.access_model import AccessObject, Kind
from shared.authz import ancestors

_COLUMNS = "kind, id, scope, name, description, document, version, created_at, updated_at"


def _object(row: asyncpg.Record) -> AccessObject:
    return AccessObject(**dict(row))


async def next_version(conn: asyncpg.Connection) -> int:
    """The version of this write; holds the state row until the transaction ends, so writes are ordered."""
    return await conn.fetchval("UPDATE access_state SET version = version + 1 WHERE id = 1 RETURNING version")


async def state_version(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT version FROM access_state WHERE id = 1")


async def insert_object(
    conn: asyncpg.Connection,
    kind: Kind,
    object_id: str,
    scope: str,
    name: str,
    description: str,
    document: Any,
    version: int,
) -> AccessObject | None:
    """None when an object of this kind already has this name at this scope."""
    row = await conn.fetchrow(
        f"""INSERT INTO access_objects (kind, id, scope, name, description, document, version)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
            ON CONFLICT (kind, scope, name) DO NOTHING
            RETURNING {_COLUMNS}""",
        kind,
        object_id,
        scope,
        name,
        description,
        document,
        version,
    )
    return _object(row) if row else None


async def replace_object(
    conn: asyncpg.Connection, kind: Kind, object_id: str, name: str, description: str, document: Any, version: int
) -> AccessObject | None:
    """None when another object of this kind already has `name` at this scope."""
    try:
        async with conn.transaction():  # a savepoint: the conflict must not abort the caller's transaction
            row = await conn.fetchrow(
                f"""UPDATE access_objects
                    SET name = $3, description = $4, document = $5::jsonb, version = $6, updated_at = now()
                    WHERE kind = $1 AND id = $2
                    RETURNING {_COLUMNS}""",
                kind,
                object_id,
                name,
                description,
                document,
                version,
            )
    except asyncpg.UniqueViolationError:
        return None
    return _object(row)


async def get_object(
    conn: asyncpg.Connection, kind: Kind, object_id: str, *, lock: bool = False
) -> AccessObject | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM access_objects WHERE kind = $1 AND id = $2" + (" FOR SHARE" if lock else ""),
        kind,
        object_id,
    )
    return _object(row) if row else None


async def lock_for_change(conn: asyncpg.Connection, kind: Kind, object_id: str) -> AccessObject | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM access_objects WHERE kind = $1 AND id = $2 FOR UPDATE", kind, object_id
    )
    return _object(row) if row else None


async def delete_object(conn: asyncpg.Connection, kind: Kind, object_id: str) -> None:
    await conn.execute("DELETE FROM access_objects WHERE kind = $1 AND id = $2", kind, object_id)


async def referrers(conn: asyncpg.Connection, field: str, object_id: str) -> list[str]:
    """Ids of bindings or policy sets naming `object_id` in `field` (a string or a list of strings)."""
    rows = await conn.fetch(
        """SELECT kind || ' ' || id AS referrer FROM access_objects
           WHERE kind IN ('role_binding', 'policy_set')
             AND (document @> jsonb_build_object($1::text, $2::text)
                  OR document @> jsonb_build_object($1::text, jsonb_build_array($2::text)))
           ORDER BY kind, id LIMIT 10""",
        field,
        object_id,
    )
    return [r["referrer"] for r in rows]


async def list_objects(
    conn: asyncpg.Connection,
    kind: Kind,
    *,
    scope: str | None,
    include_parents: bool,
    subject: str | None,
    after_id: str | None,
    limit: int,
) -> list[AccessObject]:
    scopes = (ancestors(scope) if include_parents else [scope]) if scope else None
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM access_objects
            WHERE kind = $1
              AND ($2::text[] IS NULL OR scope = ANY($2))
              AND ($3::text IS NULL OR document ->> 'subject' = $3)
              AND ($4::text IS NULL OR id > $4)
            ORDER BY id LIMIT $5""",
        kind,
        scopes,
        subject,
        after_id,
        limit,
    )
    return [_object(r) for r in rows]


async def all_documents(conn: asyncpg.Connection) -> tuple[int, dict[str, list[Any]]]:
    """Every object's document by kind and the state version they are; call in a repeatable-read transaction."""
    version = await state_version(conn)
    rows = await conn.fetch("SELECT kind, document FROM access_objects ORDER BY version")
    documents: dict[str, list[Any]] = {}
    for row in rows:
        documents.setdefault(row["kind"], []).append(row["document"])
    return version, documents


async def bindings_of(conn: asyncpg.Connection, subject: str) -> list[AccessObject]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM access_objects
            WHERE kind = 'role_binding' AND document ->> 'subject' = $1 ORDER BY id FOR UPDATE""",
        subject,
    )
    return [_object(r) for r in rows]


async def subject_exists(conn: asyncpg.Connection, subject: str) -> bool:
    """Whether `user:<id>`, `group:<id>` or `service_account:<id>` names a principal (locked until commit)."""
    kind, _, principal_id = subject.partition(":")
    table = {"user": "users", "group": "groups", "service_account": "service_accounts"}[kind]
    return bool(await conn.fetchval(f"SELECT 1 FROM {table} WHERE id::text = $1 FOR SHARE", principal_id))


async def principal_graph(conn: asyncpg.Connection) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(`user:<id>` → ids of the groups it is directly in, group id → id of its parent) for a snapshot."""
    memberships: dict[str, list[str]] = {}
    for row in await conn.fetch("SELECT user_id::text AS user_id, group_id::text AS group_id FROM group_members"):
        memberships.setdefault(f"user:{row['user_id']}", []).append(row["group_id"])
    rows = await conn.fetch("SELECT id::text AS id, parent_id::text AS parent FROM groups WHERE parent_id IS NOT NULL")
    return memberships, {row["id"]: [row["parent"]] for row in rows}
