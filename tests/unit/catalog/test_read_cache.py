"""The read caches' rules: nothing stored while write notices are not received, nothing stored by a read that
began before a drop, and at most `capacity` in all, each entry weighed as its cache says."""

from __future__ import annotations

import asyncio

import pytest

from services.catalog.model import ServedEntity
from services.catalog.read_cache import ReadCache, drop_after

ENTITY = ServedEntity("etag-1", '{"kind": "Component"}')


def listening_cache(capacity: int = 10) -> ReadCache:
    cache = ReadCache(capacity)
    cache.listening = True
    return cache


def test_a_read_stores_what_it_fetched_when_nothing_was_dropped_meanwhile():
    cache = listening_cache()
    cache.put("a", ENTITY, cache.epoch)
    assert cache.get("a") is ENTITY


def test_a_read_that_began_before_a_drop_stores_nothing():
    cache = listening_cache()
    began = cache.epoch
    cache.drop()  # a write committed while the read was fetching
    cache.put("a", ENTITY, began)
    assert cache.get("a") is None


def test_nothing_is_stored_while_not_listening_for_writes():
    cache = ReadCache(10)
    cache.put("a", ENTITY, cache.epoch)
    assert cache.get("a") is None


def test_a_drop_empties_the_cache():
    cache = listening_cache()
    cache.put("a", ENTITY, cache.epoch)
    cache.drop()
    assert cache.get("a") is None and len(cache) == 0


def test_the_oldest_entry_goes_when_full():
    cache = listening_cache(capacity=2)
    for key in ("a", "b", "c"):
        cache.put(key, ENTITY, cache.epoch)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (None, ENTITY, ENTITY)


def test_weighed_entries_make_room_for_a_heavier_one_oldest_first_and_a_replaced_one_stops_counting():
    cache = ReadCache(10, weigh=len)
    cache.listening = True
    for key, value in (("a", "1234"), ("b", "1234"), ("a", "12"), ("c", "12345")):
        cache.put(key, value, cache.epoch)
    # a (replaced by 2 units) was stored after b: b goes to make room for c, a stays
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("12", None, "12345")
    cache.put("d", "x" * 11, cache.epoch)  # heavier than the whole cache: not stored, nothing evicted
    assert cache.get("d") is None and len(cache) == 2


def test_capacity_zero_stores_nothing():
    cache = listening_cache(capacity=0)
    cache.put("a", ENTITY, cache.epoch)
    assert len(cache) == 0


async def test_a_write_handler_drops_the_cache_even_when_it_fails():
    cache = listening_cache()

    async def failing_write() -> None:
        cache.put("a", ENTITY, cache.epoch)
        raise RuntimeError("refused")

    try:
        await drop_after(cache, failing_write)()
    except RuntimeError:
        pass
    assert cache.get("a") is None


async def test_requests_missing_the_same_key_meanwhile_share_one_load_and_one_after_a_drop_loads_again():
    cache = listening_cache()
    versions = iter([ServedEntity("etag-1", "{}"), ServedEntity("etag-2", "{}")])
    loads = []
    release = asyncio.Event()

    async def load() -> ServedEntity:
        version = next(versions)
        loads.append(version.etag)
        await release.wait()
        return version

    waiting = [asyncio.ensure_future(cache.get_or_load("a", load)) for _ in range(3)]
    await asyncio.sleep(0)
    cache.drop()  # a write committed while the first load ran: a later request must not get its value
    after_drop = asyncio.ensure_future(cache.get_or_load("a", load))
    await asyncio.sleep(0)
    waiting[0].cancel()  # one client went away; the others still get the load they waited for
    release.set()
    assert [(await w).etag for w in waiting[1:]] == ["etag-1", "etag-1"] and (await after_drop).etag == "etag-2"
    assert loads == ["etag-1", "etag-2"]
    stored = cache.get("a")
    assert stored is not None and stored.etag == "etag-2"  # only the load that began after the drop stores
    assert await cache.get_or_load("a", load) is stored and len(loads) == 2


