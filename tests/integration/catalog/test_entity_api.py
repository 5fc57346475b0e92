"""The catalog's Entity API and Backstage read routes against real PostgreSQL and NATS; audit records
every mutation."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from services.audit.app import DEFINITION as AUDIT
from services.audit.app import Settings as AuditSettings
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import RunningService, running_service
from tests.helpers import eventually

GROUP = {
    "apiVersion": "backstage.io/v1alpha1",
    "kind": "Group",
    "metadata": {"name": "team-a"},
    "spec": {"type": "team", "children": []},
}
COMPONENT = {
    "apiVersion": "backstage.io/v1alpha1",
    "kind": "Component",
    "metadata": {"name": "petstore", "tags": ["java"], "annotations": {"github.com/project-slug": "acme/petstore"}},
    "spec": {"type": "service", "lifecycle": "experimental", "owner": "team-a", "providesApis": ["petstore-api"]},
}


@pytest_asyncio.fixture
async def catalog(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        yield service


async def create(http, catalog, entity, scope="account", status=201):
    async with http.post(f"{catalog.url}/api/catalog/entities", params={"scope": scope}, json=entity) as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def by_name(http, catalog, kind, name, scope="account"):
    async with http.get(
        f"{catalog.url}/api/catalog/entities/by-name/{kind}/default/{name}", params={"scope": scope}
    ) as r:
        return r.status, await r.json(), r.headers.get("ETag")


async def test_created_entities_are_served_with_relations_both_ways(catalog, http):
    await create(http, catalog, GROUP)
    created = await create(http, catalog, COMPONENT)
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    assert created["relations"] == [
        {"type": "ownedBy", "targetRef": "group:default/team-a"},
        {"type": "providesApi", "targetRef": "api:default/petstore-api"},
    ]
    status, group, _ = await by_name(http, catalog, "Group", "team-a")
    assert status == 200
    assert group["relations"] == [{"type": "ownerOf", "targetRef": "component:default/petstore"}]
    async with http.get(f"{catalog.url}/api/catalog/entities/by-uid/{created['metadata']['uid']}") as r:
        assert (await r.json())["metadata"]["name"] == "petstore"


async def test_backstage_filters_and_fields(catalog, http):
    await create(http, catalog, GROUP)
    await create(http, catalog, COMPONENT)
    website = copy.deepcopy(COMPONENT)
    website["metadata"]["name"], website["spec"]["type"] = "www", "website"
    await create(http, catalog, website)

    async def names(**params):
        async with http.get(f"{catalog.url}/api/catalog/entities", params=params) as r:
            assert r.status == 200, await r.text()
            return sorted(e["metadata"]["name"] for e in await r.json())

    assert await names(filter="kind=component,spec.type=service") == ["petstore"]
    assert await names(filter="kind=Component") == ["petstore", "www"]
    assert await names(filter="relations.ownerof=component:default/www") == ["team-a"]
    assert await names(filter="metadata.tags=java,spec.type=website") == ["www"]
    async with http.get(
        f"{catalog.url}/api/catalog/entities", params=[("filter", "kind=group"), ("filter", "spec.type=website")]
    ) as r:
        assert sorted(e["metadata"]["name"] for e in await r.json()) == ["team-a", "www"]
    async with http.get(
        f"{catalog.url}/api/catalog/entities", params={"filter": "kind=group", "fields": "metadata.name,spec.type"}
    ) as r:
        assert await r.json() == [{"metadata": {"name": "team-a"}, "spec": {"type": "team"}}]


async def test_replace_honours_if_match_and_bumps_generation_on_spec_change(catalog, http):
    await create(http, catalog, COMPONENT)
    _, current, etag = await by_name(http, catalog, "Component", "petstore")
    changed = copy.deepcopy(current)
    changed["spec"]["lifecycle"] = "production"
    url = f"{catalog.url}/api/catalog/entities/by-name/Component/default/petstore"
    async with http.put(url, json=changed, headers={"If-Match": '"stale"'}) as r:
        assert r.status == 412 and r.content_type == "application/problem+json"
    async with http.put(url, json=changed, headers={"If-Match": etag}) as r:
        updated = await r.json()
        assert r.status == 200 and updated["metadata"]["generation"] == 2
        assert updated["metadata"]["etag"] != current["metadata"]["etag"]
    relabelled = copy.deepcopy(updated)
    relabelled["metadata"]["title"] = "Pet Store"
    async with http.put(url, json=relabelled) as r:
        assert (await r.json())["metadata"]["generation"] == 2  # metadata edits keep the generation
    async with http.put(url, json=relabelled) as r:
        assert (await r.json())["metadata"]["etag"] == (await by_name(http, catalog, "Component", "petstore"))[2].strip(
            '"'
        )


async def test_delete_removes_the_entity_and_its_reverse_relations(catalog, http):
    await create(http, catalog, GROUP)
    created = await create(http, catalog, COMPONENT)
    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{created['metadata']['uid']}") as r:
        assert r.status == 204
    assert (await by_name(http, catalog, "Component", "petstore"))[0] == 404
    assert (await by_name(http, catalog, "Group", "team-a"))[1]["relations"] == []
    async with http.get(f"{catalog.url}/api/catalog/entities", params={"filter": "relations.ownerof"}) as r:
        assert await r.json() == []
    async with catalog.deps.pool.acquire() as conn:  # relation rows are deleted with their entity (no cascade)
        assert (
            await conn.fetchval("SELECT count(*) FROM relations WHERE originator = $1", created["metadata"]["uid"]) == 0
        )


async def test_the_same_name_lives_in_two_projects(catalog, http):
    await create(http, catalog, COMPONENT, scope="account.acme.web")
    await create(http, catalog, COMPONENT, scope="account.acme.mobile")
    await create(http, catalog, COMPONENT, scope="account.acme.web", status=409)
    status, entity, _ = await by_name(http, catalog, "component", "petstore", scope="account.acme.mobile")
    assert status == 200 and entity["metadata"]["annotations"]["seed-idp.dev/scope"] == "account.acme.mobile"
    assert (await by_name(http, catalog, "component", "petstore"))[0] == 404


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e["metadata"].update(name="not valid!"), "$.metadata.name"),
        (lambda e: e["spec"].pop("owner"), "$.spec.owner"),
        (lambda e: e.update(extra=1), "$.extra"),
        (lambda e: e["spec"].update(dependsOn=["no-kind"]), "$.spec.dependsOn[0]"),
        (lambda e: e["metadata"].update(tags="java"), "$.metadata.tags"),
    ],
)
async def test_invalid_entities_are_rejected_naming_the_field(catalog, http, mutate, field):
    entity = copy.deepcopy(COMPONENT)
    mutate(entity)
    problem = await create(http, catalog, entity, status=400)
    assert field in [e["field"] for e in problem["errors"]]
    async with http.get(f"{catalog.url}/api/catalog/entities") as r:
        assert await r.json() == []


async def test_bad_scope_body_and_path_mismatch(catalog, http):
    problem = await create(http, catalog, COMPONENT, scope="acme", status=400)
    assert problem["errors"][0]["field"] == "query.scope"
    async with http.post(
        f"{catalog.url}/api/catalog/entities", data=b"[1]", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400
    await create(http, catalog, COMPONENT)
    async with http.put(f"{catalog.url}/api/catalog/entities/by-name/component/default/other", json=COMPONENT) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.metadata.name"
    async with http.get(f"{catalog.url}/api/catalog/entities/by-uid/not-a-uuid") as r:
        assert r.status == 404
    async with http.get(f"{catalog.url}/api/catalog/entities", params={"filter": "=x"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "query.filter"


async def test_every_mutation_is_recorded_by_audit_with_its_changes(catalog, http, make_settings):
    async with running_service(AUDIT, make_settings(AuditSettings)) as audit:
        created = await create(http, catalog, COMPONENT, scope="account.acme")
        _, current, _ = await by_name(http, catalog, "component", "petstore", scope="account.acme")
        current["spec"]["lifecycle"] = "production"
        async with http.put(
            f"{catalog.url}/api/catalog/entities/by-name/component/default/petstore",
            params={"scope": "account.acme"},
            json=current,
        ) as r:
            assert r.status == 200
        async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{created['metadata']['uid']}") as r:
            assert r.status == 204

        async def trail():
            async with http.get(
                f"{audit.url}/api/audit/events", params={"type": "catalog.entity", "scope": "account"}
            ) as r:
                items = (await r.json())["items"]
                return items if len(items) == 3 else None

        items = await eventually(trail)
    assert [i["type"] for i in items] == ["catalog.entity.deleted", "catalog.entity.updated", "catalog.entity.created"]
    assert all(i["scope"] == "account.acme" and i["resource"]["id"] == "component:default/petstore" for i in items)
    assert items[1]["data"]["changes"] == {"spec.lifecycle": {"before": "experimental", "after": "production"}}
    assert items[0]["actor"] == {"kind": "user", "id": "dev-admin"}
