"""Scorecard's background work: the durable consumer of every event, the evaluation jobs, and the schedule."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from services.scorecard import alerts, service, webhook
from services.scorecard.rules import FileSource
from shared.bus import ConsumerSpec, run_consumer
from shared.errors import ServiceUnavailableError
from shared.events import Event
from shared.service import Deps

log = logging.getLogger(__name__)

SCORECARD_CONSUMER = ConsumerSpec(durable=service.CONSUMER, filter_subject="idp.evt.>", batch_size=500)


async def consume_events(deps: Deps, files: FileSource | None) -> None:
    async def handle(events: Sequence[Event]) -> None:
        await service.observe_events(deps.pool, deps.nc, events, files)

    await run_consumer(deps.nc, SCORECARD_CONSUMER, handle)


def _honour_cancellation() -> None:
    """Python 3.11's `asyncio.wait_for` (inside nats-py's request) can swallow a cancellation; re-raise it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def run_jobs(deps: Deps, files: FileSource | None, idle_wait: float = 0.5) -> None:
    """Run queued scorecard evaluations one after another; errors are logged and the job retried later."""
    while True:
        _honour_cancellation()
        try:
            if await service.run_pending_jobs(deps.pool, files):
                continue
        except Exception:
            log.exception("scorecard evaluation job failed; it will be retried")
        await asyncio.sleep(idle_wait)


async def sync_and_schedule(deps: Deps, files: FileSource | None, interval: float, stale_wait: float = 5.0) -> None:
    """At start, catch up with the catalog (entities it had before this service saw their events). Then read
    again entities whose change came while the catalog was away, and queue the time- and file-dependent
    checks every `interval` seconds."""
    loop = asyncio.get_running_loop()
    while True:
        _honour_cancellation()
        try:
            changed, gone = await service.sync_entities(deps.pool, deps.nc)
            log.info("synced entities from the catalog: %d changed, %d gone", len(changed), gone)
            if changed:
                await service.evaluate_entities(deps.pool, files, uids=changed)
            break
        except ServiceUnavailableError as exc:
            log.warning("catalog not reachable for the initial sync (%s); retrying", exc)
            await asyncio.sleep(stale_wait)
    scheduled = loop.time()
    while True:
        _honour_cancellation()
        await asyncio.sleep(stale_wait)
        try:
            while await service.refresh_stale(deps.pool, deps.nc, files):
                pass
            if loop.time() - scheduled >= interval:
                scheduled = loop.time()
                await service.schedule_clock_checks(deps.pool)
        except ServiceUnavailableError as exc:
            log.warning("catalog not reachable (%s); stale entities wait", exc)
        except Exception:
            log.exception("refreshing stale entities or scheduling checks failed; retrying")


async def evaluate_alerts_periodically(
    deps: Deps, webhook_url: str | None, policy: webhook.RetryPolicy, interval: float, idle_wait: float = 60.0
) -> None:
    """Alert rules every `interval`; between evaluations, webhook deliveries as their retries fall due (and at least
    every `idle_wait`, for deliveries another replica left behind)."""
    loop = asyncio.get_running_loop()
    next_evaluation = loop.time() + interval
    while True:
        _honour_cancellation()
        try:
            due = await webhook.seconds_until_due(deps.pool)
            await asyncio.sleep(max(0.0, min(next_evaluation - loop.time(), idle_wait if due is None else due)))
            if loop.time() >= next_evaluation:
                next_evaluation = loop.time() + interval
                triggered = await alerts.evaluate_alerts(deps.pool, webhook_url, policy=policy)
                if triggered:
                    log.info("%d scorecard alerts triggered", len(triggered))
                await webhook.prune(deps.pool)
            while await webhook.deliver_due(deps.pool, policy):
                pass
        except Exception:
            log.exception("evaluating alert rules or delivering alerts failed; retrying")
            await asyncio.sleep(1)
