"""Scorecard HTTP API: validation as problem+json naming the path, etags, YAML bodies, dry runs and reads."""

from __future__ import annotations

import csv
import datetime as dt
import io

import msgspec
import yaml

from tests.helpers import eventually
from tests.integration.scorecard.helpers import (
    GROUP,
    component,
    create_entity,
    create_scorecard,
    readiness,
    report,
    wait_for_status,
)


async def problem(response) -> dict:
    assert response.content_type == "application/problem+json"
    return await response.json()


async def test_invalid_scorecards_are_rejected_with_the_path_at_fault(scorecard, http):
    url = f"{scorecard.url}/api/scorecard/scorecards"
    bad_op = readiness()
    bad_op["checks"][2]["rule"]["where"] = {"op": "equalz", "path": "x"}
    async with http.post(url, json=bad_op) as r:
        assert r.status == 400
        assert (await problem(r))["errors"][0]["field"] == "$.checks[2].rule.where.op"
    backtracking = readiness()
    backtracking["checks"][1]["rule"] = {"op": "matches", "path": "metadata.name", "pattern": "^(a|a?)+$"}
    async with http.post(url, json=backtracking) as r:
        body = await problem(r)
        assert r.status == 400 and body["errors"][0]["field"] == "$.checks[1].rule.pattern", body
        assert "backtrack catastrophically" in body["detail"]
    async with http.post(url, json=readiness(levels=["Only"])) as r:
        assert r.status == 400 and (await problem(r))["errors"][0]["field"] == "$.checks[0].level"
    async with http.post(url, data=b"{", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    assert (await (await http.get(url)).json())["items"] == []


async def test_crud_with_etags_yaml_and_events(scorecard, http, anonymous_http):
    url = f"{scorecard.url}/api/scorecard/scorecards"
    async with http.post(url, data=yaml.safe_dump(readiness()), headers={"Content-Type": "application/yaml"}) as r:
        assert r.status == 201, await r.text()
        etag = r.headers["ETag"]
    async with http.post(url, json=readiness()) as r:
        assert r.status == 409
    async with http.get(f"{url}/readiness") as r:
        assert r.headers["ETag"] == etag and (await r.json())["spec"]["name"] == "Production readiness"
    async with http.put(f"{url}/readiness", json=readiness(name="Renamed"), headers={"If-Match": '"stale"'}) as r:
        assert r.status == 412
    async with http.put(f"{url}/readiness", json=readiness(name="Renamed"), headers={"If-Match": etag}) as r:
        assert r.status == 200 and r.headers["ETag"] != etag
        etag = r.headers["ETag"]
    async with http.put(f"{url}/readiness", json=readiness(id="other")) as r:
        assert r.status == 400 and (await problem(r))["errors"][0]["field"] == "$.id"
    async with anonymous_http.get(url) as r:
        assert r.status == 401
    async with http.delete(f"{url}/readiness", headers={"If-Match": etag}) as r:
        assert r.status == 204
    async with http.get(f"{url}/readiness") as r:
        assert r.status == 404
    rows = await scorecard.deps.pool.fetch("SELECT subject FROM outbox ORDER BY seq")
    assert [r["subject"].removeprefix("idp.evt.scorecard.scorecard.") for r in rows] == [
        "created",
        "updated",
        "deleted",
    ]


async def test_dry_run_evaluates_a_draft_without_storing_it(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("petstore", lifecycle="production"))
    body = {"scorecard": readiness(), "entities": ["component:petstore", "group:team-a", "component:nope"]}
    async with http.post(f"{scorecard.url}/api/scorecard/dry-run", json=body) as r:
        result = await r.json()
        assert r.status == 200, result
    assert result["missing"] == ["component:nope"] and result["not_applicable"] == ["group:default/team-a"]
    [evaluation] = result["evaluations"]
    assert evaluation["entity"] == "component:default/petstore" and evaluation["score"] == 80.0
    assert await scorecard.deps.pool.fetchval("SELECT count(*) FROM scorecards") == 0


async def test_summary_rollups_csv_and_trends(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("a", lifecycle="production"))
    await create_entity(http, catalog, component("b"))
    await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "a", "production", "pass")
    await wait_for_status(http, scorecard, "b", "production", "fail")
    url = f"{scorecard.url}/api/scorecard/scorecards/readiness"
    async with http.get(f"{url}/summary") as r:
        summary = await r.json()
    assert summary["entities"] == 2 and summary["levels"] == {"Bronze": 2, "Gold": 0}
    production = next(c for c in summary["checks"] if c["check"] == "production")
    assert (production["passed"], production["failed"], production["pass_rate"]) == (1, 1, 0.5)
    assert summary["rollup"] == [
        {"group": "group:default/team-a", "entities": 2, "average_score": 70.0, "pass_rate": 0.625}
    ]
    async with http.get(f"{url}/summary", params={"group_by": "planet"}) as r:
        assert r.status == 400 and (await problem(r))["errors"][0]["field"].startswith("query")

    async with http.get(f"{url}/export") as r:
        assert r.status == 200 and r.content_type == "text/csv"
        rows = list(csv.reader(io.StringIO(await r.text())))
    assert rows[0] == [
        "entity",
        "scope",
        "owner",
        "score",
        "level",
        "owner-group",
        "production",
        "no-deprecated-deps",
        "coverage",
    ]
    assert rows[1][:5] == ["component:default/a", "account", "group:default/team-a", "80.0", "Bronze"]
    assert rows[2][6] == "fail"

    today = dt.datetime.now(dt.UTC).date()
    params = {"scorecard": "readiness", "since": str(today - dt.timedelta(days=2)), "until": str(today)}
    async with http.get(f"{scorecard.url}/api/scorecard/trends", params=params) as r:
        trend = await r.json()
    assert [p["entities"] for p in trend["points"]] == [0, 0, 2]
    assert trend["points"][-1]["average_score"] == 70.0
    async with http.get(f"{scorecard.url}/api/scorecard/trends", params={**params, "entity": "component:a"}) as r:
        assert (await r.json())["points"][-1]["average_score"] == 80.0
    async with http.get(f"{scorecard.url}/api/scorecard/trends", params={**params, "group": "team-a"}) as r:
        assert (await r.json())["points"][-1]["entities"] == 2
    async with http.get(f"{scorecard.url}/api/scorecard/trends", params={**params, "group": "team-b"}) as r:
        assert (await r.json())["points"][-1]["entities"] == 0
    async with http.get(f"{scorecard.url}/api/scorecard/trends", params={**params, "until": "2020-01-01"}) as r:
        assert r.status == 400 and (await problem(r))["errors"][0]["field"] == "query.until"


