"""Every SQL statement of the scorecard service."""

from __future__ import annotations

import asyncpg

from services.scorecard.model import ConsumerProgress
from shared.events import Event


async def mark_processed(conn: asyncpg.Connection, consumer: str, events: list[Event]) -> list[Event]:
    """Record event ids as processed; returns the events not seen before (idempotency)."""
    rows = await conn.fetch(
        """INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[])
           ON CONFLICT DO NOTHING RETURNING event_id::text""",
        consumer,
        [e.id for e in events],
    )
    fresh = {r["event_id"] for r in rows}
    return [e for e in events if e.id in fresh]


async def record_progress(conn: asyncpg.Connection, consumer: str, last: Event, count: int) -> None:
    await conn.execute(
        """INSERT INTO consumer_progress (consumer, last_event_id, last_event_type, last_event_time, events_seen)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (consumer) DO UPDATE SET last_event_id = $2, last_event_type = $3, last_event_time = $4,
               events_seen = consumer_progress.events_seen + $5, updated_at = now()""",
        consumer,
        last.id,
        last.type,
        last.time,
        count,
    )


async def get_progress(conn: asyncpg.Connection, consumer: str) -> ConsumerProgress | None:
    row = await conn.fetchrow(
        """SELECT consumer, last_event_id::text, last_event_type, last_event_time, events_seen, updated_at
           FROM consumer_progress WHERE consumer = $1""",
        consumer,
    )
    return ConsumerProgress(**dict(row)) if row else None
