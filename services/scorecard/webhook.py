"""Webhook deliveries of triggered alerts: durable, retried, visible.

A delivery is a row written in the transaction that records the alerts, so it survives a crash (design: the same
reasoning as the outbox). Attempts are claimed from the table (a lease, so replicas never send one at the same
time), POST `{"alerts": [...]}` with `X-IDP-Delivery: <id>` (receivers deduplicate by it: a crash between sending and
recording can repeat an attempt), and are retried with exponential backoff and jitter on 5xx, 408, 429, connection
errors and timeouts, never on other 4xx (the receiver refused the request; sending it again changes nothing). A
delivery that exhausts its attempts, or is refused, is `failed` with its last error, announced by
`scorecard.alert_delivery.failed`, listed by `GET /api/scorecard/alert-deliveries` and may be sent again
(`POST …/{id}/retry`), as GitHub's and Stripe's webhook logs allow.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import msgspec
from yarl import URL

from services.scorecard import store
from services.scorecard.model import AlertDelivery, AlertDeliveryPage, AlertDeliveryQuery, retry_delay
from shared.cursors import decode_cursor, encode_cursor
from shared.db import transaction
from shared.errors import ConflictError, NotFoundError
from shared.events import SYSTEM, Actor, ResourceRef, new_event, new_event_id
from shared.outbox import write_event

log = logging.getLogger(__name__)
SOURCE = "scorecard"
RETRYABLE_STATUSES = frozenset({408, 429})
"""4xx answers that mean "later", retried like 5xx."""
KEEP_DELIVERED = dt.timedelta(days=30)
_encode = msgspec.json.encode


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    backoff_seconds: float = 5.0
    """Delay after the first failed attempt; it doubles after each one (with jitter)."""
    max_backoff_seconds: float = 600.0
    timeout_seconds: float = 10.0
    """Time allowed for one attempt."""


DEFAULT_POLICY = RetryPolicy()


async def queue(conn: asyncpg.Connection, url: str, alerts: list[Any]) -> str:
    """A delivery of `alerts` to `url`, written in the caller's transaction."""
    delivery_id = new_event_id()
    await store.insert_delivery(conn, delivery_id, url, {"alerts": msgspec.to_builtins(alerts)})
    return delivery_id


async def deliver_due(pool: asyncpg.Pool, policy: RetryPolicy, limit: int = 20) -> int:
    """Attempt the due deliveries once each (at most `limit`); returns how many were attempted."""
    async with pool.acquire() as conn:
        claimed = await store.claim_deliveries(conn, limit, policy.timeout_seconds + 30)
    if not claimed:
        return 0
    timeout = aiohttp.ClientTimeout(total=policy.timeout_seconds)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        answers = await asyncio.gather(*(_attempt(session, row, policy) for row in claimed))
    async with transaction(pool) as conn:
        for row, (status, error) in zip(claimed, answers, strict=True):
            await _record(conn, policy, row, status, error)
    return len(claimed)


async def _attempt(
    session: aiohttp.ClientSession, row: asyncpg.Record, policy: RetryPolicy
) -> tuple[int | None, str | None]:
    """The answer's status and, unless it was a 2xx, what went wrong."""
    headers = {"Content-Type": "application/json", "X-IDP-Delivery": row["id"]}
    try:
        async with session.post(row["url"], data=_encode(row["payload"]), headers=headers) as response:
            ok = 200 <= response.status < 300
            return response.status, None if ok else f"HTTP {response.status} {response.reason or ''}".strip()
    except TimeoutError:
        return None, f"no answer within {policy.timeout_seconds:g}s"
    except aiohttp.ClientError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:500]


def _retryable(status: int | None) -> bool:
    return status is None or status >= 500 or status in RETRYABLE_STATUSES


