"""`POST /api/catalog/convert`: Backstage YAML to the scoped native form and back; bad documents name the path."""

from __future__ import annotations

import pytest_asyncio
import yaml

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from shared.service import running_service

YAML = """apiVersion: backstage.io/v1alpha1
kind: Component
metadata:
  name: checkout
  annotations: {github.com/project-slug: acme/checkout}
spec: {type: service, lifecycle: production, owner: team-a, providesApis: [checkout-api]}
---
apiVersion: backstage.io/v1alpha1
kind: Group
metadata: {name: team-a, namespace: default}
spec: {type: team, children: []}
"""


@pytest_asyncio.fixture
async def catalog(make_settings):
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        yield service


async def convert(http, catalog, body, scope="account", status=200):
    async with http.post(f"{catalog.url}/api/catalog/convert", params={"scope": scope}, json=body) as r:
        answer = await r.json()
        assert r.status == status, answer
        return answer


async def test_backstage_yaml_to_native_and_back(catalog, http):
    native = await convert(http, catalog, {"to": "native", "yaml": YAML}, scope="account.acme.shop")
    checkout, team = native["entities"]
    assert checkout["ref"] == "component:default/checkout@account.acme.shop"
    assert (checkout["identifier"], checkout["owner"], checkout["spec"]) == (
        "checkout",
        "team-a",
        {"providesApis": ["checkout-api"]},
    )
    assert team["namespace"] == "default" and team["scope"] == "account.acme.shop"
    assert yaml.safe_load_all(native["yaml"]) and "identifier: checkout" in native["yaml"]

    back = await convert(http, catalog, {"to": "backstage", "entities": native["entities"]})
    originals = list(yaml.safe_load_all(YAML))
    for original, converted in zip(originals, back["entities"], strict=True):
        assert converted["metadata"]["annotations"].pop("seed-idp.dev/scope") == "account.acme.shop"
        if not converted["metadata"]["annotations"]:
            del converted["metadata"]["annotations"]
        assert converted == original
    # The scope annotation brings the scope back to native, whatever the request's scope.
    again = await convert(http, catalog, {"to": "native", "yaml": back["yaml"]})
    assert again["entities"] == native["entities"]


async def test_bad_documents_refuse_the_conversion_naming_the_path(catalog, http):
    bad = YAML.replace("name: checkout", "name: Bad Name!")
    problem = await convert(http, catalog, {"to": "native", "yaml": bad}, status=400)
    assert [e["field"] for e in problem["errors"]] == ["$.yaml[0].metadata.name"]
    problem = await convert(http, catalog, {"to": "native", "yaml": "a: [1, 2"}, status=400)
    assert problem["errors"][0]["field"] == "$.yaml[0]"
    problem = await convert(http, catalog, {"to": "native", "yaml": "x: 1", "entities": []}, status=400)
    assert problem["errors"][0]["field"] == "$"

    native = (await convert(http, catalog, {"to": "native", "yaml": YAML}))["entities"]
    broken = [{**native[0], "identifier": "no good"}, {**native[1], "ref": "group:default/other@account"}]
    problem = await convert(http, catalog, {"to": "backstage", "entities": broken}, status=400)
    assert [e["field"] for e in problem["errors"]] == ["$.entities[0].identifier", "$.entities[1].ref"]
    problem = await convert(
        http, catalog, {"to": "backstage", "entities": [{**native[0], "scope": "acme"}]}, status=400
    )
    assert problem["errors"][0]["field"] == "$.entities[0].scope"
    problem = await convert(http, catalog, {"to": "backstage", "entities": [{**native[0], "extra": 1}]}, status=400)
    assert problem["errors"][0]["field"].startswith("$.entities[0]")
