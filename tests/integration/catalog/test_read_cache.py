"""By-name reads, by-query pages and facet counts come from each replica's caches (read_cache.py): a write through a
replica is read fresh from it at once, a write through another replica (or any transaction) drops the caches when
it commits (LISTEN/NOTIFY, migration 0030), and while the notices cannot be received nothing is cached."""

from __future__ import annotations

import asyncio
import copy

import pytest_asyncio

from services.catalog import store
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service

COMPONENT = {
    "apiVersion": "backstage.io/v1alpha1",
    "kind": "Component",
    "metadata": {"name": "cached", "title": "First"},
    "spec": {"type": "service", "lifecycle": "production", "owner": "team-a"},
}
BY_NAME = "/api/catalog/entities/by-name/component/default/cached"
KEY = ("account", "component:default/cached")


@pytest_asyncio.fixture
async def replicas(make_settings, http):
    """Two catalog replicas on one database, with the component created through the first."""
    async with (
        running_service(CATALOG, make_settings(CatalogSettings)) as first,
        running_service(CATALOG, make_settings(CatalogSettings)) as second,
    ):
        await until(lambda: first.deps.context.caches.listening and second.deps.context.caches.listening)
        before = first.deps.context.caches.entities.epoch, second.deps.context.caches.entities.epoch
        async with http.post(f"{first.url}/api/catalog/entities", json=COMPONENT) as r:
            assert r.status == 201, await r.text()
        # The creation's notice reaches both (the first dropped once already, after its route answered), so no
        # later drop empties what the tests read next.
        await until(lambda: first.deps.context.caches.entities.epoch >= before[0] + 2)
        await until(lambda: second.deps.context.caches.entities.epoch >= before[1] + 1)
        yield first, second