async def test_file_rules_read_file_locations_under_the_configured_roots(catalog, scorecard, http, tmp_path):
    repo = tmp_path / "petstore"
    repo.mkdir()
    (repo / "Dockerfile").write_text("FROM python:3.11-slim\n")
    (repo / "package.json").write_text('{"engines": {"node": "not json')
    entity = component("petstore")
    entity["metadata"]["annotations"] = {"backstage.io/source-location": f"file:{repo}/"}
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, entity)
    card = readiness(id="files", levels=[])
    card["checks"] = [
        {
            "id": "no-latest",
            "name": "No :latest base image",
            "rule": {
                "op": "file",
                "path": "Dockerfile",
                "rule": {"op": "not", "rule": {"op": "matches", "path": "", "pattern": "^FROM\\s+\\S+:latest"}},
            },
        },
        {
            "id": "node",
            "name": "Node 18+",
            "rule": {
                "op": "file",
                "path": "package.json",
                "format": "json",
                "rule": {"op": "gte", "path": "engines.node", "value": "18", "compare_as": "semver"},
            },
        },
        {"id": "readme", "name": "Has a README", "rule": {"op": "file", "path": "README.md"}},
    ]
    await create_scorecard(http, scorecard, card)
    body = await wait_for_status(http, scorecard, "petstore", "node", "unknown", card="files")
    checks = {c["check"]: c for c in body["scorecards"][0]["checks"]}
    assert checks["no-latest"]["status"] == "pass"
    assert "not valid json" in checks["node"]["reason"]
    assert checks["readme"]["status"] == "fail"


async def test_custom_data_is_validated(scorecard, http):
    url = f"{scorecard.url}/api/scorecard/data"
    async with http.post(url, json={"items": [{"entity": "petstore", "values": {"x": 1}}]}) as r:
        assert r.status == 400 and (await problem(r))["errors"][0]["field"] == "$.items[0].entity"
    async with http.post(url, json={"items": [{"entity": "component:a/b", "values": {"bad key": 1}}]}) as r:
        assert r.status == 400


async def test_an_entity_report_for_an_unknown_entity_is_404(scorecard, http):
    async with http.get(f"{scorecard.url}/api/scorecard/entities/component/default/nope") as r:
        assert r.status == 404 and (await problem(r))["status"] == 404


def test_rules_round_trip_through_yaml():
    text = yaml.safe_dump(readiness())
    assert msgspec.convert(yaml.safe_load(text), dict) == readiness()
    assert eventually


async def test_checks_are_added_replaced_and_removed_one_at_a_time(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("petstore"))
    created = await create_scorecard(http, scorecard, readiness())
    url = f"{scorecard.url}/api/scorecard/scorecards/readiness/checks"
    tagged = {
        "id": "tagged",
        "name": "Tagged",
        "level": "Bronze",
        "rule": {"op": "count", "path": "metadata.tags", "min": 1},
    }
    async with http.put(f"{url}/tagged", json=tagged, headers={"If-Match": '"stale"'}) as r:
        assert r.status == 412
    async with http.put(f"{url}/other", json=tagged) as r:
        assert r.status == 400 and (await problem(r))["errors"][0]["field"] == "$.id"
    async with http.put(f"{url}/tagged", json=tagged, headers={"If-Match": f'"{created["etag"]}"'}) as r:
        assert r.status == 200 and [c["id"] for c in (await r.json())["spec"]["checks"]][-1] == "tagged"
    await wait_for_status(http, scorecard, "petstore", "tagged", "pass")
    async with http.delete(f"{url}/coverage") as r:
        assert r.status == 200 and "coverage" not in [c["id"] for c in (await r.json())["spec"]["checks"]]
    async with http.delete(f"{url}/coverage") as r:
        assert r.status == 404
    pool = scorecard.deps.pool

    async def coverage_gone() -> bool:
        return await pool.fetchval("SELECT count(*) FROM results WHERE check_id = 'coverage'") == 0

    await eventually(coverage_gone)

    async def rescored() -> bool:
        body = await report(http, scorecard, "petstore")
        return body["scorecards"][0]["score"] == 80.0  # owner-group 2 + no-deprecated 1 + tagged 1 of 5

    await eventually(rescored)
