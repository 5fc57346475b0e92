"""Backstage's newer reads: `POST /entities/by-query` and `POST /entity-facets` with predicates, by-refs with a
predicate, ancestry through Location entities, and Backstage's error members in problem+json."""

from __future__ import annotations

import hashlib

import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service


def component(name: str, type_: str, owner: str, tags: list[str]) -> dict:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, "tags": tags},
        "spec": {"type": type_, "lifecycle": "production", "owner": owner},
    }


@pytest_asyncio.fixture
async def catalog(make_settings, http, tmp_path):
    settings = make_settings(CatalogSettings, file_location_roots=str(tmp_path), refresh_interval_seconds=3600)
    async with running_service(CATALOG, settings) as service:
        for i in range(9):
            entity = component(f"svc-{i}", ["service", "website", "library"][i % 3], f"team-{i % 2}", [f"t{i % 4}"])
            async with http.post(f"{service.url}/api/catalog/entities", json=entity) as r:
                assert r.status == 201, await r.text()
        yield service


async def by_query(http, catalog, body):
    async with http.post(f"{catalog.url}/api/catalog/entities/by-query", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_predicate_query_pages_with_cursors(catalog, http):
    body = {
        "query": {"$all": [{"kind": "component"}, {"$not": {"spec.type": "library"}}]},
        "orderBy": [{"field": "metadata.name", "order": "desc"}],
        "fields": ["metadata.name"],
        "limit": 4,
    }
    page = await by_query(http, catalog, body)
    names = [i["metadata"]["name"] for i in page["items"]]
    assert page["totalItems"] == 6 and names == ["svc-7", "svc-6", "svc-4", "svc-3"]
    second = await by_query(http, catalog, {"cursor": page["pageInfo"]["nextCursor"], "fields": ["metadata.name"]})
    assert [i["metadata"]["name"] for i in second["items"]] == ["svc-1", "svc-0"]
    assert "nextCursor" not in second["pageInfo"] and second["pageInfo"]["prevCursor"]


async def test_predicate_operators(catalog, http):
    async def names(query):
        page = await by_query(http, catalog, {"query": query, "fields": ["metadata.name"], "limit": 100})
        return sorted(i["metadata"]["name"] for i in page["items"])

    assert await names({"spec.type": {"$in": ["website", "LIBRARY"]}, "spec.owner": "team-0"}) == [
        "svc-2",
        "svc-4",
        "svc-8",
    ]
    assert await names({"metadata.name": {"$hasPrefix": "SVC-1"}}) == ["svc-1"]
    assert await names({"metadata.tags": {"$contains": "t3"}}) == ["svc-3", "svc-7"]
    assert await names({"relations": {"$contains": {"type": "ownedBy", "targetRef": "group:default/team-1"}}}) == [
        "svc-1",
        "svc-3",
        "svc-5",
        "svc-7",
    ]
    assert await names({"$any": [{"metadata.name": "svc-0"}, {"spec.system": {"$exists": True}}]}) == ["svc-0"]
    assert await names({"$all": []}) == []
    full_text = await by_query(http, catalog, {"fullTextFilter": {"term": "svc-8"}, "fields": ["metadata.name"]})
    assert [i["metadata"]["name"] for i in full_text["items"]] == ["svc-8"]


async def test_facets_and_by_refs_take_predicates(catalog, http):
    body = {"facets": ["spec.type"], "query": {"spec.owner": "team-1"}}
    async with http.post(f"{catalog.url}/api/catalog/entity-facets", json=body) as r:
        assert (await r.json())["facets"]["spec.type"] == [
            {"value": "website", "count": 2},
            {"value": "library", "count": 1},
            {"value": "service", "count": 1},
        ]
    body = {"entityRefs": ["component:svc-1", "component:svc-2"], "query": {"spec.owner": "team-1"}, "fields": ["kind"]}
    async with http.post(f"{catalog.url}/api/catalog/entities/by-refs", json=body) as r:
        assert (await r.json())["items"] == [{"kind": "Component"}, None]
    body = {"entityRefs": ["component:svc-1", "component:svc-2", "component:svc-3"], "fields": ["metadata.name"]}
    params = {"filter": "spec.type=website,spec.type=library"}
    async with http.post(f"{catalog.url}/api/catalog/entities/by-refs", params=params, json=body) as r:
        assert (await r.json())["items"] == [{"metadata": {"name": "svc-1"}}, {"metadata": {"name": "svc-2"}}, None]


async def test_bad_predicates_are_problems_with_backstage_members(catalog, http):
    async with http.post(
        f"{catalog.url}/api/catalog/entities/by-query", json={"query": {"kind": {"$regex": "x"}}}
    ) as r:
        problem = await r.json()
        assert r.status == 400 and r.content_type == "application/problem+json"
    assert problem["errors"][0]["field"] == "$.query.kind.$regex"
    assert problem["error"]["name"] == "InputError" and problem["response"] == {"statusCode": 400}
    assert problem["request"] == {"method": "POST", "url": "/api/catalog/entities/by-query"}
    async with http.post(f"{catalog.url}/api/catalog/entities/by-query", json={"cursor": "bm9wZQ=="}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.cursor"
    async with http.post(f"{catalog.url}/api/catalog/entity-facets", json={"facets": [], "query": {}}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.facets"
    # A client that asks for application/json (as Backstage's error parser needs) gets the same body typed so.
    headers = {"Accept": "application/json"}
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/nope", headers=headers) as r:
        assert r.status == 404 and r.content_type == "application/json"
        assert (await r.json())["error"]["name"] == "NotFoundError"


async def test_ancestry_follows_location_entities(catalog, http, tmp_path):
    (tmp_path / "teams").mkdir()
    (tmp_path / "all.yaml").write_text(
        "apiVersion: backstage.io/v1alpha1\nkind: Location\nmetadata: {name: root}\nspec: {targets: [./teams/*.yaml]}\n"
    )
    (tmp_path / "teams" / "a.yaml").write_text(
        "apiVersion: backstage.io/v1alpha1\nkind: Location\nmetadata: {name: team-a-files}\n"
        "spec: {target: ../svc.yaml}\n"
    )
    (tmp_path / "svc.yaml").write_text(
        "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {name: deep}\n"
        "spec: {type: service, lifecycle: production, owner: team-a}\n"
    )
    body = {"type": "file", "target": str(tmp_path / "all.yaml")}
    async with http.post(f"{catalog.url}/api/catalog/locations", json=body) as r:
        assert r.status == 201, await r.text()
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/deep/ancestry") as r:
        ancestry = await r.json()
    # As in Backstage, the registered location's generated Location entity (sha1 of "type:target") is the root.
    location_key = "file:" + body["target"]
    generated = "generated-" + hashlib.sha1(location_key.encode()).hexdigest()
    assert ancestry["rootEntityRef"] == "component:default/deep"
    assert [(i["entity"]["metadata"]["name"], i["parentEntityRefs"]) for i in ancestry["items"]] == [
        ("deep", ["location:default/team-a-files"]),
        ("team-a-files", ["location:default/root"]),
        ("root", [f"location:default/{generated}"]),
        (generated, []),
    ]
    location_entity = ancestry["items"][-1]["entity"]
    assert location_entity["spec"] == {"type": "file", "target": body["target"]}
    assert location_entity["metadata"]["annotations"]["backstage.io/managed-by-origin-location"] == location_key
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/svc-1/ancestry") as r:
        assert [i["parentEntityRefs"] for i in (await r.json())["items"]] == [[]]
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/nope/ancestry") as r:
        assert r.status == 404
