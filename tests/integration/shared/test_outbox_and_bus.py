"""The event spine against real PostgreSQL and NATS: outbox relay, dedupe, redelivery, dead letters, rpc."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import msgspec
import nats
import pytest
import pytest_asyncio

from shared import bus, db
from shared.db import transaction
from shared.errors import NotFoundError, ServiceUnavailableError
from shared.events import Event, decode_event
from shared.outbox import OutboxRelay, write_event
from tests.helpers import eventually, sample_event


@pytest_asyncio.fixture
async def pool(database_url):
    pool = await db.create_pool(database_url, "spine")
    await db.apply_migrations(pool, "spine", None)
    yield pool
    await pool.close()


@pytest_asyncio.fixture
async def nc(nats_url):
    nc = await bus.connect(nats_url, "test")
    await bus.ensure_streams(nc.jetstream())
    yield nc
    await nc.close()


@pytest_asyncio.fixture
async def js(nc):
    return nc.jetstream()


async def stream_events(js, subject="idp.evt.>") -> list[Event]:
    """Every event currently in IDP_EVENTS (read with an ephemeral consumer)."""
    info = await js.stream_info(bus.EVENTS_STREAM)
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(subject, stream=bus.EVENTS_STREAM)
    messages = await sub.fetch(info.state.messages, timeout=5)
    await sub.unsubscribe()
    return [decode_event(m.data) for m in messages]


@contextlib.asynccontextmanager
async def relay_running(pool, js, **options):
    relay = OutboxRelay(pool, js, "test", **{"sweep_interval": 0.2, **options})
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_migrations_are_idempotent_and_ready(pool):
    assert await db.apply_migrations(pool, "spine", None) == []
    assert await db.pending_migrations(pool, "spine", None) == 0


async def test_rolled_back_mutation_emits_nothing(pool):
    with pytest.raises(RuntimeError):
        async with transaction(pool) as conn:
            await write_event(conn, sample_event(1))
            raise RuntimeError("the mutation failed")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_outbox_delivers_after_a_crash_between_commit_and_publish(pool, js):
    """Committed rows with no relay running (the process died) are published when a relay starts."""
    events = [sample_event(i) for i in range(30)]
    for event in events:
        async with transaction(pool) as conn:
            await write_event(conn, event)
    assert await stream_events(js) == []
    async with relay_running(pool, js):
        await eventually(lambda: pending_is(pool, 0))
    published = await stream_events(js)
    assert [e.id for e in published] == [e.id for e in events]


async def test_rows_committed_while_a_batch_is_published_go_out_without_waiting_for_the_sweep(pool, js):
    """A notification that arrives while the relay publishes must wake its next round (the sweep is an hour)."""
    async with relay_running(pool, js, sweep_interval=3600):
        for round_ in range(20):
            for i in range(5):
                async with transaction(pool) as conn:
                    await write_event(conn, sample_event(round_ * 5 + i))
            await eventually(lambda: pending_is(pool, 0), timeout=5)


async def test_relay_republishing_sent_rows_is_deduplicated(pool, js):
    """A relay that crashed after publishing but before marking sent publishes again; JetStream drops it."""
    events = [sample_event(i) for i in range(10)]
    async with transaction(pool) as conn:
        for event in events:
            await write_event(conn, event)
    relay = OutboxRelay(pool, js, "test")
    assert await relay.publish_pending() == 10
    await pool.execute("UPDATE outbox SET sent_at = NULL")
    assert await relay.publish_pending() == 10
    assert len(await stream_events(js)) == 10


async def test_relay_survives_nats_being_down_and_drains_the_backlog(pool, nats_server):
    if nats_server is None:
        pytest.skip("needs the test's own NATS server to restart it")
    nc = await bus.connect(nats_server.url, "test")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    async with relay_running(pool, js, publish_timeout=1.0):
        nats_server.stop()
        for i in range(20):
            async with transaction(pool) as conn:
                await write_event(conn, sample_event(i))
        await asyncio.sleep(1.5)
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 20
        nats_server.start()  # same port and store; the fixture stops it
        await eventually(lambda: pending_is(pool, 0), timeout=30)
    assert len(await stream_events(js)) == 20
    await nc.close()


async def test_consumer_crash_before_ack_redelivers_and_the_effect_happens_once(pool, nc, js):
    await pool.execute("CREATE TABLE applied (event_id uuid PRIMARY KEY)")
    spec = bus.ConsumerSpec(durable="crashy", filter_subject="idp.evt.>", ack_wait=1.0)
    crashed = asyncio.Event()

    async def handle(events: Sequence[Event]) -> None:
        async with transaction(pool) as conn:
            await conn.executemany("INSERT INTO applied VALUES ($1) ON CONFLICT DO NOTHING", [(e.id,) for e in events])
        if not crashed.is_set():
            crashed.set()
            await asyncio.Event().wait()  # the process "dies" after commit, before ack

    events = [sample_event(i) for i in range(5)]
    for event in events:
        await bus.publish_event(js, event)
    first = asyncio.create_task(bus.run_consumer(nc, spec, handle))
    await asyncio.wait_for(crashed.wait(), 10)
    first.cancel()
    second = asyncio.create_task(bus.run_consumer(nc, spec, handle))
    await eventually(lambda: ack_pending_is(js, "crashy", 0, delivered=5))
    second.cancel()
    assert await pool.fetchval("SELECT count(*) FROM applied") == 5


async def test_poison_messages_go_to_the_dead_letter_subject(nc, js):
    seen: list[str] = []
    spec = bus.ConsumerSpec(durable="picky", filter_subject="idp.evt.>", max_deliver=3, retry_delay=0.05)

    async def handle(events: Sequence[Event]) -> None:
        if any(e.data.get("poison") for e in events):
            raise ValueError("cannot apply this event")
        seen.extend(e.id for e in events)

    good = [sample_event(i) for i in range(4)]
    bad = sample_event(99, poison=True)
    await js.publish("idp.evt.test.garbage", b"{not an event")
    for event in [good[0], bad, *good[1:]]:
        await bus.publish_event(js, event)
    task = asyncio.create_task(bus.run_consumer(nc, spec, handle))
    try:
        await eventually(lambda: dlq_count(js, "idp.dlq.picky", 2), timeout=20)
    finally:
        task.cancel()
    assert sorted(seen) == sorted(e.id for e in good)
    sub = await js.pull_subscribe("idp.dlq.picky", stream=bus.DLQ_STREAM)
    dead = await sub.fetch(2, timeout=5)
    assert dead[0].data == b"{not an event" and "undecodable" in dead[0].headers["Idp-Dead-Letter-Reason"]
    assert decode_event(dead[1].data).id == bad.id
    assert "failed 3 times" in dead[1].headers["Idp-Dead-Letter-Reason"]


class Echo(msgspec.Struct):
    text: str


async def test_request_reply_carries_results_and_errors(nats_url):
    nc = await nats.connect(nats_url)

    async def echo(request: Echo) -> Echo:
        if request.text == "missing":
            raise NotFoundError("no such thing")
        return Echo(request.text.upper())

    await bus.serve_rpc(nc, "tester", "echo", Echo, echo)
    assert await bus.request_rpc(nc, "tester", "echo", Echo("hi"), Echo) == Echo("HI")
    with pytest.raises(NotFoundError, match="no such thing"):
        await bus.request_rpc(nc, "tester", "echo", Echo("missing"), Echo)
    with pytest.raises(ServiceUnavailableError):
        await bus.request_rpc(nc, "nobody", "echo", Echo("x"), Echo, timeout=0.5)
    await nc.close()


async def pending_is(pool, n: int) -> bool:
    return await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == n


async def ack_pending_is(js, durable: str, n: int, delivered: int) -> bool:
    info = await js.consumer_info(bus.EVENTS_STREAM, durable)
    return info.num_ack_pending == n and info.delivered.stream_seq >= delivered and info.num_pending == 0


async def dlq_count(js, subject: str, n: int) -> bool:
    info = await js.stream_info(bus.DLQ_STREAM, subjects_filter=subject)
    return info.state.messages >= n
