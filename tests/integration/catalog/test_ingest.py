"""The ingestion API: extra properties on existing entities that survive refreshes of their YAML."""

from __future__ import annotations

import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service

YAML = """apiVersion: backstage.io/v1alpha1
kind: Component
metadata: {{name: payments, annotations: {{github.com/project-slug: acme/payments}}}}
spec: {{type: service, lifecycle: {lifecycle}, owner: team-a}}
"""


@pytest_asyncio.fixture
async def catalog(make_settings, http, tmp_path):
    (tmp_path / "catalog-info.yaml").write_text(YAML.format(lifecycle="experimental"))
    settings = make_settings(CatalogSettings, file_location_roots=str(tmp_path), refresh_interval_seconds=3600)
    async with running_service(CATALOG, settings) as service:
        async with http.post(
            f"{service.url}/api/catalog/locations", json={"type": "file", "target": str(tmp_path / "catalog-info.yaml")}
        ) as r:
            assert r.status == 201
        yield service


async def ingest(http, catalog, body, status=200):
    async with http.post(f"{catalog.url}/api/catalog/ingest", json=body) as r:
        answer = await r.json()
        assert r.status == status, answer
        return answer


async def payments(http, catalog):
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/component/default/payments") as r:
        return await r.json()


async def test_ingested_properties_are_served_filterable_and_survive_refresh(catalog, http, tmp_path):
    body = {
        "items": [
            {
                "entityRef": "component:payments",
                "properties": {
                    "metadata.annotations.pagerduty.com/service-id": "P123",
                    "metadata.custom.cost_center": "cc-42",
                    "spec.owner": "team-b",
                },
            }
        ]
    }
    assert await ingest(http, catalog, body) == {"updated": 1, "unchanged": 0}
    entity = await payments(http, catalog)
    assert entity["metadata"]["annotations"]["pagerduty.com/service-id"] == "P123"
    assert entity["metadata"]["annotations"]["github.com/project-slug"] == "acme/payments"
    assert entity["metadata"]["custom"] == {"cost_center": "cc-42"}
    assert {"type": "ownedBy", "targetRef": "group:default/team-b"} in entity["relations"]
    async with http.get(
        f"{catalog.url}/api/catalog/entities", params={"filter": "metadata.annotations.pagerduty.com/service-id=p123"}
    ) as r:
        assert [e["metadata"]["name"] for e in await r.json()] == ["payments"]

    (tmp_path / "catalog-info.yaml").write_text(YAML.format(lifecycle="production"))
    async with http.post(f"{catalog.url}/api/catalog/refresh", json={"entityRef": "component:payments"}) as r:
        assert r.status == 200
    entity = await payments(http, catalog)
    assert entity["spec"]["lifecycle"] == "production"  # the YAML changed ...
    assert entity["spec"]["owner"] == "team-b"  # ... and the ingested values survived
    assert entity["metadata"]["annotations"]["pagerduty.com/service-id"] == "P123"

    assert await ingest(http, catalog, body) == {"updated": 0, "unchanged": 1}
    replaced = {
        "mode": "replace",
        "items": [{"entityRef": "component:payments", "properties": {"metadata.labels.tier": "gold"}}],
    }
    await ingest(http, catalog, replaced)
    entity = await payments(http, catalog)
    assert entity["spec"]["owner"] == "team-a" and entity["metadata"]["labels"] == {"tier": "gold"}
    assert "pagerduty.com/service-id" not in entity["metadata"]["annotations"]


async def test_bad_ingest_requests_write_nothing(catalog, http):
    before = await payments(http, catalog)
    cases = [
        (
            {"entityRef": "component:payments", "properties": {"metadata.name": "x"}},
            "$.items[1].properties.metadata.name",
        ),
        ({"entityRef": "component:payments", "properties": {"kind": "API"}}, "$.items[1].properties.kind"),
        ({"entityRef": "component:nope", "properties": {"spec.tier": 1}}, "$.items[1].entityRef"),
        ({"entityRef": "component:payments", "properties": {"metadata.tags": "not-a-list"}}, "$.items[1].properties"),
    ]
    for bad, field in cases:
        good = {"entityRef": "component:payments", "properties": {"metadata.labels.ok": "yes"}}
        problem = await ingest(http, catalog, {"items": [good, bad]}, status=400)
        assert problem["errors"][0]["field"] == field, problem
    assert (await payments(http, catalog))["metadata"]["etag"] == before["metadata"]["etag"]
