"""Scorecard use cases."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.scorecard import store
from services.scorecard.model import ConsumerProgress
from shared.db import transaction
from shared.errors import NotFoundError
from shared.events import Event

CONSUMER = "scorecard"


async def observe_events(pool: asyncpg.Pool, events: Sequence[Event]) -> int:
    """Note each new event once; returns how many were new. Scoring will hang off this."""
    async with transaction(pool) as conn:
        fresh = await store.mark_processed(conn, CONSUMER, list(events))
        if fresh:
            await store.record_progress(conn, CONSUMER, fresh[-1], len(fresh))
    return len(fresh)


async def consumer_progress(pool: asyncpg.Pool) -> ConsumerProgress:
    async with pool.acquire() as conn:
        progress = await store.get_progress(conn, CONSUMER)
    if progress is None:
        raise NotFoundError("the scorecard consumer has not processed any event yet")
    return progress
