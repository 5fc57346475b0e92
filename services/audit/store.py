"""Every SQL statement of the audit service. Functions take a connection; callers own transactions."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from services.audit.model import AuditRecord, EventFilter, SettingsView, StatsRow
from shared.authz import EVERYTHING, Visibility, visibility_condition
from shared.db import like_escape

_RECORD_COLUMNS = (
    "seq, id::text AS id, type, source, time, actor_kind, actor_id, scope, resource_kind, resource_id, "
    "trace_id, data, schema, hash"
)


def _record(row: asyncpg.Record) -> AuditRecord:
    return AuditRecord(**dict(row))


async def lock_chain_head(conn: asyncpg.Connection) -> tuple[int, bytes]:
    """The chain head, locked until the transaction ends: appends and pruning queue behind it."""
    row = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1 FOR UPDATE")
    return row["seq"], bytes(row["hash"])


async def chain_head(conn: asyncpg.Connection) -> tuple[int, bytes]:
    row = await conn.fetchrow("SELECT seq, hash FROM chain_head WHERE id = 1")
    return row["seq"], bytes(row["hash"])


async def set_chain_head(conn: asyncpg.Connection, seq: int, hash_: bytes) -> None:
    await conn.execute("UPDATE chain_head SET seq = $1, hash = $2 WHERE id = 1", seq, hash_)


async def existing_ids(conn: asyncpg.Connection, ids: list[str]) -> set[str]:
    rows = await conn.fetch("SELECT id::text FROM events WHERE id = ANY($1::uuid[])", ids)
    return {r["id"] for r in rows}


async def insert_records(conn: asyncpg.Connection, records: list[AuditRecord]) -> None:
    columns = list(
        zip(
            *(
                (
                    r.seq,
                    r.id,
                    r.type,
                    r.source,
                    r.time,
                    r.actor_kind,
                    r.actor_id,
                    r.scope,
                    r.resource_kind,
                    r.resource_id,
                    r.trace_id,
                    r.data,
                    r.schema,
                    r.hash,
                )
                for r in records
            ),
            strict=True,
        )
    )
    await conn.execute(
        """INSERT INTO events (seq, id, type, source, time, actor_kind, actor_id, scope, resource_kind,
                               resource_id, trace_id, data, schema, hash)
           SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[],
                                $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
                                $12::jsonb[], $13::int[], $14::bytea[])""",
        *columns,
    )


def _where(f: EventFilter, args: list[Any], visible: Visibility = EVERYTHING) -> str:
    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    clauses = [] if visible.everything else [visibility_condition(visible, "scope", arg)]

    if f.actor is not None:
        clauses.append(f"actor_id = {arg(f.actor)}")
    if f.type is not None:
        clauses.append(f"(type = {arg(f.type)} OR type LIKE {arg(like_escape(f.type.rstrip('.')) + '.%')})")
    if f.resource_kind is not None:
        clauses.append(f"resource_kind = {arg(f.resource_kind)}")
    if f.resource_id is not None:
        clauses.append(f"resource_id = {arg(f.resource_id)}")
    if f.scope is not None:
        if f.include_subscopes:
            clauses.append(f"(scope = {arg(f.scope)} OR scope LIKE {arg(like_escape(f.scope) + '.%')})")
        else:
            clauses.append(f"scope = {arg(f.scope)}")
    if f.since is not None:
        clauses.append(f"time >= {arg(f.since)}")
    if f.until is not None:
        clauses.append(f"time < {arg(f.until)}")
    if f.trace_id is not None:
        clauses.append(f"trace_id = {arg(f.trace_id)}")
    return " AND ".join(clauses) or "TRUE"


async def list_records(
    conn: asyncpg.Connection, f: EventFilter, visible: Visibility, *, before_seq: int | None, limit: int
) -> list[AuditRecord]:
    """Newest first (by chain position), `limit` records strictly before `before_seq`."""
    args: list[Any] = []
    where = _where(f, args, visible)
    if before_seq is not None:
        args.append(before_seq)
        where += f" AND seq < ${len(args)}"
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {_RECORD_COLUMNS} FROM events WHERE {where} ORDER BY seq DESC LIMIT ${len(args)}", *args
    )
    return [_record(r) for r in rows]


async def stream_records(
    conn: asyncpg.Connection,
    f: EventFilter | None = None,
    visible: Visibility = EVERYTHING,
    *,
    after_seq: int = 0,
    prefetch: int = 2000,
) -> AsyncIterator[AuditRecord]:
    """All matching records in chain order through a server-side cursor (needs a transaction)."""
    args: list[Any] = [after_seq]
    where = "seq > $1"
    if f is not None:
        where += " AND " + _where(f, args, visible)
    # Explicit fetches rather than `async for` over the cursor: the asyncpg instrumentation makes a span per
    # `__anext__`, i.e. per row, but one per fetch.
    cursor = await conn.cursor(f"SELECT {_RECORD_COLUMNS} FROM events WHERE {where} ORDER BY seq", *args)
    while rows := await cursor.fetch(prefetch):
        for row in rows:
            yield _record(row)


async def latest_checkpoint(conn: asyncpg.Connection) -> tuple[int, bytes]:
    row = await conn.fetchrow("SELECT seq, hash FROM checkpoints ORDER BY seq DESC LIMIT 1")
    return (row["seq"], bytes(row["hash"])) if row else (0, b"")


async def prune_before(conn: asyncpg.Connection, cutoff: dt.datetime) -> tuple[int, int]:
    """Delete the longest chain prefix older than `cutoff` and checkpoint its end.

    Returns (records deleted, last pruned seq). Only a prefix is cut, so the rest still verifies from the
    checkpoint; a late-arriving old event behind a newer one waits for the next run.
    """
    head_seq, _ = await lock_chain_head(conn)
    checkpoint_seq, _ = await latest_checkpoint(conn)
    first_kept = await conn.fetchval("SELECT min(seq) FROM events WHERE time >= $1", cutoff)
    last_pruned = (first_kept - 1) if first_kept is not None else head_seq
    if last_pruned <= checkpoint_seq:
        return 0, checkpoint_seq
    hash_ = await conn.fetchval("SELECT hash FROM events WHERE seq = $1", last_pruned)
    deleted = await conn.execute("DELETE FROM events WHERE seq <= $1", last_pruned)
    count = int(deleted.split()[-1])
    await conn.execute("INSERT INTO checkpoints (seq, hash, pruned) VALUES ($1, $2, $3)", last_pruned, hash_, count)
    return count, last_pruned


async def stats(
    conn: asyncpg.Connection,
    since: dt.datetime | None,
    until: dt.datetime | None,
    type_prefix: str | None,
    visible: Visibility,
) -> list[StatsRow]:
    args: list[Any] = []
    f = EventFilter(since=since, until=until, type=type_prefix)
    rows = await conn.fetch(
        f"""SELECT (time AT TIME ZONE 'UTC')::date AS day, type, count(*) AS count
            FROM events WHERE {_where(f, args, visible)} GROUP BY 1, 2 ORDER BY 1 DESC, 3 DESC, 2""",
        *args,
    )
    return [StatsRow(day=r["day"], type=r["type"], count=r["count"]) for r in rows]


async def get_settings(conn: asyncpg.Connection, *, lock: bool = False) -> SettingsView:
    row = await conn.fetchrow(
        "SELECT retention_days, version, updated_at FROM settings WHERE id = 1" + (" FOR UPDATE" if lock else "")
    )
    return SettingsView(**dict(row))


async def update_settings(conn: asyncpg.Connection, retention_days: int) -> SettingsView:
    row = await conn.fetchrow(
        """UPDATE settings SET retention_days = $1, version = version + 1, updated_at = now()
           WHERE id = 1 RETURNING retention_days, version, updated_at""",
        retention_days,
    )
    return SettingsView(**dict(row))
