"""Transactional outbox (design.md §2).

`write_event` stores an event in the caller's transaction, so the mutation and its event commit or
roll back together. `OutboxRelay` publishes committed rows to JetStream in order, marks them sent only
after JetStream acknowledged them, wakes on NOTIFY and sweeps periodically. A crash at any point can
publish an event twice (JetStream drops the copy by `Nats-Msg-Id`), never lose one.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import msgspec
import nats.errors
from nats.js import JetStreamContext
from opentelemetry import trace

from shared.bus import MSG_ID_HEADER
from shared.events import Event, encode_event
from shared.telemetry import (
    EVENTS_PUBLISHED,
    OUTBOX_PENDING,
    context_from_headers,
    current_trace,
    inject_headers,
    trace_headers,
    tracer,
)

log = logging.getLogger(__name__)


async def write_event(conn: asyncpg.Connection, event: Event) -> Event:
    """Insert `event` into this schema's outbox inside the caller's transaction; returns it as stored.

    The current trace is copied into the envelope when the caller did not set one, so the relay's
    publish and every consumer join the trace of the request that caused the change.
    """
    if not event.trace.traceparent:
        event = msgspec.structs.replace(event, trace=current_trace())
    await conn.execute(
        "INSERT INTO outbox (event_id, subject, payload, headers) VALUES ($1, $2, $3, $4)",
        event.id,
        event.subject,
        encode_event(event),
        trace_headers(event.trace),
    )
    # Delivered at commit only, so the relay never wakes for a rolled-back event.
    await conn.execute("SELECT pg_notify('idp_outbox_' || current_schema(), '')")
    return event


def _outbox_rows(events: list[Event]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    trace_context = current_trace()
    rows = []
    for event in events:
        if not event.trace.traceparent:
            event = msgspec.structs.replace(event, trace=trace_context)
        rows.append((event.id, event.subject, encode_event(event), trace_headers(event.trace)))
    return rows


async def write_events(conn: asyncpg.Connection, events: list[Event]) -> None:
    """Insert many events in one statement (bulk ingestion and sync)."""
    await conn.executemany(
        "INSERT INTO outbox (event_id, subject, payload, headers) VALUES ($1, $2, $3, $4)", _outbox_rows(events)
    )
    await conn.execute("SELECT pg_notify('idp_outbox_' || current_schema(), '')")


async def stage_events(conn: asyncpg.Connection, events: list[Event]) -> None:
    """`write_events` for a long bulk transaction: the events are copied into a temporary table of the transaction
    and `write_staged_events` moves them into the outbox, in order, just before it commits. Until its commit an
    outbox row is invisible but every relay sweep (one a second) steps over it, so 100,000 events written early
    in a minute-long transaction would cost each sweep a walk over all of them."""
    await conn.execute(
        "CREATE TEMPORARY TABLE IF NOT EXISTS staged_outbox (position bigserial, event_id uuid, subject text, "
        "payload bytea, headers text) ON COMMIT DROP"
    )
    # The headers travel as JSON text: COPY's binary format has no use for the pool's text codec for jsonb.
    records = [(*row, msgspec.json.encode(headers).decode()) for *row, headers in _outbox_rows(events)]
    await conn.copy_records_to_table(
        "staged_outbox", records=records, columns=["event_id", "subject", "payload", "headers"]
    )


async def write_staged_events(conn: asyncpg.Connection) -> None:
    """Move the events `stage_events` staged in this transaction into the outbox (nothing if none were)."""
    if await conn.fetchval("SELECT to_regclass('pg_temp.staged_outbox') IS NULL"):
        return
    await conn.execute(
        "INSERT INTO outbox (event_id, subject, payload, headers) "
        "SELECT event_id, subject, payload, headers::jsonb FROM pg_temp.staged_outbox ORDER BY position"
    )
    await conn.execute("DROP TABLE pg_temp.staged_outbox")
    await conn.execute("SELECT pg_notify('idp_outbox_' || current_schema(), '')")


class OutboxRelay:
    """Publishes one schema's outbox. Replicas may all run one: an advisory lock lets one publish at a time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        service: str,
        *,
        batch_size: int = 1000,
        sweep_interval: float = 1.0,
        publish_timeout: float = 10.0,
        keep_sent_seconds: float = 3600.0,
    ) -> None:
        self.pool = pool
        self.js = js
        self.service = service
        self.batch_size = batch_size
        self.sweep_interval = sweep_interval
        self.publish_timeout = publish_timeout
        self.keep_sent_seconds = keep_sent_seconds
        self._wake = asyncio.Event()
        self._channel = ""

    async def run(self) -> None:
        """Relay until cancelled; errors (NATS or PostgreSQL down) back off and retry."""
        backoff = 0.1
        listener: asyncpg.Connection | None = None
        last_cleanup = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        listener = await self._listen()
                    # Cleared before reading, so a notification that arrives while a batch is being
                    # published wakes the next round instead of waiting for the sweep.
                    self._wake.clear()
                    while await self.publish_pending() == self.batch_size:
                        pass
                    if loop.time() - last_cleanup > 60:
                        await self._cleanup_and_measure()
                        last_cleanup = loop.time()
                    backoff = 0.1
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    nats.errors.Error,
                    RelayPublishError,
                ) as exc:
                    log.warning("outbox relay %s: %s; retrying in %.1fs", self.service, exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                try:
                    await asyncio.wait_for(self._wake.wait(), self.sweep_interval)
                except TimeoutError:
                    pass
        finally:
            if listener is not None and not listener.is_closed():
                await listener.remove_listener(self._channel, self._on_notify)
                await self.pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _listen(self) -> asyncpg.Connection:
        conn = await self.pool.acquire()
        try:
            self._channel = "idp_outbox_" + await conn.fetchval("SELECT current_schema()")
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:  # cancelled at start-up too: the pool must get its connection back
            await self.pool.release(conn)
            raise
        return conn

    async def publish_pending(self) -> int:
        """Publish one batch of pending rows in order; returns how many were sent."""
        async with self.pool.acquire() as conn, conn.transaction():
            got_lock = await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtext('idp-outbox:' || current_schema()))"
            )
            if not got_lock:
                return 0
            rows = await conn.fetch(
                "SELECT seq, event_id, subject, payload, headers FROM outbox "
                "WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
                self.batch_size,
            )
            if not rows:
                return 0
            sent = await self._publish(rows)
            await conn.execute("UPDATE outbox SET sent_at = now() WHERE seq = ANY($1::bigint[])", sent)
        EVENTS_PUBLISHED.labels(self.service).inc(len(sent))
        if len(sent) < len(rows):
            raise RelayPublishError(f"{len(rows) - len(sent)} of {len(rows)} events were not acknowledged")
        return len(sent)

    async def _publish(self, rows: list[asyncpg.Record]) -> list[int]:
        """Pipeline the batch and wait for all acks; returns the seqs JetStream acknowledged."""
        spans, futures = [], []
        try:
            for row in rows:
                span = tracer.start_span(
                    f"publish {row['subject']}",
                    context=context_from_headers(row["headers"]),
                    kind=trace.SpanKind.PRODUCER,
                    attributes={
                        "messaging.destination.name": row["subject"],
                        "messaging.message.id": str(row["event_id"]),
                    },
                )
                spans.append(span)
                headers = {MSG_ID_HEADER: str(row["event_id"])}
                with trace.use_span(span):
                    inject_headers(headers)
                futures.append(await self.js.publish_async(row["subject"], row["payload"], headers=headers))
            done, pending = await asyncio.wait(futures, timeout=self.publish_timeout)
            for future in pending:
                future.cancel()
            return [
                row["seq"]
                for row, future in zip(rows, futures, strict=False)
                if future in done and future.exception() is None
            ]
        finally:
            for span in spans:
                span.end()

    async def _cleanup_and_measure(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)", self.keep_sent_seconds
            )
            pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        OUTBOX_PENDING.labels(self.service).set(pending)


class RelayPublishError(Exception):
    """JetStream did not acknowledge part of a batch; the rows stay pending and are retried."""
