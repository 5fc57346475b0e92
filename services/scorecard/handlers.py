"""Scorecard's durable consumer of every event."""

from __future__ import annotations

from collections.abc import Sequence

from services.scorecard import service
from shared.bus import ConsumerSpec, run_consumer
from shared.events import Event
from shared.service import Deps

SCORECARD_CONSUMER = ConsumerSpec(durable=service.CONSUMER, filter_subject="idp.evt.>", batch_size=500)


async def consume_events(deps: Deps) -> None:
    async def handle(events: Sequence[Event]) -> None:
        await service.observe_events(deps.pool, events)

    await run_consumer(deps.nc, SCORECARD_CONSUMER, handle)
