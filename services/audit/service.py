"""Audit use cases, shared by the HTTP routes and the event consumer."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator, Sequence

import asyncpg
import msgspec

from services.audit import store
from services.audit.model import (
    CSV_COLUMNS,
    ChainVerifier,
    EventPage,
    EventQuery,
    ExportQuery,
    SettingsUpdate,
    SettingsView,
    Stats,
    StatsQuery,
    VerifyResult,
    csv_row,
    link,
    record_from_event,
    view,
)
from shared.authz import Visibility
from shared.cursors import decode_cursor, encode_cursor
from shared.db import transaction
from shared.etag import check_if_match
from shared.events import SYSTEM, Actor, Event, ResourceRef, diff_fields, new_event
from shared.outbox import write_event

SOURCE = "audit"
SETTINGS_RESOURCE = ResourceRef("settings", "audit")


async def append_events(pool: asyncpg.Pool, events: Sequence[Event]) -> int:
    """Persist events not stored yet, in one transaction; returns how many were new."""
    unique = list({e.id: e for e in events}.values())
    async with transaction(pool) as conn:
        head_seq, head_hash = await store.lock_chain_head(conn)
        known = await store.existing_ids(conn, [e.id for e in unique])
        fresh = [record_from_event(e) for e in unique if e.id not in known]
        if not fresh:
            return 0
        linked = link(fresh, head_seq, head_hash)
        await store.insert_records(conn, linked)
        await store.set_chain_head(conn, linked[-1].seq, linked[-1].hash)
    return len(linked)


async def list_events(pool: asyncpg.Pool, query: EventQuery, visible: Visibility) -> EventPage:
    before = decode_cursor(query.cursor, int) if query.cursor else None
    async with pool.acquire() as conn:
        records = await store.list_records(conn, query, visible, before_seq=before, limit=query.limit + 1)
    page = records[: query.limit]
    next_cursor = encode_cursor(page[-1].seq) if len(records) > query.limit else None
    return EventPage(items=[view(r) for r in page], nextCursor=next_cursor)


async def export_events(
    pool: asyncpg.Pool, query: ExportQuery, visible: Visibility, chunk_rows: int = 1000
) -> AsyncIterator[bytes]:
    """Matching events in chain order as JSON lines or CSV, in chunks; memory stays constant."""
    encoder = msgspec.json.Encoder()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if query.format == "csv":
        writer.writerow(CSV_COLUMNS)
    lines: list[bytes] = []
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for record in store.stream_records(conn, query, visible):
            if query.format == "csv":
                writer.writerow(csv_row(record))
            else:
                lines.append(encoder.encode(view(record)) + b"\n")
            if len(lines) >= chunk_rows or buffer.tell() > 256 * 1024:
                yield b"".join(lines) + buffer.getvalue().encode()
                lines.clear()
                buffer.seek(0)
                buffer.truncate()
    yield b"".join(lines) + buffer.getvalue().encode()


async def verify_chain(pool: asyncpg.Pool) -> VerifyResult:
    """Walk the chain from the latest checkpoint on one consistent snapshot."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        head_seq, head_hash = await store.chain_head(conn)
        start_seq, start_hash = await store.latest_checkpoint(conn)
        verifier = ChainVerifier(start_seq, start_hash)
        async for record in store.stream_records(conn, after_seq=start_seq):
            if not verifier.feed(record):
                break
    return verifier.finish(head_seq, head_hash)


async def stats(pool: asyncpg.Pool, query: StatsQuery, visible: Visibility) -> Stats:
    async with pool.acquire() as conn:
        return Stats(items=await store.stats(conn, query.since, query.until, query.type, visible))


async def get_settings(pool: asyncpg.Pool) -> SettingsView:
    async with pool.acquire() as conn:
        return await store.get_settings(conn)


async def update_settings(pool: asyncpg.Pool, actor: Actor, new: SettingsUpdate, if_match: str | None) -> SettingsView:
    """Change retention; the change is itself an event, which this service then records."""
    async with transaction(pool) as conn:
        current = await store.get_settings(conn, lock=True)
        check_if_match(if_match, str(current.version))
        if current.retention_days == new.retention_days:
            return current
        updated = await store.update_settings(conn, new.retention_days)
        await write_event(
            conn,
            new_event(
                "audit.settings.updated",
                source=SOURCE,
                actor=actor,
                resource=SETTINGS_RESOURCE,
                data={
                    "retention_days": updated.retention_days,
                    "changes": diff_fields(
                        {"retention_days": current.retention_days}, {"retention_days": updated.retention_days}
                    ),
                },
            ),
        )
    return updated


async def prune_expired(pool: asyncpg.Pool, now: dt.datetime | None = None) -> int:
    """Apply retention: delete the expired prefix of the chain, checkpoint it, and record that as an event."""
    now = now or dt.datetime.now(dt.UTC)
    async with transaction(pool) as conn:
        retention = (await store.get_settings(conn)).retention_days
        deleted, last_seq = await store.prune_before(conn, now - dt.timedelta(days=retention))
        if deleted:
            await write_event(
                conn,
                new_event(
                    "audit.events.pruned",
                    source=SOURCE,
                    actor=SYSTEM,
                    resource=ResourceRef("chain", "audit"),
                    data={"deleted": deleted, "checkpoint_seq": last_seq, "retention_days": retention},
                ),
            )
    return deleted
