"""Backstage's read routes beyond the basics: by-refs, by-query (cursor, totals, order, full text), facets."""

from __future__ import annotations

import copy

import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service

BASE = {
    "apiVersion": "backstage.io/v1alpha1",
    "kind": "Component",
    "spec": {"type": "service", "lifecycle": "production", "owner": "team-a"},
}


def component(name: str, type_: str = "service", title: str | None = None, tags=()) -> dict:
    entity = copy.deepcopy(BASE)
    entity["metadata"] = {"name": name, "tags": list(tags), **({"title": title} if title else {})}
    entity["spec"]["type"] = type_
    return entity


@pytest_asyncio.fixture
async def catalog(make_settings, http):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        for i, (type_, tags) in enumerate([("service", ["java"]), ("website", ["react"]), ("service", ["go"])] * 4):
            entity = component(f"svc-{i:02d}", type_, title=f"Checkout {i}" if i % 5 == 0 else None, tags=tags)
            async with http.post(f"{service.url}/api/catalog/entities", json=entity) as r:
                assert r.status == 201, await r.text()
        yield service


async def test_by_refs_keeps_order_and_marks_missing(catalog, http):
    body = {
        "entityRefs": ["component:default/svc-03", "component:default/nope", "component:svc-01"],
        "fields": ["metadata.name"],
    }
    async with http.post(f"{catalog.url}/api/catalog/entities/by-refs", json=body) as r:
        assert await r.json() == {"items": [{"metadata": {"name": "svc-03"}}, None, {"metadata": {"name": "svc-01"}}]}
    async with http.post(f"{catalog.url}/api/catalog/entities/by-refs", json={"entityRefs": ["nokind"]}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.entityRefs[0]"


async def test_by_query_pages_with_cursors_and_totals(catalog, http):
    url = f"{catalog.url}/api/catalog/entities/by-query"
    params = {
        "filter": "spec.type=service",
        "limit": "3",
        "orderField": "metadata.name,desc",
        "fields": "metadata.name",
    }
    names, cursor, pages = [], None, 0
    while True:
        async with http.get(
            url, params={"cursor": cursor, "limit": "3", "fields": "metadata.name"} if cursor else params
        ) as r:
            page = await r.json()
        assert page["totalItems"] == 8
        names += [i["metadata"]["name"] for i in page["items"]]
        pages += 1
        cursor = page["pageInfo"].get("nextCursor")
        if not cursor:
            break
    assert pages == 3
    assert names == sorted(names, reverse=True) and len(set(names)) == 8
    async with http.get(url, params={"cursor": page["pageInfo"]["prevCursor"], "limit": "3"}) as r:
        assert len((await r.json())["items"]) == 3


async def test_by_query_full_text(catalog, http):
    url = f"{catalog.url}/api/catalog/entities/by-query"
    async with http.get(url, params={"fullTextFilterTerm": "CHECKOUT", "fullTextFilterFields": "metadata.title"}) as r:
        page = await r.json()
    assert sorted(i["metadata"]["name"] for i in page["items"]) == ["svc-00", "svc-05", "svc-10"]
    async with http.get(url, params={"fullTextFilterTerm": "svc-1"}) as r:
        assert (await r.json())["totalItems"] == 2


async def test_by_query_full_text_on_the_entity_list_fields_matches_inside_values_in_order(catalog, http):
    """Name, title and profile display name answer from their trigram index (migration 0030), with Backstage's
    substring semantics: the term anywhere in one of the chosen fields, not in the others."""
    url = f"{catalog.url}/api/catalog/entities/by-query"
    fields = "metadata.name,metadata.title,spec.profile.displayName"
    params = {"fullTextFilterTerm": "ckout 1", "fullTextFilterFields": fields, "orderField": "metadata.name,desc"}
    async with http.get(url, params=params) as r:
        page = await r.json()
    assert [i["metadata"]["name"] for i in page["items"]] == ["svc-10"] and page["totalItems"] == 1
    for term in ("svc-0", "vc-0"):  # the second has no trigram to look up: the search rows answer it
        params = {"fullTextFilterTerm": term, "fullTextFilterFields": fields, "limit": "3"}
        async with http.get(url, params=params) as r:
            page = await r.json()
        assert [i["metadata"]["name"] for i in page["items"]] == ["svc-00", "svc-01", "svc-02"]
        assert page["totalItems"] == 10
    # `java` is a tag, not in the chosen fields.
    params = {"fullTextFilterTerm": "java", "fullTextFilterFields": fields}
    async with http.get(url, params=params) as r:
        assert (await r.json())["totalItems"] == 0


async def test_entity_facets_count_values_among_filtered_entities(catalog, http):
    params = [("facet", "spec.type"), ("facet", "metadata.tags"), ("filter", "kind=component")]
    async with http.get(f"{catalog.url}/api/catalog/entity-facets", params=params) as r:
        facets = (await r.json())["facets"]
    assert facets["spec.type"] == [{"value": "service", "count": 8}, {"value": "website", "count": 4}]
    assert {f["value"]: f["count"] for f in facets["metadata.tags"]} == {"java": 4, "react": 4, "go": 4}


async def test_bad_query_parameters_are_problems(catalog, http):
    for params, field in [
        ({"orderField": "metadata.name,sideways"}, "query.orderField"),
        ({"cursor": "garbage"}, "query.cursor"),
        ({"limit": "-1"}, "query.limit"),
    ]:
        async with http.get(f"{catalog.url}/api/catalog/entities/by-query", params=params) as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == field
    async with http.get(f"{catalog.url}/api/catalog/entity-facets") as r:
        assert r.status == 400


async def test_by_query_pinned_to_a_kind_pages_in_ref_order(catalog, http):
    """A filter that pins the kind walks the kind's entities in ref order instead of sorting every match."""
    api = {**BASE, "kind": "API", "metadata": {"name": "a"}, "spec": {**BASE["spec"], "definition": "x"}}
    async with http.post(f"{catalog.url}/api/catalog/entities", json=api) as r:
        assert r.status == 201, await r.text()
    url = f"{catalog.url}/api/catalog/entities/by-query"
    params = {"filter": "kind=component,spec.type=service", "limit": "3", "fields": "metadata.name"}
    names, cursor = [], None
    while True:
        async with http.get(url, params={"cursor": cursor, "limit": "3"} if cursor else params) as r:
            page = await r.json()
        assert page["totalItems"] == 8
        names += [i["metadata"]["name"] for i in page["items"]]
        if not (cursor := page["pageInfo"].get("nextCursor")):
            break
    assert names == [f"svc-{i:02d}" for i in range(12) if i % 3 != 1]
