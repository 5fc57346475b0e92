"""Entities and scorecards the scorecard tests share."""

from __future__ import annotations

import copy
from typing import Any

from tests.helpers import eventually

GROUP = {
    "apiVersion": "backstage.io/v1alpha1",
    "kind": "Group",
    "metadata": {"name": "team-a"},
    "spec": {"type": "team", "children": []},
}


def component(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, "tags": ["java"]},
        "spec": {"type": "service", "lifecycle": "experimental", "owner": "team-a", **spec},
    }


READINESS = {
    "id": "readiness",
    "name": "Production readiness",
    "owner": "group:default/team-a",
    "levels": ["Bronze", "Gold"],
    "filter": {"kinds": ["Component"]},
    "checks": [
        {
            "id": "owner-group",
            "name": "Owned by an existing group",
            "level": "Bronze",
            "weight": 2,
            "rule": {"op": "relation", "type": "ownedBy", "where": {"op": "equals", "path": "kind", "value": "Group"}},
        },
        {
            "id": "production",
            "name": "In production",
            "level": "Gold",
            "rule": {"op": "equals", "path": "spec.lifecycle", "value": "production"},
        },
        {
            "id": "no-deprecated-deps",
            "name": "Depends on no deprecated component",
            "level": "Gold",
            "rule": {
                "op": "relation",
                "type": "dependsOn",
                "where": {"op": "equals", "path": "spec.lifecycle", "value": "deprecated"},
                "max": 0,
            },
        },
        {
            "id": "coverage",
            "name": "Coverage at least 80",
            "level": "Gold",
            "rule": {"op": "gte", "path": "coverage", "value": 80, "source": "data"},
        },
    ],
}


def readiness(**overrides: Any) -> dict[str, Any]:
    return {**copy.deepcopy(READINESS), **overrides}


async def create_entity(http, catalog, entity, scope="account") -> dict[str, Any]:
    async with http.post(f"{catalog.url}/api/catalog/entities", params={"scope": scope}, json=entity) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def replace_entity(http, catalog, entity, scope="account") -> dict[str, Any]:
    name = entity["metadata"]["name"]
    url = f"{catalog.url}/api/catalog/entities/by-name/{entity['kind']}/default/{name}"
    async with http.put(url, params={"scope": scope}, json=entity) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def create_scorecard(http, scorecard, body) -> dict[str, Any]:
    async with http.post(f"{scorecard.url}/api/scorecard/scorecards", json=body) as r:
        assert r.status == 201, await r.text()
        return await r.json()


async def report(http, scorecard, name, kind="component", scope="account") -> dict[str, Any] | None:
    url = f"{scorecard.url}/api/scorecard/entities/{kind}/default/{name}"
    async with http.get(url, params={"scope": scope}) as r:
        return await r.json() if r.status == 200 else None


def checks_of(body: dict[str, Any] | None, card: str = "readiness") -> dict[str, dict[str, Any]]:
    for item in (body or {}).get("scorecards", []):
        if item["scorecard"] == card:
            return {c["check"]: c for c in item["checks"]}
    return {}


async def wait_for_status(http, scorecard, name, check, status, card="readiness", kind="component") -> dict[str, Any]:
    async def reached():
        body = await report(http, scorecard, name, kind=kind)
        found = checks_of(body, card).get(check)
        return body if found and found["status"] == status else None

    return await eventually(reached)
