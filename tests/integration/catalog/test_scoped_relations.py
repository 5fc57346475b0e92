"""Relation targets across scopes: a spec reference resolves at the nearest scope at or above its entity's that has
the target (or at the scope a scoped ref names), the reverse relation appears on the target at its own scope, and
resolution follows targets that appear, shadow a farther one, or go away."""

from __future__ import annotations

import pytest_asyncio
import yaml

from services.catalog import ingestion
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.events import decode_event
from shared.service import running_service

ORG, PROJECT = "account.acme", "account.acme.shop"


@pytest_asyncio.fixture
async def catalog(make_settings):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        yield service


def group(name: str) -> dict:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Group",
        "metadata": {"name": name},
        "spec": {"type": "team", "children": []},
    }


def component(name: str, owner: str, **spec) -> dict:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name},
        "spec": {"type": "service", "lifecycle": "production", "owner": owner, **spec},
    }


async def create(http, catalog, scope: str, entity: dict) -> dict:
    async with http.post(f"{catalog.url}/api/catalog/entities", params={"scope": scope}, json=entity) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def relation_updates(catalog, ref: str) -> list[dict]:
    """The `relations` changes of the `catalog.entity.updated` events about `ref`, oldest first."""
    async with catalog.deps.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE subject = 'idp.evt.catalog.entity.updated' ORDER BY seq"
        )
    events = [decode_event(row["payload"]) for row in rows]
    return [e.data["changes"]["relations"] for e in events if e.resource.id == ref and "relations" in e.data["changes"]]


