"""The catalog mirrors identity-sync's users and groups; offboarding leaves ownership flagged, then reassigned."""

from __future__ import annotations

import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from services.identity_sync.app import DEFINITION as IDENTITY
from services.identity_sync.app import Settings as IdentitySettings
from shared.service import running_service
from tests.helpers import eventually

API = "/api/identity"
STATUS = "seed-idp.dev/identity-status"


@pytest_asyncio.fixture
async def suite(make_settings):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as catalog:
        settings = make_settings(IdentitySettings, catalog_url=catalog.url)
        async with running_service(IDENTITY, settings) as identity:
            yield identity, catalog


async def post(http, url, body=None, status=201):
    async with http.post(url, json=body) as r:
        assert r.status == status, await r.text()
        return await r.json() if r.status != 204 else None


async def entity(http, catalog, kind, name):
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/{kind}/default/{name}") as r:
        return await r.json() if r.status == 200 else None


def relations(document):
    return {(r["type"], r["targetRef"]) for r in document.get("relations", [])}


async def test_users_and_groups_are_mirrored_with_their_relations(suite, http):
    identity, catalog = suite
    eng = await post(http, f"{identity.url}{API}/groups", {"name": "eng", "display_name": "Engineering"})
    web = await post(http, f"{identity.url}{API}/groups", {"name": "web", "parent": eng["id"]})
    ada = await post(http, f"{identity.url}{API}/users", {"username": "ada", "emails": ["ada@example.com"]})
    async with http.put(f"{identity.url}{API}/groups/{web['id']}/members/{ada['id']}") as r:
        assert r.status == 204

    async def mirrored():
        user, group = await entity(http, catalog, "user", "ada"), await entity(http, catalog, "group", "web")
        assert user and ("memberOf", "group:default/web") in relations(user)
        assert group and {("childOf", "group:default/eng"), ("hasMember", "user:default/ada")} <= relations(group)
        return True

    await eventually(mirrored, timeout=10)
    parent = await entity(http, catalog, "group", "eng")
    assert ("parentOf", "group:default/web") in relations(parent)
    assert parent["spec"]["profile"]["displayName"] == "Engineering"


async def test_offboarding_flags_ownership_until_it_is_reassigned(suite, http):
    identity, catalog = suite
    await post(http, f"{identity.url}{API}/groups", {"name": "platform"})
    ada = await post(http, f"{identity.url}{API}/users", {"username": "ada"})
    component = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "billing"},
        "spec": {"type": "service", "lifecycle": "production", "owner": "user:default/ada"},
    }
    await post(http, f"{catalog.url}/api/catalog/entities", component)
    await eventually(lambda: entity(http, catalog, "user", "ada"), timeout=10)

    await post(http, f"{identity.url}{API}/users/{ada['id']}/deactivate", status=200)

    async def orphans():
        async with http.get(f"{identity.url}{API}/orphans") as r:
            assert r.status == 200, await r.text()
            return (await r.json())["items"]

    async def flagged(status):
        items = await orphans()
        return items == [{"entityRef": "component:default/billing", "owner": "user:default/ada", "ownerStatus": status}]

    await eventually(lambda: flagged("inactive"), timeout=10)
    async with http.delete(f"{identity.url}{API}/users/{ada['id']}") as r:
        assert r.status == 204
    await eventually(lambda: flagged("deleted"), timeout=10)
    user = await entity(http, catalog, "user", "ada")
    assert user["metadata"]["annotations"][STATUS] == "deleted"
    assert ("ownedBy", "user:default/ada") in relations(await entity(http, catalog, "component", "billing"))

    result = await post(
        http,
        f"{identity.url}{API}/reassign",
        {"entityRefs": ["component:default/billing"], "owner": "group:default/platform"},
        status=200,
    )
    assert result == {"updated": 1, "unchanged": 0}
    billing = await entity(http, catalog, "component", "billing")
    assert billing["spec"]["owner"] == "group:default/platform"
    assert await orphans() == []


async def test_reassign_needs_a_group_and_the_catalog(make_settings, http):
    settings = make_settings(IdentitySettings, catalog_url="http://127.0.0.1:9")
    async with running_service(IDENTITY, settings) as identity:
        async with http.post(
            f"{identity.url}{API}/reassign", json={"entityRefs": ["component:default/x"], "owner": "user:default/a"}
        ) as r:
            assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.owner"
        async with http.get(f"{identity.url}{API}/orphans") as r:
            assert r.status == 503 and r.content_type == "application/problem+json"


async def test_a_batch_writes_each_mirrored_entity_once(make_settings, http):
    """A sync's burst of membership events becomes one write per group, not one per member."""
    from services.catalog.handlers import apply_identity_events
    from shared.db import transaction
    from shared.events import Actor, ResourceRef, new_event

    def event(type_, **data):
        return new_event(
            type_, source="identity_sync", actor=Actor("system", "sync"), resource=ResourceRef("g", "1"), data=data
        )

    group = {"id": "g1", "name": "ops", "display_name": "Ops", "parent_name": None}
    events = [event("identity.group.created", **group)] + [
        event("identity.group.member_added", group_name="ops", username=f"user{i}") for i in range(3)
    ]
    async with running_service(CATALOG, make_settings(CatalogSettings)) as catalog:
        async with transaction(catalog.deps.pool) as conn:
            await apply_identity_events(conn, events)
        assert (await entity(http, catalog, "group", "ops"))["spec"]["members"] == ["user0", "user1", "user2"]
        async with catalog.deps.pool.acquire() as conn:
            subjects = [r["subject"] for r in await conn.fetch("SELECT subject FROM outbox")]
        assert subjects == ["idp.evt.catalog.entity.created"]
