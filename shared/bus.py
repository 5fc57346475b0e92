"""NATS JetStream: connection, streams, event publishing, durable consumers and request/reply.

Streams (design.md §2): `IDP_EVENTS` holds every event under `idp.evt.>`; `IDP_WORK` is the work queue
`idp.work.>`; `IDP_DLQ` keeps poison messages under `idp.dlq.<consumer>` so they stay visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry import trace

from shared.errors import ERRORS_BY_STATUS, InputError, ProblemError, ServiceUnavailableError
from shared.events import Event, decode_event, encode_event
from shared.telemetry import EVENTS_CONSUMED, context_from_headers, inject_headers, tracer

log = logging.getLogger(__name__)

EVENTS_STREAM = "IDP_EVENTS"
WORK_STREAM = "IDP_WORK"
DLQ_STREAM = "IDP_DLQ"
MSG_ID_HEADER = "Nats-Msg-Id"
STATUS_HEADER = "Status"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"
_DAY = 24 * 3600.0


def stream_configs(replicas: int) -> list[StreamConfig]:
    """The suite's streams. Events are kept 30 days; the dedupe window covers relay retries."""
    return [
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=["idp.evt.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            max_age=30 * _DAY,
            duplicate_window=120.0,
            num_replicas=replicas,
            discard=DiscardPolicy.OLD,
        ),
        StreamConfig(
            name=WORK_STREAM,
            subjects=["idp.work.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=120.0,
            num_replicas=replicas,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=["idp.dlq.>"],
            storage=StorageType.FILE,
            retention=RetentionPolicy.LIMITS,
            max_age=90 * _DAY,
            num_replicas=replicas,
        ),
    ]


async def connect(url: str, name: str) -> NatsClient:
    """Connect with unlimited reconnects; the relay and consumers ride out a NATS restart."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=[s.strip() for s in url.split(",") if s.strip()],
        name=name,
        connect_timeout=5,
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        ping_interval=10,
        max_outstanding_pings=3,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    """Create the suite's streams, or update them to the current config; safe to run concurrently."""
    for config in stream_configs(replicas):
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != 10058:  # "stream name already in use with a different configuration"
                raise
            await js.update_stream(config)


def event_headers(event: Event, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {MSG_ID_HEADER: event.id, **(extra or {})}


async def publish_event(js: JetStreamContext, event: Event, timeout: float = 5.0) -> None:
    """Publish one event directly (not through an outbox), deduplicated by its id."""
    with tracer.start_as_current_span(f"publish {event.subject}", kind=trace.SpanKind.PRODUCER):
        await js.publish(
            event.subject, encode_event(event), timeout=timeout, headers=event_headers(event, inject_headers())
        )


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer of one stream."""

    durable: str
    filter_subject: str
    stream: str = EVENTS_STREAM
    max_deliver: int = 5
    """Deliveries before a failing message is moved to `idp.dlq.<durable>`."""
    batch_size: int = 256
    ack_wait: float = 30.0
    retry_delay: float = 1.0

    @property
    def dlq_subject(self) -> str:
        return f"idp.dlq.{self.durable}"


BatchHandler = Callable[[Sequence[Event]], Awaitable[None]]


async def run_consumer(nc: NatsClient, spec: ConsumerSpec, handle: BatchHandler) -> None:
    """Fetch, handle and ack forever (until cancelled).

    `handle` gets a batch and must apply it in one transaction, idempotently by event id. If the batch
    fails, each message is retried alone so one poison message cannot hold back the others; a message
    that cannot be decoded, or fails `max_deliver` times, goes to the dead-letter subject and is
    terminated. Acks happen only after `handle` returns, i.e. after its commit.
    """
    config = ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait,
        # A backstop above our own bound, for a message that crashes the process before it can be moved.
        max_deliver=spec.max_deliver + 3,
        filter_subject=spec.filter_subject,
        max_ack_pending=spec.batch_size * 8,
    )
    js = nc.jetstream()
    # Create or update: the server keeps the durable's position when an editable setting changes.
    await js.add_consumer(spec.stream, config)
    puller = PullBatches(nc, spec.stream, spec.durable)
    await puller.start()
    task = asyncio.current_task()
    try:
        while True:
            if task is not None and task.cancelling():
                # Python 3.11's asyncio.wait_for can swallow a cancellation; honour it here.
                raise asyncio.CancelledError
            try:
                messages = await puller.fetch(spec.batch_size, wait=1.0)
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as exc:
                log.warning("consumer %s fetch failed: %s", spec.durable, exc)
                await asyncio.sleep(spec.retry_delay)
                continue
            if messages:
                await _process_batch(js, spec, handle, messages)
    finally:
        await puller.stop()


class PullBatches:
    """Batches from a durable pull consumer: one pull request per batch, messages collected by a callback.

    nats-py's `fetch` awaits every message through its own `asyncio.wait_for` (a task per message), which
    was a fifth of audit's CPU at thousands of events a second. Here a subscription callback appends to a
    list and one event says the request is over: the batch is complete, or JetStream sent a status
    (404 no messages, 408 request expired, 409 ...). Messages that arrive late, from an abandoned request,
    are kept for the next batch; an unacknowledged message is redelivered after `ack_wait` in any case.
    """

    def __init__(self, nc: NatsClient, stream: str, durable: str) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._received: list[Msg] = []
        self._wanted = 0
        self._request_over = asyncio.Event()
        self._subscription: Any = None

    async def start(self) -> None:
        self._subscription = await self._nc.subscribe(self._inbox, cb=self._on_message)

    async def stop(self) -> None:
        if self._subscription is not None and not self._nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS_HEADER) if msg.headers else None
        if status is None:
            self._received.append(msg)
            if len(self._received) >= self._wanted:
                self._request_over.set()
        elif status != "100":  # 100 is an idle heartbeat; anything else ends the request
            self._request_over.set()

    async def fetch(self, batch: int, wait: float) -> list[Msg]:
        """What is available now, up to `batch`; when nothing is, the first message within `wait` seconds."""
        if not self._received:
            await self._pull(batch, {"batch": batch, "no_wait": True}, wait)
        if not self._received:
            # Ask for one: a request for a whole batch would hold a trickle of events until it filled up.
            await self._pull(1, {"batch": 1, "expires": int(wait * 1e9)}, wait + 1.0)
        messages, self._received = self._received, []
        return messages

    async def _pull(self, wanted: int, request: dict[str, Any], timeout: float) -> None:
        self._wanted = len(self._received) + wanted
        self._request_over.clear()
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=self._inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._request_over.wait(), timeout)


async def _process_batch(js: JetStreamContext, spec: ConsumerSpec, handle: BatchHandler, messages: list[Msg]) -> None:
    decoded: list[tuple[Msg, Event]] = []
    for msg in messages:
        try:
            decoded.append((msg, decode_event(msg.data)))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "consumer %s: undecodable message on %s: %s; raw=%r", spec.durable, msg.subject, exc, msg.data[:512]
            )
            await _dead_letter(js, spec, msg, f"undecodable: {exc}")
    if not decoded:
        return
    spans = [
        tracer.start_span(
            f"consume {msg.subject}",
            context=context_from_headers(msg.headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={"messaging.consumer.group.name": spec.durable, "messaging.message.id": event.id},
        )
        for msg, event in decoded
    ]
    try:
        try:
            await handle([event for _, event in decoded])
        except Exception as exc:
            if len(decoded) == 1:
                await _retry_or_dead_letter(js, spec, decoded[0][0], exc)
                return
            log.warning("consumer %s: batch of %d failed (%s); retrying one by one", spec.durable, len(decoded), exc)
            for msg, event in decoded:
                await _handle_one(js, spec, handle, msg, event)
            return
        for msg, _ in decoded:
            await msg.ack()
        EVENTS_CONSUMED.labels(spec.durable, "ok").inc(len(decoded))
    finally:
        for span in spans:
            span.end()


async def _handle_one(js: JetStreamContext, spec: ConsumerSpec, handle: BatchHandler, msg: Msg, event: Event) -> None:
    try:
        await handle([event])
    except Exception as exc:
        await _retry_or_dead_letter(js, spec, msg, exc)
        return
    await msg.ack()
    EVENTS_CONSUMED.labels(spec.durable, "ok").inc()


async def _retry_or_dead_letter(js: JetStreamContext, spec: ConsumerSpec, msg: Msg, exc: Exception) -> None:
    deliveries = msg.metadata.num_delivered or 1
    if deliveries >= spec.max_deliver:
        log.error("consumer %s: giving up on %s after %d deliveries: %s", spec.durable, msg.subject, deliveries, exc)
        await _dead_letter(js, spec, msg, f"failed {deliveries} times: {exc}")
        return
    log.warning("consumer %s: %s failed (delivery %d): %s", spec.durable, msg.subject, deliveries, exc)
    EVENTS_CONSUMED.labels(spec.durable, "retried").inc()
    await msg.nak(delay=spec.retry_delay * deliveries)


async def _dead_letter(js: JetStreamContext, spec: ConsumerSpec, msg: Msg, reason: str) -> None:
    headers = {
        "Idp-Original-Subject": msg.subject,
        "Idp-Dead-Letter-Reason": reason[:1000].replace("\r", " ").replace("\n", " "),
        "Idp-Deliveries": str(msg.metadata.num_delivered or 1),
        "Idp-Stream-Sequence": str(msg.metadata.sequence.stream if msg.metadata.sequence else 0),
    }
    await js.publish(spec.dlq_subject, msg.data, headers=headers)
    await msg.term()
    EVENTS_CONSUMED.labels(spec.durable, "dead_lettered").inc()


class DeadLetter(msgspec.Struct, frozen=True):
    """A message a consumer gave up on, as kept on `idp.dlq.<consumer>`."""

    sequence: int
    """Its sequence in the dead-letter stream (page with `after`)."""
    original_subject: str
    reason: str
    deliveries: int
    time: dt.datetime | None
    payload: str
    """The message as received (decoded as UTF-8 with replacements; at most 4 kB)."""


async def read_dead_letters(js: JetStreamContext, durable: str, after: int = 0, limit: int = 100) -> list[DeadLetter]:
    """A consumer's dead letters in order, those after stream sequence `after`, at most `limit`."""
    letters: list[DeadLetter] = []
    subject = f"idp.dlq.{durable}"
    while len(letters) < limit:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq=after + 1, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        headers = msg.headers or {}
        letters.append(
            DeadLetter(
                sequence=msg.seq or 0,
                original_subject=headers.get("Idp-Original-Subject", ""),
                reason=headers.get("Idp-Dead-Letter-Reason", ""),
                deliveries=int(headers.get("Idp-Deliveries", "0") or 0),
                time=msg.time,
                payload=(msg.data or b"")[:4096].decode("utf-8", "replace"),
            )
        )
        after = msg.seq or after + 1
    return letters


# --- request/reply -------------------------------------------------------------------------------------

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


def rpc_subject(service: str, method: str) -> str:
    return f"idp.rpc.{service}.{method}"


async def serve_rpc(
    nc: NatsClient,
    service: str,
    method: str,
    request_type: type[RequestT],
    handler: Callable[[RequestT], Awaitable[Any]],
) -> Any:
    """Answer `idp.rpc.<service>.<method>` in a queue group; errors travel as `ProblemError` headers."""
    subject = rpc_subject(service, method)
    decoder = msgspec.json.Decoder(request_type)

    async def on_request(msg: Msg) -> None:
        with tracer.start_as_current_span(
            f"rpc {subject}", context=context_from_headers(msg.headers), kind=trace.SpanKind.SERVER
        ):
            try:
                try:
                    request = decoder.decode(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    raise InputError(str(exc)) from exc
                reply = msgspec.json.encode(await handler(request))
                await msg.respond(reply)
            except ProblemError as exc:
                await nc.publish(msg.reply, b"", headers={ERROR_CODE_HEADER: str(exc.status), ERROR_HEADER: exc.detail})
            except Exception:
                log.exception("rpc %s failed", subject)
                await nc.publish(msg.reply, b"", headers={ERROR_CODE_HEADER: "500", ERROR_HEADER: "internal error"})

    return await nc.subscribe(subject, queue=f"rpc-{service}", cb=on_request)


async def request_rpc(
    nc: NatsClient, service: str, method: str, request: Any, response_type: type[ResponseT], timeout: float = 5.0
) -> ResponseT:
    """Call another service; its `ProblemError` is raised here with the same status."""
    subject = rpc_subject(service, method)
    with tracer.start_as_current_span(f"rpc {subject}", kind=trace.SpanKind.CLIENT):
        try:
            reply = await nc.request(subject, msgspec.json.encode(request), timeout=timeout, headers=inject_headers())
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            raise ServiceUnavailableError(f"{service} did not answer {method}") from exc
    if reply.headers and ERROR_CODE_HEADER in reply.headers:
        error_type = ERRORS_BY_STATUS.get(int(reply.headers[ERROR_CODE_HEADER]), ProblemError)
        raise error_type(reply.headers.get(ERROR_HEADER, "remote error"))
    return msgspec.json.decode(reply.data, type=response_type)
