"""Audit persists every event once, keeps a verifiable chain, and answers queries."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec

from services.audit import service
from shared.bus import publish_event
from shared.events import Actor, ResourceRef, new_event
from tests.helpers import eventually, sample_event


async def count(audit) -> int:
    return await audit.deps.pool.fetchval("SELECT count(*) FROM audit.events")


async def test_published_events_are_persisted_once_even_when_republished(audit):
    events = [sample_event(i) for i in range(50)]
    for event in events + events[:10]:
        await publish_event(audit.deps.js, event)
    await eventually(lambda: _equals(count(audit), 50))
    await asyncio.sleep(0.3)
    assert await count(audit) == 50


async def test_append_is_idempotent_by_event_id(audit):
    events = [sample_event(i) for i in range(20)]
    assert await service.append_events(audit.deps.pool, events) == 20
    assert await service.append_events(audit.deps.pool, [*events[5:15], events[0], events[0]]) == 0
    assert await count(audit) == 20
    assert (await service.verify_chain(audit.deps.pool)).ok


async def test_secret_values_are_masked_before_storage(audit):
    event = sample_event(1, login={"password": "hunter2", "user": "ana"}, api_key="k-123")
    await service.append_events(audit.deps.pool, [event])
    data = await audit.deps.pool.fetchval("SELECT data FROM audit.events WHERE id = $1", event.id)
    assert data["login"] == {"password": "***", "user": "ana"}
    assert data["api_key"] == "***"
    assert "hunter2" not in msgspec.json.encode(data).decode()


async def test_chain_detects_edited_deleted_and_reordered_rows(audit):
    pool = audit.deps.pool
    await service.append_events(pool, [sample_event(i) for i in range(10)])
    assert (await service.verify_chain(pool)).ok

    await pool.execute("UPDATE audit.events SET data = '{\"n\": 42}' WHERE seq = 4")
    result = await service.verify_chain(pool)
    assert not result.ok and result.first_error.seq == 4
    await pool.execute("UPDATE audit.events SET data = '{\"n\": 3}' WHERE seq = 4")
    assert (await service.verify_chain(pool)).ok

    await pool.execute("UPDATE audit.events SET seq = 100 WHERE seq = 6")
    await pool.execute("UPDATE audit.events SET seq = 6 WHERE seq = 7")
    await pool.execute("UPDATE audit.events SET seq = 7 WHERE seq = 100")
    result = await service.verify_chain(pool)
    assert not result.ok and result.first_error.seq == 6

    await pool.execute("UPDATE audit.events SET seq = 100 WHERE seq = 6")
    await pool.execute("UPDATE audit.events SET seq = 6 WHERE seq = 7")
    await pool.execute("UPDATE audit.events SET seq = 7 WHERE seq = 100")
    await pool.execute("DELETE FROM audit.events WHERE seq = 8")
    result = await service.verify_chain(pool)
    assert not result.ok and result.first_error.seq == 8 and "missing" in result.first_error.reason


async def test_deleting_the_newest_row_is_detected(audit):
    pool = audit.deps.pool
    await service.append_events(pool, [sample_event(i) for i in range(5)])
    await pool.execute("DELETE FROM audit.events WHERE seq = 5")
    result = await service.verify_chain(pool)
    assert not result.ok and "head" in result.first_error.reason


async def test_retention_prunes_a_prefix_and_the_rest_still_verifies(audit):
    pool = audit.deps.pool
    old = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    events = [msgspec.structs.replace(sample_event(i), time=old) for i in range(30)] + [
        sample_event(i) for i in range(30, 40)
    ]
    await service.append_events(pool, events)
    await service.prune_expired(pool)  # the service's own startup run may have pruned them already
    assert await pool.fetchval("SELECT count(*) FROM audit.events WHERE type = 'test.thing.created'") == 10
    assert await pool.fetchval("SELECT sum(pruned) FROM audit.checkpoints") == 30
    # Pruning is itself an event, which the consumer may already have appended.
    pruned = await eventually(lambda: pool.fetch("SELECT data FROM audit.events WHERE type = 'audit.events.pruned'"))
    assert pruned[0]["data"] == {"deleted": 30, "checkpoint_seq": 30, "retention_days": 365}
    result = await service.verify_chain(pool)
    assert result.ok and result.from_seq == 31 and result.checked == 11
    await service.append_events(pool, [sample_event(50)])
    assert (await service.verify_chain(pool)).ok
    assert await service.prune_expired(pool) == 0


async def test_two_replicas_consuming_at_once_keep_one_valid_chain(audit, make_settings):
    from services.audit.app import DEFINITION, Settings
    from shared.service import running_service

    async with running_service(DEFINITION, make_settings(Settings)) as second:
        events = [sample_event(i) for i in range(2000)]
        await asyncio.gather(*(publish_event(audit.deps.js, e) for e in events))
        await eventually(lambda: _equals(count(audit), 2000), timeout=60)
        result = await service.verify_chain(second.deps.pool)
        assert result.ok and result.checked == 2000


async def test_update_events_keep_before_and_after(audit, http):
    event = new_event(
        "catalog.entity.updated",
        source="catalog",
        actor=Actor("system", "ingestion"),
        resource=ResourceRef("entity", "component:default/petstore"),
        data={"changes": {"spec.lifecycle": {"before": "experimental", "after": "production"}}},
    )
    await publish_event(audit.deps.js, event)

    async def fetch():
        async with http.get(f"{audit.url}/api/audit/events", params={"resource_id": "component:default/petstore"}) as r:
            return (await r.json())["items"]

    items = await eventually(fetch)
    assert items[0]["actor"] == {"kind": "system", "id": "ingestion"}
    assert items[0]["data"]["changes"]["spec.lifecycle"] == {"before": "experimental", "after": "production"}


async def _equals(value_coro, expected) -> bool:
    return (await value_coro) == expected
