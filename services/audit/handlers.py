"""Audit's bus consumers: every event of the suite, and the retention schedule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.audit import service
from shared.bus import ConsumerSpec, run_consumer
from shared.events import Event
from shared.service import Deps

log = logging.getLogger(__name__)

AUDIT_CONSUMER = ConsumerSpec(durable="audit", filter_subject="idp.evt.>", batch_size=1000)


async def consume_events(deps: Deps) -> None:
    async def handle(events: Sequence[Event]) -> None:
        await service.append_events(deps.pool, events)

    await run_consumer(deps.nc, AUDIT_CONSUMER, handle)


async def prune_periodically(deps: Deps) -> None:
    while True:
        try:
            deleted = await service.prune_expired(deps.pool)
            if deleted:
                log.info("retention pruned %d audit records", deleted)
        except Exception:
            log.exception("retention pruning failed; retrying next interval")
        await asyncio.sleep(deps.settings.prune_interval_seconds)
