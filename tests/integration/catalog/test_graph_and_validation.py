"""The dependency graph and Backstage's validate-entity route."""

from __future__ import annotations

import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service


def component(name: str, **spec) -> dict:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": "service", "lifecycle": "production", "owner": "team-a", **spec},
    }


@pytest_asyncio.fixture
async def catalog(make_settings, http):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        for entity in [
            {
                "apiVersion": "backstage.io/v1alpha1",
                "kind": "Group",
                "metadata": {"name": "team-a"},
                "spec": {"type": "team", "children": []},
            },
            component("web", dependsOn=["component:api"]),
            component("api", dependsOn=["component:db-proxy", "resource:ghost-db"]),
            component("db-proxy"),
        ]:
            async with http.post(f"{service.url}/api/catalog/entities", json=entity) as r:
                assert r.status == 201, await r.text()
        yield service


async def graph(http, catalog, **params):
    async with http.get(f"{catalog.url}/api/catalog/graph", params=params) as r:
        return r.status, await r.json()


async def test_graph_follows_chosen_relations_to_a_depth(catalog, http):
    status, body = await graph(http, catalog, root="component:web", depth="2", relations="dependsOn")
    assert status == 200 and body["root"] == "component:default/web"
    assert [n["ref"] for n in body["nodes"]] == [
        "component:default/api",
        "component:default/db-proxy",
        "component:default/web",
        "resource:default/ghost-db",
    ]
    assert next(n for n in body["nodes"] if n["ref"] == "resource:default/ghost-db")["missing"] is True
    assert {(e["source"], e["target"]) for e in body["edges"]} == {
        ("component:default/web", "component:default/api"),
        ("component:default/api", "component:default/db-proxy"),
        ("component:default/api", "resource:default/ghost-db"),
    }
    _, shallow = await graph(http, catalog, root="component:web", depth="1", relations="dependsOn")
    assert len(shallow["nodes"]) == 2
    _, everything = await graph(http, catalog, root="group:team-a", depth="1")
    assert {e["type"] for e in everything["edges"]} == {"ownerOf"}


async def test_graph_bad_input(catalog, http):
    assert (await graph(http, catalog, root="nokind"))[0] == 400
    assert (await graph(http, catalog, root="component:nope"))[0] == 404
    assert (await graph(http, catalog, root="component:web", depth="99"))[0] == 400


async def test_validate_entity_answers_like_backstage(catalog, http):
    url = f"{catalog.url}/api/catalog/validate-entity"
    async with http.post(url, json={"entity": component("fine"), "location": "url:https://x/y.yaml"}) as r:
        assert r.status == 200
    async with http.post(url, json={"entity": component("Not Fine!")}) as r:
        body = await r.json()
        assert r.status == 400 and body["errors"][0]["field"] == "$.metadata.name"


async def test_favorites_star_list_and_unstar(catalog, http):
    async with http.get(f"{catalog.url}/api/catalog/entities", params={"filter": "metadata.name=api"}) as r:
        uid = (await r.json())[0]["metadata"]["uid"]
    for _ in range(2):  # starring twice is harmless
        async with http.put(f"{catalog.url}/api/catalog/favorites/{uid}") as r:
            assert r.status == 204
    async with http.get(f"{catalog.url}/api/catalog/favorites") as r:
        assert [e["metadata"]["name"] for e in await r.json()] == ["api"]
    async with http.delete(f"{catalog.url}/api/catalog/favorites/{uid}") as r:
        assert r.status == 204
    async with http.get(f"{catalog.url}/api/catalog/favorites") as r:
        assert await r.json() == []
    rows = await catalog.deps.pool.fetch(
        "SELECT subject FROM catalog.outbox WHERE subject LIKE '%favorite%' ORDER BY seq"
    )
    assert [r["subject"] for r in rows] == ["idp.evt.catalog.favorite.added", "idp.evt.catalog.favorite.removed"]
    async with http.put(f"{catalog.url}/api/catalog/favorites/00000000-0000-0000-0000-000000000000") as r:
        assert r.status == 404