async def _record(
    conn: asyncpg.Connection, policy: RetryPolicy, row: asyncpg.Record, status: int | None, error: str | None
) -> None:
    if error is None:
        await store.finish_delivery(conn, row["id"], "delivered", status, None)
        return
    if _retryable(status) and row["attempts"] < policy.max_attempts:
        delay = retry_delay(row["attempts"], policy.backoff_seconds, policy.max_backoff_seconds, random.random())
        await store.retry_delivery_later(conn, row["id"], status, error, delay)
        log.warning(
            "alert webhook delivery %s attempt %d failed (%s); next in %.1fs", row["id"], row["attempts"], error, delay
        )
        return
    await store.finish_delivery(conn, row["id"], "failed", status, error)
    log.error("alert webhook delivery %s failed after %d attempts: %s", row["id"], row["attempts"], error)
    data = {"attempts": row["attempts"], "last_status": status, "last_error": error}
    await write_event(conn, _delivery_event("failed", SYSTEM, row, data))


def _delivery_event(verb: str, actor: Actor, row: asyncpg.Record, data: dict[str, Any]):
    alerts = row["payload"].get("alerts", [])
    return new_event(
        f"scorecard.alert_delivery.{verb}",
        source=SOURCE,
        actor=actor,
        resource=ResourceRef("alert_delivery", row["id"]),
        data={"destination": destination(row["url"]), "rules": sorted({a["rule"] for a in alerts}), **data},
    )


def destination(url: str) -> str:
    """Scheme and host of a webhook URL: its path and query may be the secret (Slack-style URLs)."""
    parsed = URL(url)
    return str(parsed.origin()) if parsed.absolute else "(invalid URL)"


def view(row: asyncpg.Record) -> AlertDelivery:
    return msgspec.convert(
        {**row, "destination": destination(row["url"]), "alerts": row["payload"].get("alerts", [])}, AlertDelivery
    )


async def seconds_until_due(pool: asyncpg.Pool) -> float | None:
    """Until the next pending delivery is due (0 when one is); None when none is pending."""
    async with pool.acquire() as conn:
        due = await store.next_delivery_due(conn)
    return None if due is None else max(0.0, (due - dt.datetime.now(dt.UTC)).total_seconds())


async def prune(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await store.prune_deliveries(conn, dt.datetime.now(dt.UTC) - KEEP_DELIVERED)


async def list_deliveries(pool: asyncpg.Pool, query: AlertDeliveryQuery) -> AlertDeliveryPage:
    after = None if query.cursor is None else str(decode_cursor(query.cursor, uuid.UUID))
    async with pool.acquire() as conn:
        rows = await store.list_deliveries(conn, query.status, after, query.limit + 1)
    items = [view(r) for r in rows[: query.limit]]
    return AlertDeliveryPage(items, encode_cursor(items[-1].id) if len(rows) > query.limit else None)


def _known_id(delivery_id: str) -> str:
    try:
        return str(uuid.UUID(delivery_id))
    except ValueError:
        raise NotFoundError(f"no alert delivery {delivery_id}") from None


async def get_delivery(pool: asyncpg.Pool, delivery_id: str) -> AlertDelivery:
    delivery_id = _known_id(delivery_id)
    async with pool.acquire() as conn:
        row = await store.get_delivery(conn, delivery_id)
    if row is None:
        raise NotFoundError(f"no alert delivery {delivery_id}")
    return view(row)


async def retry(pool: asyncpg.Pool, actor: Actor, delivery_id: str, policy: RetryPolicy) -> AlertDelivery:
    """Send a finished delivery again, now, with a fresh set of attempts; the answer is the first attempt's."""
    delivery_id = _known_id(delivery_id)
    async with transaction(pool) as conn:
        row = await store.get_delivery(conn, delivery_id, lock=True)
        if row is None:
            raise NotFoundError(f"no alert delivery {delivery_id}")
        if row["status"] == "pending":
            raise ConflictError(f"alert delivery {delivery_id} is still pending")
        row = await store.requeue_delivery(conn, delivery_id)
        await write_event(conn, _delivery_event("requeued", actor, row, {}))
    await deliver_due(pool, policy)
    return await get_delivery(pool, delivery_id)