async def read(http, catalog, scope: str, kind: str, name: str) -> dict:
    url = f"{catalog.url}/api/catalog/entities/by-name/{kind}/default/{name}"
    async with http.get(url, params={"scope": scope}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_a_project_component_owned_by_an_org_group_shows_on_the_group_at_its_scope(catalog, http):
    await create(http, catalog, ORG, group("platform"))
    await create(http, catalog, PROJECT, component("checkout", "platform"))

    served = await read(http, catalog, PROJECT, "component", "checkout")
    assert served["relations"] == [{"type": "ownedBy", "targetRef": "group:default/platform", "targetScope": ORG}]
    owner = await read(http, catalog, ORG, "group", "platform")
    assert owner["relations"] == [
        {"type": "ownerOf", "targetRef": "component:default/checkout", "targetScope": PROJECT}
    ]

    # The reverse relation is filterable at the group's scope, and the graph crosses scopes.
    params = {"scope": ORG, "filter": "relations.ownerOf=component:default/checkout"}
    async with http.get(f"{catalog.url}/api/catalog/entities", params=params) as r:
        assert [e["metadata"]["name"] for e in await r.json()] == ["platform"]
    params = {"root": "component:checkout", "scope": PROJECT, "depth": "2"}
    async with http.get(f"{catalog.url}/api/catalog/graph", params=params) as r:
        graph = await r.json()
    assert [n["ref"] for n in graph["nodes"]] == ["component:default/checkout", f"group:default/platform@{ORG}"]
    assert {(e["source"], e["type"], e["target"]) for e in graph["edges"]} == {
        ("component:default/checkout", "ownedBy", f"group:default/platform@{ORG}"),
        (f"group:default/platform@{ORG}", "ownerOf", "component:default/checkout"),
    }


async def test_a_scoped_ref_in_spec_resolves_where_it_says_and_a_bad_scope_is_refused(catalog, http):
    await create(http, catalog, "account", group("platform"))
    await create(http, catalog, ORG, group("platform"))
    await create(http, catalog, PROJECT, component("checkout", "group:default/platform@account"))

    served = await read(http, catalog, PROJECT, "component", "checkout")
    assert served["relations"] == [{"type": "ownedBy", "targetRef": "group:default/platform", "targetScope": "account"}]
    assert (await read(http, catalog, "account", "group", "platform"))["relations"][0]["targetScope"] == PROJECT
    assert (await read(http, catalog, ORG, "group", "platform"))["relations"] == []

    bad = component("broken", "platform@account.a.b.c")
    async with http.post(f"{catalog.url}/api/catalog/entities", params={"scope": PROJECT}, json=bad) as r:
        assert r.status == 400
        assert [e["field"] for e in (await r.json())["errors"]] == ["$.spec.owner"]


async def test_a_target_created_later_at_a_nearer_scope_shadows_the_farther_one_until_it_goes(catalog, http):
    await create(http, catalog, "account", group("platform"))
    await create(http, catalog, PROJECT, component("checkout", "platform"))
    assert (await read(http, catalog, PROJECT, "component", "checkout"))["relations"][0]["targetScope"] == "account"

    nearer = await create(http, catalog, PROJECT, group("platform"))
    assert (await read(http, catalog, PROJECT, "component", "checkout"))["relations"] == [
        {"type": "ownedBy", "targetRef": "group:default/platform"}
    ]
    assert (await read(http, catalog, PROJECT, "group", "platform"))["relations"] == [
        {"type": "ownerOf", "targetRef": "component:default/checkout"}
    ]
    assert (await read(http, catalog, "account", "group", "platform"))["relations"] == []

    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{nearer['metadata']['uid']}") as r:
        assert r.status == 204
    assert (await read(http, catalog, PROJECT, "component", "checkout"))["relations"][0]["targetScope"] == "account"
    assert (await read(http, catalog, "account", "group", "platform"))["relations"] == [
        {"type": "ownerOf", "targetRef": "component:default/checkout", "targetScope": PROJECT}
    ]
    # The component's document never changed, but its served relations moved twice: each move is an event.
    far = {"type": "ownedBy", "targetRef": "group:default/platform", "targetScope": "account"}
    near = {"type": "ownedBy", "targetRef": "group:default/platform"}
    assert await relation_updates(catalog, "component:default/checkout") == [
        {"before": [far], "after": [near]},
        {"before": [near], "after": [far]},
    ]


async def test_a_dangling_target_is_kept_and_reported_then_resolves_when_it_appears(catalog, http):
    await create(http, catalog, PROJECT, component("checkout", "ghosts"))
    assert (await read(http, catalog, PROJECT, "component", "checkout"))["relations"] == [
        {"type": "ownedBy", "targetRef": "group:default/ghosts"}
    ]
    params = {"root": "component:checkout", "scope": PROJECT, "depth": "1"}
    async with http.get(f"{catalog.url}/api/catalog/graph", params=params) as r:
        nodes = {n["ref"]: n for n in (await r.json())["nodes"]}
    assert nodes["group:default/ghosts"]["missing"] is True

    await create(http, catalog, ORG, group("ghosts"))
    assert (await read(http, catalog, PROJECT, "component", "checkout"))["relations"] == [
        {"type": "ownedBy", "targetRef": "group:default/ghosts", "targetScope": ORG}
    ]
    assert (await read(http, catalog, ORG, "group", "ghosts"))["relations"] == [
        {"type": "ownerOf", "targetRef": "component:default/checkout", "targetScope": PROJECT}
    ]


async def test_a_location_read_at_a_project_resolves_to_the_entities_it_creates_before_they_are_stored(
    make_settings, http, tmp_path, monkeypatch
):
    # One entity a batch: `cart` is written after the project's `platform` group, which is held aside until the
    # read's end, and must resolve to it rather than to the account's `platform`; `checkout`, written before the
    # group, is moved to it when it appears.
    monkeypatch.setattr(ingestion, "READ_BATCH", 1)
    documents = [component("checkout", "platform"), group("platform"), component("cart", "platform")]
    (tmp_path / "catalog-info.yaml").write_text(yaml.safe_dump_all(documents))
    settings = make_settings(CatalogSettings, file_location_roots=str(tmp_path), refresh_interval_seconds=3600)
    async with running_service(CATALOG, settings) as catalog:
        await create(http, catalog, "account", group("platform"))
        target = {"type": "file", "target": str(tmp_path / "catalog-info.yaml")}
        async with http.post(f"{catalog.url}/api/catalog/locations", params={"scope": PROJECT}, json=target) as r:
            assert r.status == 201, await r.text()
        near = {"type": "ownedBy", "targetRef": "group:default/platform"}
        for name in ("checkout", "cart"):
            assert (await read(http, catalog, PROJECT, "component", name))["relations"] == [near]
        assert (await read(http, catalog, PROJECT, "group", "platform"))["relations"] == [
            {"type": "ownerOf", "targetRef": "component:default/cart"},
            {"type": "ownerOf", "targetRef": "component:default/checkout"},
        ]
        assert (await read(http, catalog, "account", "group", "platform"))["relations"] == []
        assert await relation_updates(catalog, "component:default/cart") == []
