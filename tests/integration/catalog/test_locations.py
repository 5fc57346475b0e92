"""Locations: register file targets, ingest, refresh, orphans, conflicts, bad documents, confinement, and the
real Backstage example catalog."""

from __future__ import annotations

import collections
import hashlib
import json

import pytest
import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service
from tests.helpers import BACKSTAGE_EXAMPLES

DATASET = BACKSTAGE_EXAMPLES

GROUP = """apiVersion: backstage.io/v1alpha1
kind: Group
metadata: {name: team-a}
spec: {type: team, children: []}
"""


def component(name: str, owner: str = "team-a", lifecycle: str = "production") -> str:
    return f"""apiVersion: backstage.io/v1alpha1
kind: Component
metadata: {{name: {name}}}
spec: {{type: service, lifecycle: {lifecycle}, owner: {owner}}}
"""


@pytest_asyncio.fixture
async def catalog(make_settings, tmp_path):
    roots = f"{tmp_path}:{DATASET}"
    settings = make_settings(CatalogSettings, file_location_roots=roots, refresh_interval_seconds=3600)
    async with running_service(CATALOG, settings) as service:
        yield service


async def register(http, catalog, target, status=201, **params):
    async with http.post(
        f"{catalog.url}/api/catalog/locations", params=params, json={"type": "file", "target": str(target)}
    ) as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def names(http, catalog, filter_="kind=component"):
    async with http.get(f"{catalog.url}/api/catalog/entities", params={"filter": filter_}) as r:
        return {e["metadata"]["name"]: e for e in await r.json()}


async def refresh(http, catalog, ref):
    async with http.post(f"{catalog.url}/api/catalog/refresh", json={"entityRef": ref}) as r:
        assert r.status == 200, await r.text()


async def test_register_refresh_and_orphan(catalog, http, tmp_path):
    catalog_file = tmp_path / "catalog-info.yaml"
    catalog_file.write_text(GROUP + "---\n" + component("a") + "---\n" + component("b"))
    body = await register(http, catalog, catalog_file)
    assert body["location"]["id"] and body["entities"] == []  # as Backstage: only a dry run lists them
    assert sorted(await names(http, catalog, "kind=component,kind=group")) == ["a", "b", "team-a"]
    entity = (await names(http, catalog))["a"]
    assert entity["metadata"]["annotations"]["backstage.io/managed-by-location"] == f"file:{catalog_file}"

    catalog_file.write_text(GROUP + "---\n" + component("a", lifecycle="deprecated"))
    await refresh(http, catalog, "component:default/a")
    after = await names(http, catalog)
    assert after["a"]["spec"]["lifecycle"] == "deprecated" and after["a"]["metadata"]["generation"] == 2
    assert after["b"]["metadata"]["annotations"]["backstage.io/orphan"] == "true"

    catalog_file.write_text(GROUP + "---\n" + component("a") + "---\n" + component("b"))
    await refresh(http, catalog, "component:default/a")
    assert "backstage.io/orphan" not in (await names(http, catalog))["b"]["metadata"]["annotations"]

    async with http.get(f"{catalog.url}/api/catalog/locations/by-entity/component/default/b") as r:
        assert (await r.json())["id"] == body["location"]["id"]
    async with http.get(f"{catalog.url}/api/catalog/locations") as r:
        assert [item["data"]["id"] for item in await r.json()] == [body["location"]["id"]]
    async with http.delete(f"{catalog.url}/api/catalog/locations/{body['location']['id']}") as r:
        assert r.status == 204
    assert await names(http, catalog, "kind=component,kind=group") == {}
    subjects = {r["subject"] for r in await catalog.deps.pool.fetch("SELECT subject FROM catalog.outbox")}
    assert {
        "idp.evt.catalog.location.added",
        "idp.evt.catalog.entity.orphaned",
        "idp.evt.catalog.entity.updated",
        "idp.evt.catalog.entity.deleted",
        "idp.evt.catalog.location.removed",
    } <= subjects


async def test_one_bad_document_is_reported_and_the_rest_ingests(catalog, http, tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text(component("good") + "---\n" + component("Bad Name!") + "---\n- not an entity\n")
    body = await register(http, catalog, path)
    assert list(await names(http, catalog)) == ["good"]
    messages = [e["message"] for e in body["location"]["errors"]]
    assert len(messages) == 2 and any("metadata.name" in m for m in messages)


async def test_second_location_claiming_an_entity_gets_the_conflict(catalog, http, tmp_path):
    (tmp_path / "first.yaml").write_text(component("shared", owner="team-a"))
    (tmp_path / "second.yaml").write_text(component("shared", owner="team-b"))
    await register(http, catalog, tmp_path / "first.yaml")
    second = await register(http, catalog, tmp_path / "second.yaml")
    assert "conflicting entityRef component:default/shared" in second["location"]["errors"][0]["message"]
    assert (await names(http, catalog))["shared"]["spec"]["owner"] == "team-a"


async def test_locations_outside_the_allowed_roots_are_refused(catalog, http, tmp_path):
    problem = await register(http, catalog, "/etc/hostname", status=400)
    assert problem["errors"][0]["field"] == "$.target"
    (tmp_path / "peek.yaml").write_text(
        "apiVersion: backstage.io/v1alpha1\nkind: API\nmetadata: {name: peek}\n"
        "spec: {type: openapi, lifecycle: production, owner: x, definition: {$text: /etc/hostname}}\n"
    )
    body = await register(http, catalog, tmp_path / "peek.yaml")
    assert body["entities"] == [] and body["location"]["errors"]
    async with http.post(f"{catalog.url}/api/catalog/locations", json={"type": "svn", "target": "svn://x"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.type"
    await register(http, catalog, tmp_path / "peek.yaml", status=409)


async def test_dry_run_reads_without_registering(catalog, http, tmp_path):
    (tmp_path / "dry.yaml").write_text(component("dry"))
    async with http.post(
        f"{catalog.url}/api/catalog/locations",
        params={"dryRun": "true"},
        json={"type": "file", "target": str(tmp_path / "dry.yaml")},
    ) as r:
        body = await r.json()
        # As Backstage's dry run: the generated Location entity first, then what its target holds.
        generated = "generated-" + hashlib.sha1(f"file:{tmp_path / 'dry.yaml'}".encode()).hexdigest()
        assert r.status == 200 and [e["metadata"]["name"] for e in body["entities"]] == [generated, "dry"]
    assert await names(http, catalog) == {}


async def test_the_backstage_example_catalog_ingests_unchanged(catalog, http):
    if not DATASET.is_dir():
        pytest.skip("the Backstage example dataset is not beside the repository")
    examples = DATASET / "catalog-model-examples"
    for root in ("all.yaml", "acme-corp.yaml"):
        body = await register(http, catalog, examples / root)
        assert body["location"].get("errors", []) == [], body["location"]
    async with http.get(f"{catalog.url}/api/catalog/entities") as r:
        entities = await r.json()
    counts = collections.Counter(e["kind"] for e in entities)
    expected = json.loads((DATASET / "expected-counts.json").read_text())
    assert counts == {kind: n for kind, n in expected.items() if kind != "Template"} | {"Location": 11}
    petstore = next(e for e in entities if e["metadata"]["name"] == "petstore-webhook")
    assert "openapi" in petstore["spec"]["definition"]
