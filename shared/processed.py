"""Idempotent consumers: the event ids a consumer has applied, in its service's `processed_events` table."""

from __future__ import annotations

import asyncpg

from shared.events import Event


async def mark_processed(conn: asyncpg.Connection, consumer: str, events: list[Event]) -> list[Event]:
    """Record the events as applied by `consumer` in the caller's transaction; returns those not seen before."""
    rows = await conn.fetch(
        """INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[])
           ON CONFLICT DO NOTHING RETURNING event_id::text""",
        consumer,
        [e.id for e in events],
    )
    fresh = {r["event_id"] for r in rows}
    return [e for e in events if e.id in fresh]
