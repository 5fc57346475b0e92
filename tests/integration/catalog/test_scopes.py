"""Scopes: the same entity at three scopes, reads limited to a scope with or without its parents and children,
and scoped refs (`kind:namespace/name@scope`) wherever a ref is accepted."""

from __future__ import annotations

import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service

SCOPES = ["account", "account.acme", "account.acme.shop", "account.other"]


@pytest_asyncio.fixture
async def catalog(make_settings, http):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        for scope in SCOPES:
            entity = {
                "apiVersion": "backstage.io/v1alpha1",
                "kind": "Component",
                "metadata": {"name": "payments", "description": f"at {scope}"},
                "spec": {"type": "service", "lifecycle": "production", "owner": "team-a"},
            }
            async with http.post(f"{service.url}/api/catalog/entities", params={"scope": scope}, json=entity) as r:
                assert r.status == 201, await r.text()
        yield service


def scopes_of(entities):
    return sorted(e["metadata"]["annotations"]["seed-idp.dev/scope"] for e in entities)


async def test_reads_cover_a_scope_with_or_without_parents_and_children(catalog, http):
    cases = [
        ({}, ["account.acme"]),
        ({"includeParents": "true"}, ["account", "account.acme"]),
        ({"includeChildren": "true"}, ["account.acme", "account.acme.shop"]),
        ({"includeParents": "true", "includeChildren": "true"}, ["account", "account.acme", "account.acme.shop"]),
    ]
    for flags, expected in cases:
        params = {"scope": "account.acme", **flags}
        async with http.get(f"{catalog.url}/api/catalog/entities", params=params) as r:
            assert scopes_of(await r.json()) == expected, flags
        async with http.post(f"{catalog.url}/api/catalog/entities/by-query", params=params, json={}) as r:
            assert scopes_of((await r.json())["items"]) == expected, flags
    async with http.get(f"{catalog.url}/api/catalog/entities", params={"includeChildren": "true"}) as r:
        assert scopes_of(await r.json()) == SCOPES

    params = {"scope": "account.acme", "includeChildren": "true", "limit": "1"}
    async with http.get(f"{catalog.url}/api/catalog/entities/by-query", params=params) as r:
        first = await r.json()
    async with http.get(
        f"{catalog.url}/api/catalog/entities/by-query", params={"cursor": first["pageInfo"]["nextCursor"]}
    ) as r:
        second = await r.json()
    assert first["totalItems"] == 2 and scopes_of(first["items"] + second["items"]) == [
        "account.acme",
        "account.acme.shop",
    ]
    async with http.get(
        f"{catalog.url}/api/catalog/entity-facets",
        params={"facet": "metadata.description", "scope": "account.acme", "includeChildren": "true"},
    ) as r:
        assert len((await r.json())["facets"]["metadata.description"]) == 2
    async with http.get(f"{catalog.url}/api/catalog/entities", params={"scope": "account.a.b.c"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "query.scope"


async def test_scoped_refs_are_accepted_wherever_refs_are(catalog, http):
    refs = ["component:payments@account.acme.shop", "component:default/payments", "component:payments@account.nope"]
    async with http.post(
        f"{catalog.url}/api/catalog/entities/by-refs", json={"entityRefs": refs, "fields": ["metadata.description"]}
    ) as r:
        assert (await r.json())["items"] == [
            {"metadata": {"description": "at account.acme.shop"}},
            {"metadata": {"description": "at account"}},
            None,
        ]
    async with http.post(
        f"{catalog.url}/api/catalog/entities/by-refs", json={"entityRefs": ["component:payments@acme"]}
    ) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.entityRefs[0]"

    body = {
        "items": [{"entityRef": "component:payments@account.other", "properties": {"spec.lifecycle": "deprecated"}}]
    }
    async with http.post(f"{catalog.url}/api/catalog/ingest", json=body) as r:
        assert (await r.json()) == {"updated": 1, "unchanged": 0}
    async with http.get(
        f"{catalog.url}/api/catalog/entities/by-name/component/default/payments", params={"scope": "account.other"}
    ) as r:
        assert (await r.json())["spec"]["lifecycle"] == "deprecated"
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/payments") as r:
        assert (await r.json())["spec"]["lifecycle"] == "production"

    async with http.get(
        f"{catalog.url}/api/catalog/graph", params={"root": "component:payments@account.acme", "depth": "1"}
    ) as r:
        assert (await r.json())["root"] == "component:default/payments"
    async with http.post(
        f"{catalog.url}/api/catalog/refresh", json={"entityRef": "component:payments@account.acme"}
    ) as r:
        assert r.status == 200
    async with http.post(f"{catalog.url}/api/catalog/refresh", json={"entityRef": "component:payments@account.x"}) as r:
        assert r.status == 404


async def test_single_reads_may_resolve_at_the_nearest_scope_above(catalog, http):
    entity = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Group",
        "metadata": {"name": "platform"},
        "spec": {"type": "team", "children": []},
    }
    async with http.post(f"{catalog.url}/api/catalog/entities", json=entity) as r:
        assert r.status == 201
    url = f"{catalog.url}/api/catalog/entities/by-name/component/default/payments"
    params = {"scope": "account.acme.shop", "includeParents": "true"}
    async with http.get(url, params=params) as r:
        assert (await r.json())["metadata"]["description"] == "at account.acme.shop"
    async with http.get(url.replace("component/default/payments", "group/default/platform"), params=params) as r:
        assert (await r.json())["metadata"]["annotations"]["seed-idp.dev/scope"] == "account"
    async with http.get(
        url.replace("component/default/payments", "group/default/platform"), params=params | {"includeParents": "false"}
    ) as r:
        assert r.status == 404

    body = {"entityRefs": ["group:platform", "component:payments", "component:payments@account.other"]}
    async with http.post(f"{catalog.url}/api/catalog/entities/by-refs", params=params, json=body) as r:
        items = (await r.json())["items"]
    assert [i["metadata"]["annotations"]["seed-idp.dev/scope"] for i in items] == [
        "account",
        "account.acme.shop",
        "account.other",
    ]


async def test_routes_with_a_ref_in_the_path_take_scope_and_include_parents(make_settings, http, tmp_path):
    """by-name, ancestry and locations/by-entity read at `scope`, or at the nearest scope above with
    `includeParents`; graph resolves its root the same way."""
    (tmp_path / "svc.yaml").write_text(
        "apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {name: svc}\n"
        "spec: {type: service, lifecycle: production, owner: team-a}\n"
    )
    settings = make_settings(CatalogSettings, file_location_roots=str(tmp_path))
    async with running_service(CATALOG, settings) as catalog:
        body = {"type": "file", "target": str(tmp_path / "svc.yaml")}
        async with http.post(f"{catalog.url}/api/catalog/locations", params={"scope": "account.acme"}, json=body) as r:
            assert r.status == 201, await r.text()
        below = {"scope": "account.acme.shop"}
        nearest = below | {"includeParents": "true"}
        base = f"{catalog.url}/api/catalog"
        for path in [
            "entities/by-name/component/default/svc",
            "entities/by-name/component/default/svc/ancestry",
            "locations/by-entity/component/default/svc",
        ]:
            async with http.get(f"{base}/{path}", params=below) as r:
                assert r.status == 404, path
            async with http.get(f"{base}/{path}", params=nearest) as r:
                assert r.status == 200, path
        async with http.get(f"{base}/entities/by-name/component/default/svc/ancestry", params=nearest) as r:
            items = (await r.json())["items"]
        assert [i["entity"]["metadata"]["annotations"]["seed-idp.dev/scope"] for i in items] == ["account.acme"] * 2
        async with http.get(f"{base}/graph", params={"root": "component:svc", **below}) as r:
            assert r.status == 404
        async with http.get(f"{base}/graph", params={"root": "component:svc", **nearest}) as r:
            assert (await r.json())["root"] == "component:default/svc"
