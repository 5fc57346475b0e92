"""Custom kinds: register, list, get, replace and delete a JSON Schema per kind and apiVersion; unknown kinds
are refused, registered ones validated with errors naming the JSON path; every change goes through the outbox."""

from __future__ import annotations

import asyncio

import pytest_asyncio

from services.catalog import kinds
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.events import SYSTEM
from shared.service import running_service

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["owner", "replicas"],
            "properties": {
                "owner": {"type": "string"},
                "replicas": {"type": "integer", "minimum": 1},
                "regions": {"type": "array", "items": {"enum": ["eu", "us"]}},
            },
        }
    },
}
REGISTRATION = {
    "kind": "Cluster",
    "apiVersion": "example.com/v1",
    "schema": SCHEMA,
    "relations": [{"field": "owner", "defaultKind": "Group", "forward": "ownedBy", "reverse": "ownerOf"}],
}


def cluster(spec: dict, api_version: str = "example.com/v1") -> dict:
    return {"apiVersion": api_version, "kind": "Cluster", "metadata": {"name": "prod-eu"}, "spec": spec}


@pytest_asyncio.fixture
async def catalog(make_settings):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        yield service


async def create(http, catalog, entity):
    async with http.post(f"{catalog.url}/api/catalog/entities", json=entity) as r:
        return r.status, await r.json()


async def test_unknown_kinds_are_refused_until_registered(catalog, http):
    status, problem = await create(http, catalog, cluster({"owner": "team-a", "replicas": 3}))
    assert status == 400 and problem["errors"][0]["field"] == "$.kind"

    async with http.post(f"{catalog.url}/api/catalog/kinds", json=REGISTRATION) as r:
        assert r.status == 201 and r.headers["ETag"]
    status, entity = await create(http, catalog, cluster({"owner": "team-a", "replicas": 3, "regions": ["eu"]}))
    assert status == 201 and entity["relations"] == [{"type": "ownedBy", "targetRef": "group:default/team-a"}]
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/group/default/team-a") as r:
        assert r.status == 404  # the owner need not exist; the relation is kept

    status, problem = await create(http, catalog, cluster({"owner": "team-a", "replicas": 0, "regions": ["mars"]}))
    assert status == 400
    assert sorted(e["field"] for e in problem["errors"]) == ["$.spec.regions[0]", "$.spec.replicas"]
    status, problem = await create(http, catalog, cluster({"owner": "x", "replicas": 1}, "example.com/v2"))
    assert status == 400 and problem["errors"][0]["field"] == "$.apiVersion"

    async with http.post(f"{catalog.url}/api/catalog/validate-entity", json={"entity": cluster({"owner": "x"})}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.spec"


async def test_bad_registrations_name_the_field(catalog, http):
    cases = [
        ({**REGISTRATION, "kind": "Component"}, "$.kind"),
        ({**REGISTRATION, "kind": "9lives"}, "$.kind"),
        ({**REGISTRATION, "apiVersion": "a/b/c"}, "$.apiVersion"),
        ({**REGISTRATION, "schema": {"type": "object", "properties": {"x": {"type": "no-such-type"}}}}, None),
        ({**REGISTRATION, "relations": [{"field": "owner", "forward": "owned by", "reverse": "ownerOf"}]}, None),
        ({**REGISTRATION, "schema": "not an object"}, "$.schema"),
    ]
    for body, field in cases:
        async with http.post(f"{catalog.url}/api/catalog/kinds", json=body) as r:
            problem = await r.json()
            assert r.status == 400, problem
            if field:
                assert problem["errors"][0]["field"] == field
    async with http.post(f"{catalog.url}/api/catalog/kinds", json=REGISTRATION) as r:
        assert r.status == 201
    async with http.post(f"{catalog.url}/api/catalog/kinds", json=REGISTRATION) as r:
        assert r.status == 409


async def test_replace_and_delete_keep_existing_entities_valid(catalog, http):
    async with http.post(f"{catalog.url}/api/catalog/kinds", json=REGISTRATION) as r:
        etag = r.headers["ETag"]
    status, entity = await create(http, catalog, cluster({"owner": "team-a", "replicas": 3}))
    assert status == 201
    url = f"{catalog.url}/api/catalog/kinds/Cluster/example.com/v1"

    stricter = {"schema": {**SCHEMA, "properties": {"spec": {"required": ["tier"]}}}}
    async with http.put(url, json=stricter, headers={"If-Match": etag}) as r:
        assert r.status == 409 and "cluster:default/prod-eu" in (await r.json())["errors"][0]["field"]
    async with http.put(url, json={"schema": SCHEMA}, headers={"If-Match": '"stale"'}) as r:
        assert r.status == 412
    async with http.put(url, json={"schema": {**SCHEMA, "description": "clusters"}}, headers={"If-Match": etag}) as r:
        assert r.status == 200 and r.headers["ETag"] != etag
    async with http.get(url) as r:
        assert (await r.json())["schema"]["description"] == "clusters" and (await r.json())["relations"] == []

    async with http.delete(url) as r:
        assert r.status == 409
    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{entity['metadata']['uid']}") as r:
        assert r.status == 204
    async with http.delete(url) as r:
        assert r.status == 204
    async with http.get(url) as r:
        assert r.status == 404

    subjects = [
        row["subject"]
        for row in await catalog.deps.pool.fetch("SELECT subject FROM catalog.outbox WHERE subject LIKE '%kind%'")
    ]
    assert subjects == [f"idp.evt.catalog.kind.{verb}" for verb in ("registered", "replaced", "deleted")]


async def test_ai_resource_ships_registered(catalog, http):
    async with http.get(f"{catalog.url}/api/catalog/kinds") as r:
        assert [(k["kind"], k["apiVersion"]) for k in (await r.json())["items"]] == [
            ("AiResource", "backstage.io/v1alpha1")
        ]
    rule = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "AiResource",
        "metadata": {"name": "no-raw-http"},
        "spec": {"type": "rule", "lifecycle": "production", "owner": "team-a", "system": "portal"},
    }
    status, problem = await create(http, catalog, rule)
    assert status == 400 and problem["errors"][0]["field"] == "$.spec"
    status, entity = await create(http, catalog, {**rule, "spec": {**rule["spec"], "category": "x", "rationale": "y"}})
    assert status == 201
    assert {(r["type"], r["targetRef"]) for r in entity["relations"]} == {
        ("ownedBy", "group:default/team-a"),
        ("partOf", "system:default/portal"),
    }


async def test_a_schema_change_waits_for_writes_validated_against_the_old_schema(catalog, http):
    async with http.post(f"{catalog.url}/api/catalog/kinds", json=REGISTRATION) as r:
        assert r.status == 201
    pool = catalog.deps.pool
    async with pool.acquire() as conn, conn.transaction():
        await kinds.load(conn)  # what an entity write does first
        change = asyncio.create_task(
            kinds.replace(pool, SYSTEM, "Cluster", "example.com/v1", kinds.KindSchema(schema={"type": "object"}), None)
        )
        await asyncio.sleep(0.3)
        assert not change.done()
    assert (await change).schema == {"type": "object"}