async def until(condition, attempts: int = 200) -> None:
    """Waits for what another connection delivers in its own time (a notice, a reconnect)."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


async def title(http, replica) -> str | None:
    async with http.get(replica.url + BY_NAME) as r:
        return (await r.json())["metadata"].get("title") if r.status == 200 else None


async def replace(http, replica, new_title: str) -> None:
    entity = copy.deepcopy(COMPONENT)
    entity["metadata"]["title"] = new_title
    async with http.put(replica.url + BY_NAME, json=entity) as r:
        assert r.status == 200, await r.text()


async def test_a_read_is_served_from_the_cache_and_a_write_through_the_replica_is_read_fresh(replicas, http):
    first, _ = replicas
    assert await title(http, first) == "First"
    assert first.deps.context.caches.entities.get(KEY) is not None
    await replace(http, first, "Second")
    assert await title(http, first) == "Second"
    uid = await first.deps.pool.fetchval("SELECT uid::text FROM entities WHERE ref = $1", KEY[1])
    async with http.delete(f"{first.url}/api/catalog/entities/by-uid/{uid}") as r:
        assert r.status == 204
    assert await title(http, first) is None


async def test_a_write_through_another_replica_drops_the_cache_when_it_commits(replicas, http):
    first, second = replicas
    assert await title(http, second) == "First"
    assert second.deps.context.caches.entities.get(KEY) is not None
    await replace(http, first, "Second")
    await until(lambda: second.deps.context.caches.entities.get(KEY) is None)
    assert await title(http, second) == "Second"


async def test_nothing_is_cached_while_write_notices_cannot_arrive(replicas, http):
    _, second = replicas
    caches = second.deps.context.caches
    cache = caches.entities
    assert await title(http, second) == "First" and cache.get(KEY) is not None
    await second.deps.pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN %entities_written%' AND pid <> pg_backend_pid()"
    )
    await until(lambda: not caches.listening)
    assert cache.get(KEY) is None
    assert await title(http, second) == "First"
    assert caches.listening or cache.get(KEY) is None
    await until(lambda: caches.listening)  # listening again, on a new connection
    assert await title(http, second) == "First" and cache.get(KEY) is not None


async def titles_found(http, replica, term: str) -> list[str]:
    params = {"filter": "kind=component", "fullTextFilterTerm": term, "fullTextFilterFields": "metadata.title"}
    async with http.get(f"{replica.url}/api/catalog/entities/by-query", params=params) as r:
        page = await r.json()
    assert page["totalItems"] == len(page["items"])
    return [item["metadata"]["title"] for item in page["items"]]


async def test_by_query_pages_are_remembered_until_a_write(replicas, http):
    first, second = replicas
    assert await titles_found(http, first, "sec") == [] and await titles_found(http, second, "sec") == []
    assert len(first.deps.context.caches.results) == 1 and len(second.deps.context.caches.results) == 1
    await replace(http, first, "Second")
    assert await titles_found(http, first, "sec") == ["Second"]
    await until(lambda: len(second.deps.context.caches.results) == 0)
    assert await titles_found(http, second, "sec") == ["Second"]


async def test_a_pages_entities_are_served_from_the_cache_by_uid_until_a_write(replicas, http):
    first, second = replicas
    uid = await first.deps.pool.fetchval("SELECT uid FROM entities WHERE ref = $1", KEY[1])
    assert await titles_found(http, second, "fir") == ["First"]
    assert second.deps.context.caches.entities.get((uid,)) is not None
    assert await titles_found(http, second, "fir") == ["First"]  # page and entity both from the caches
    await replace(http, first, "Firstly")
    await until(lambda: second.deps.context.caches.entities.get((uid,)) is None)
    assert await titles_found(http, second, "fir") == ["Firstly"]


async def facet_types(http, replica) -> dict[str, int]:
    params = {"facet": "spec.type", "filter": "kind=component"}
    async with http.get(f"{replica.url}/api/catalog/entity-facets", params=params) as r:
        body = await r.json()
    return {facet["value"]: facet["count"] for facet in body["facets"]["spec.type"]}


async def test_facet_counts_are_remembered_until_a_write(replicas, http, monkeypatch):
    first, second = replicas
    counted = []
    facets = store.facets

    async def counting(*args, **kwargs):
        counted.append(args[3])
        return await facets(*args, **kwargs)

    monkeypatch.setattr(store, "facets", counting)
    assert await facet_types(http, second) == {"service": 1}
    assert await facet_types(http, second) == {"service": 1} and counted == [["spec.type"]]
    website = copy.deepcopy(COMPONENT)
    website["metadata"]["name"] = "site"
    website["spec"]["type"] = "website"
    async with http.post(f"{first.url}/api/catalog/entities", json=website) as r:
        assert r.status == 201, await r.text()
    await until(lambda: len(second.deps.context.caches.facets) == 0)
    assert await facet_types(http, second) == {"service": 1, "website": 1} and len(counted) == 2


async def test_with_the_caches_off_reads_are_served_and_nothing_is_kept(make_settings, http):
    settings = make_settings(CatalogSettings, read_cache_entities=0, read_cache_result_uids=0)
    async with running_service(CATALOG, settings) as catalog:
        async with http.post(f"{catalog.url}/api/catalog/entities", json=COMPONENT) as r:
            assert r.status == 201, await r.text()
        assert await title(http, catalog) == "First" and await titles_found(http, catalog, "fir") == ["First"]
        assert len(catalog.deps.context.caches.entities) == 0 and len(catalog.deps.context.caches.results) == 0
        assert not any(task.done() for task in catalog.tasks)


async def test_pages_are_slices_of_one_result_read_a_window_at_a_time(make_settings, http, monkeypatch):
    monkeypatch.setattr("services.catalog.service.RESULT_WINDOW", 2)
    windows_read = []
    query_entities = store.query_entities

    async def recording(*args, **kwargs):
        windows_read.append(kwargs["limit"])
        return await query_entities(*args, **kwargs)

    monkeypatch.setattr(store, "query_entities", recording)
    async with running_service(CATALOG, make_settings(CatalogSettings)) as catalog:
        caches = catalog.deps.context.caches
        await until(lambda: caches.listening)
        before = caches.results.epoch
        names = ("p-1", "p-2", "p-3", "p-4", "p-5")
        for name in names:
            entity = copy.deepcopy(COMPONENT)
            entity["metadata"]["name"] = name
            async with http.post(f"{catalog.url}/api/catalog/entities", json=entity) as r:
                assert r.status == 201, await r.text()
        # Each creation drops the caches twice: once its route answered, once its notice came. Until every notice
        # has come, a late one would drop the result between the pages below.
        await until(lambda: caches.results.epoch >= before + 2 * len(names))

        async def page(offset: int) -> list[str]:
            params = {"filter": "kind=component", "limit": "1", "offset": str(offset)}
            async with http.get(f"{catalog.url}/api/catalog/entities/by-query", params=params) as r:
                body = await r.json()
            assert body["totalItems"] == 5
            return [item["metadata"]["name"] for item in body["items"]]

        assert await page(0) == ["p-1"] and await page(1) == ["p-2"] and windows_read == [2]
        assert await page(3) == ["p-4"] and windows_read == [2, 4]  # read again, up to the window holding offset 3
        assert await page(4) == ["p-5"] and windows_read == [2, 4, 6]
        assert await page(2) == ["p-3"] and await page(5) == [] and windows_read == [2, 4, 6]  # all 5 remembered
