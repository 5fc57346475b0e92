"""by-query's `totalItems` comes from a count cache keyed by the query and checked against the catalog's write
generation (migration 0012): every committed entity write invalidates it, including one committed while a count
was being cached."""

from __future__ import annotations

import pytest_asyncio

from services.catalog import store
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service
from tests.helpers import eventually


def component(name: str, type_: str = "service") -> dict:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": type_, "lifecycle": "production", "owner": "team-a"},
    }


@pytest_asyncio.fixture
async def catalog(make_settings, http):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        for name in ("a", "b", "c"):
            await create(http, service, component(name))
        yield service


async def create(http, catalog, entity: dict) -> dict:
    async with http.post(f"{catalog.url}/api/catalog/entities", json=entity) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def services_total(http, catalog) -> int:
    params = {"filter": "kind=component,spec.type=service", "limit": "1"}
    async with http.get(f"{catalog.url}/api/catalog/entities/by-query", params=params) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["totalItems"]


async def generation(catalog) -> int:
    return await catalog.deps.pool.fetchval("SELECT value FROM write_generation")


async def test_a_total_is_counted_once_per_write_generation(catalog, http):
    assert await services_total(http, catalog) == 3
    cached = await catalog.deps.pool.fetch("SELECT key, generation, total FROM count_cache ORDER BY key")
    assert {r["generation"] for r in cached} == {await generation(catalog)} and 3 in {r["total"] for r in cached}
    assert await services_total(http, catalog) == 3
    assert await catalog.deps.pool.fetch("SELECT key, generation, total FROM count_cache ORDER BY key") == cached


async def test_every_entity_write_invalidates_the_total(catalog, http):
    assert await services_total(http, catalog) == 3
    created = await create(http, catalog, component("d"))
    assert await services_total(http, catalog) == 4

    url = f"{catalog.url}/api/catalog/entities/by-name/component/default/d"
    async with http.put(url, json=component("d", "website")) as r:
        assert r.status == 200, await r.text()
    assert await services_total(http, catalog) == 3

    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{created['metadata']['uid']}") as r:
        assert r.status == 204
    assert await services_total(http, catalog) == 3
    a = await catalog.deps.pool.fetchval("SELECT uid::text FROM entities WHERE ref = 'component:default/a'")
    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{a}") as r:
        assert r.status == 204
    assert await services_total(http, catalog) == 2


async def test_a_write_committed_after_a_count_was_cached_invalidates_it(catalog, http):
    """The writer's rows and its generation bump commit together: a count cached while the write was in flight
    (which could not see it) is not served once it has committed."""
    before = await generation(catalog)
    results = catalog.deps.context.caches.results
    async with catalog.deps.pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE entities SET search_tokens = '{}' WHERE ref = 'component:default/b'")
        assert await services_total(http, catalog) == 3  # counted and cached without the uncommitted write
        dropped_before = results.epoch
    assert await generation(catalog) == before + 1  # once for the transaction, however many rows it wrote

    async def write_notice_received() -> bool:  # the in-process result cache is dropped by it (read_cache.py)
        return results.epoch > dropped_before

    await eventually(write_notice_received)
    assert await services_total(http, catalog) == 2


async def test_a_rolled_back_write_keeps_the_generation(catalog, http):
    before = await generation(catalog)
    async with catalog.deps.pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("DELETE FROM entities WHERE ref = 'component:default/b'")
        await transaction.rollback()
    assert await generation(catalog) == before
    assert await services_total(http, catalog) == 3


async def test_a_write_invalidates_the_ranked_search_total(catalog, http):
    async def total(q: str) -> int:
        async with http.get(f"{catalog.url}/api/catalog/search", params={"q": q}) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["totalItems"]

    assert await total("ledger") == 0
    await create(http, catalog, component("ledger-api"))
    assert await total("ledger") == 1


async def test_counting_inside_a_callers_transaction_leaves_its_commit_durable(catalog):
    async with catalog.deps.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = on")  # test clusters run with it off (shared/embedded.py)
        assert await store.cached_count(conn, "SELECT count(*) FROM entities WHERE kind = $1", ["component"]) == 3
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
