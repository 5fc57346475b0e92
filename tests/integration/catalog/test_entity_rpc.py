"""Other services read stitched entities from the catalog over NATS request/reply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from services.catalog.handlers import fit_reply
from shared import catalog_client
from shared.errors import InputError
from shared.service import RunningService, running_service


@pytest_asyncio.fixture
async def catalog(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        yield service


def component(name: str, owner: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": "service", "lifecycle": "production", "owner": owner},
    }


async def create(http, catalog, entity, scope="account") -> dict[str, Any]:
    async with http.post(f"{catalog.url}/api/catalog/entities", params={"scope": scope}, json=entity) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def test_entities_by_uid_and_ref_come_stitched(catalog, http):
    a = await create(http, catalog, component("a"))
    b = await create(http, catalog, component("b"), scope="account.org1")
    nc = catalog.deps.nc
    found = await catalog_client.get_entities(nc, uids=[b["metadata"]["uid"]], refs=["component:a", "component:nope"])
    assert [e["metadata"]["name"] for e in found] == ["b", "a"]
    assert found[0]["metadata"]["annotations"]["seed-idp.dev/scope"] == "account.org1"
    assert {"type": "ownedBy", "targetRef": "group:default/team-a"} in found[1]["relations"]
    assert found[1]["metadata"]["uid"] == a["metadata"]["uid"]
    assert await catalog_client.get_entities(nc, uids=["0190a0b0-0000-7000-8000-000000000000"]) == []
    with pytest.raises(InputError, match="uids"):
        await catalog_client.get_entities(nc, uids=["not-a-uid"])


async def test_pages_cover_every_entity_of_every_scope_once(catalog, http):
    created = {
        (await create(http, catalog, component(f"c{i}"), scope="account" if i % 2 else "account.org1"))["metadata"][
            "uid"
        ]
        for i in range(7)
    }
    pages = [page async for page in catalog_client.iterate_pages(catalog.deps.nc, limit=3)]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert {e["metadata"]["uid"] for p in pages for e in p} == created


def test_a_page_is_trimmed_to_fit_one_message():
    items = [{"n": i, "pad": "x" * 400} for i in range(10)]
    assert fit_reply(items, 1024 + 1300) == items[:3]
    assert fit_reply(items, 10) == items[:1]
    assert fit_reply(items, 10**6) == items