async def test_nothing_is_shared_while_not_listening_for_writes():
    cache = ReadCache(10)
    loads = []

    async def load() -> ServedEntity:
        loads.append(1)
        await asyncio.sleep(0)
        return ENTITY

    await asyncio.gather(cache.get_or_load("a", load), cache.get_or_load("a", load))
    assert len(loads) == 2 and len(cache) == 0


async def test_misses_of_a_group_queue_behind_its_running_read_and_are_read_together():
    cache = listening_cache()
    reads: list[list[str]] = []
    release = asyncio.Event()

    async def load_many(items: list[str]) -> dict[str, ServedEntity]:
        reads.append(sorted(items))
        await release.wait()
        return {item: ServedEntity(f"etag-{item}", "{}") for item in items if item != "missing"}

    def get(group: tuple, items: list[str]) -> asyncio.Future[list[ServedEntity | None]]:
        return asyncio.ensure_future(cache.get_or_load_batched(group, items, load_many))

    first = get(("account",), ["a"])
    await asyncio.sleep(0)  # the first miss is read at once, alone
    queued = [get(("account",), [item]) for item in "bcb"]
    page = get(("account",), ["c", "missing", "a", "d"])
    other_group = get(("account", "account.x"), ["b"])
    await asyncio.sleep(0)
    queued[0].cancel()  # one client went away; the others still get the read they waited for
    release.set()
    assert [entity.etag for entity in await first] == ["etag-a"]
    assert [(await q)[0].etag for q in queued[1:]] == ["etag-c", "etag-b"]
    assert [entity and entity.etag for entity in await page] == ["etag-c", None, "etag-a", "etag-d"]
    assert [entity.etag for entity in await other_group] == ["etag-b"]  # read beside the first group's
    # "a" was asked again while its first read ran: read again, after the request arrived.
    assert reads == [["a"], ["b"], ["a", "b", "c", "d", "missing"]]
    stored = cache.get(("account", "b"))
    assert stored is not None and stored.etag == "etag-b" and cache.get(("account", "missing")) is None
    assert (await cache.get_or_load_batched(("account",), ["b"], load_many))[0] is stored and len(reads) == 3


async def test_a_batched_read_that_began_before_a_drop_answers_its_waiters_but_stores_nothing():
    cache = listening_cache()
    release = asyncio.Event()
    reads = 0

    async def load_many(items: list[str]) -> dict[str, ServedEntity]:
        nonlocal reads
        reads += 1
        await release.wait()
        return {item: ENTITY for item in items}

    during = asyncio.ensure_future(cache.get_or_load_batched((), ["a"], load_many))
    await asyncio.sleep(0)
    cache.drop()  # a write committed while the read ran: the next miss is read again, after it
    after = asyncio.ensure_future(cache.get_or_load_batched((), ["a"], load_many))
    await asyncio.sleep(0)
    release.set()
    assert await during == [ENTITY] and await after == [ENTITY] and reads == 2
    assert cache.get(("a",)) is ENTITY  # stored by the read that began after the drop


async def test_a_failed_batched_read_fails_its_waiters_and_the_next_miss_reads_again():
    cache = listening_cache()
    failures = iter([ConnectionError("lost"), None])

    async def load_many(items: list[str]) -> dict[str, ServedEntity]:
        failure = next(failures)
        if failure is not None:
            raise failure
        return {item: ENTITY for item in items}

    first = asyncio.ensure_future(cache.get_or_load_batched((), ["a", "b"], load_many))
    gone = asyncio.ensure_future(cache.get_or_load_batched((), ["a"], load_many))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(ConnectionError, match="lost"):
        await first
    assert await cache.get_or_load_batched((), ["b", "a"], load_many) == [ENTITY, ENTITY]


async def test_a_cancelled_batched_read_cancels_its_waiters_instead_of_leaving_them_waiting():
    cache = listening_cache()

    async def load_many(items: list[str]) -> dict[str, ServedEntity]:
        raise asyncio.CancelledError  # as when the pool closes under a read at shutdown

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(cache.get_or_load_batched((), ["a"], load_many), timeout=5)
