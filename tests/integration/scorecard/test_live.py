"""Live evaluation: catalog changes, relation targets, custom data and scorecard edits re-evaluate exactly the
affected checks; unchanged results write and emit nothing."""

from __future__ import annotations

from services.scorecard import service
from tests.helpers import eventually
from tests.integration.scorecard.helpers import (
    GROUP,
    component,
    create_entity,
    create_scorecard,
    readiness,
    replace_entity,
    report,
    wait_for_status,
)


async def score_events(pool) -> list[bytes]:
    return [
        r["payload"]
        for r in await pool.fetch("SELECT payload FROM outbox WHERE subject = 'idp.evt.scorecard.score.changed'")
    ]


async def test_entity_changes_update_results_scores_and_history(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("petstore"))
    await create_scorecard(http, scorecard, readiness())
    body = await wait_for_status(http, scorecard, "petstore", "production", "fail")
    card = body["scorecards"][0]
    checks = {c["check"]: c for c in card["checks"]}
    assert checks["production"]["found"] == "experimental"
    assert checks["production"]["expected"] == 'spec.lifecycle equals "production"'
    assert checks["production"]["explanation"] == 'expected spec.lifecycle equals "production"; found "experimental"'
    assert checks["owner-group"]["status"] == "pass" and checks["owner-group"]["found"] == ["group:default/team-a"]
    assert checks["coverage"]["status"] == "fail" and checks["coverage"]["found"] is None
    assert (card["score"], card["level"]) == (60.0, "Bronze")

    await replace_entity(http, catalog, component("petstore", lifecycle="production"))
    body = await wait_for_status(http, scorecard, "petstore", "production", "pass")
    assert body["scorecards"][0]["score"] == 80.0
    pool = scorecard.deps.pool
    history = await pool.fetch("SELECT check_id, previous, status FROM result_history")
    assert [tuple(r) for r in history] == [("production", "fail", "pass")]
    events = await eventually(lambda: score_events(pool))
    assert b'"previous_score":60.0' in events[0] and b'"score":80.0' in events[0]
    async with http.get(f"{scorecard.url}/metrics") as r:
        assert 'idp_scorecard_checks_evaluated_total{status="pass"}' in await r.text()


async def test_a_relation_target_change_re_evaluates_the_entities_that_depend_on_it(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("legacy"))
    await create_entity(http, catalog, component("shop", dependsOn=["component:legacy"]))
    await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "shop", "no-deprecated-deps", "pass")
    await replace_entity(http, catalog, component("legacy", lifecycle="deprecated"))
    body = await wait_for_status(http, scorecard, "shop", "no-deprecated-deps", "fail")
    checks = {c["check"]: c for c in body["scorecards"][0]["checks"]}
    assert checks["no-deprecated-deps"]["found"] == ["component:default/legacy"]


async def test_custom_data_is_evaluated_when_it_arrives(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("petstore"))
    await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "petstore", "coverage", "fail")
    item = {"entity": "component:default/petstore", "values": {"coverage": 83.5}}
    async with http.post(f"{scorecard.url}/api/scorecard/data", json={"items": [item]}) as r:
        assert r.status == 200 and (await r.json()) == {"changed": 1}
    body = await wait_for_status(http, scorecard, "petstore", "coverage", "pass")
    assert {c["check"]: c for c in body["scorecards"][0]["checks"]}["coverage"]["found"] == 83.5
    async with http.post(f"{scorecard.url}/api/scorecard/data", json={"items": [item]}) as r:
        assert (await r.json()) == {"changed": 0}


async def test_an_edited_check_is_evaluated_again_and_unchanged_results_write_nothing(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("petstore"))
    created = await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "petstore", "production", "fail")
    edited = readiness()
    edited["checks"][1]["rule"] = {"op": "in", "path": "spec.lifecycle", "values": ["production", "experimental"]}
    async with http.put(
        f"{scorecard.url}/api/scorecard/scorecards/readiness", json=edited, headers={"If-Match": f'"{created["etag"]}"'}
    ) as r:
        assert r.status == 200, await r.text()
    await wait_for_status(http, scorecard, "petstore", "production", "pass")

    pool = scorecard.deps.pool
    await eventually(lambda: _no_jobs(pool))
    before = await pool.fetchval("SELECT count(*) FROM outbox")
    changed_at = await pool.fetchval("SELECT max(changed_at) FROM results")
    summary = await service.evaluate_entities(pool, None)
    assert summary.checks_evaluated == 4 and summary.results_changed == 0 and summary.scores_changed == 0
    assert await pool.fetchval("SELECT count(*) FROM outbox") == before
    assert await pool.fetchval("SELECT max(changed_at) FROM results") == changed_at


async def _no_jobs(pool) -> bool:
    return await pool.fetchval("SELECT count(*) FROM evaluation_jobs") == 0


async def test_an_entity_leaving_the_filter_or_the_catalog_loses_its_results(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    created = await create_entity(http, catalog, component("petstore"))
    await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "petstore", "production", "fail")
    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{created['metadata']['uid']}") as r:
        assert r.status == 204

    async def gone():
        return await report(http, scorecard, "petstore") is None

    await eventually(gone)
    assert await scorecard.deps.pool.fetchval("SELECT count(*) FROM results") == 0


async def test_entities_created_before_the_service_started_are_synced(catalog, make_settings, http, tmp_path):
    from services.scorecard.app import DEFINITION, Settings
    from shared.service import running_service

    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("early"))
    async with running_service(DEFINITION, make_settings(Settings)) as scorecard:
        await create_scorecard(http, scorecard, readiness())
        await wait_for_status(http, scorecard, "early", "owner-group", "pass")


async def test_poison_events_go_to_the_dead_letter_api_and_never_stall_the_stream(catalog, scorecard, http):
    js = scorecard.deps.js
    await js.publish("idp.evt.test.thing.created", b"{not an event")
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("petstore"))
    await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "petstore", "production", "fail")

    async def dead_letters():
        async with http.get(f"{scorecard.url}/api/scorecard/dead-letters") as r:
            return (await r.json())["items"]

    [letter] = await eventually(dead_letters)
    assert letter["original_subject"] == "idp.evt.test.thing.created"
    assert letter["reason"].startswith("undecodable") and letter["payload"] == "{not an event"
    async with http.get(f"{scorecard.url}/api/scorecard/dead-letters", params={"after": letter["sequence"]}) as r:
        assert (await r.json())["items"] == []


async def test_changes_during_a_catalog_outage_are_read_again_when_it_is_back(make_settings, http):
    from services.catalog.app import DEFINITION as CATALOG
    from services.catalog.app import Settings as CatalogSettings
    from services.scorecard.app import DEFINITION, Settings
    from shared.bus import publish_event
    from shared.events import SYSTEM, ResourceRef, new_event
    from shared.service import running_service

    async with running_service(DEFINITION, make_settings(Settings)) as scorecard:
        async with running_service(CATALOG, make_settings(CatalogSettings)) as catalog:
            await create_entity(http, catalog, GROUP)
            created = await create_entity(http, catalog, component("petstore"))
            await create_scorecard(http, scorecard, readiness())
            await wait_for_status(http, scorecard, "petstore", "production", "fail")
        uid = created["metadata"]["uid"]
        update = new_event(
            "catalog.entity.updated",
            source="catalog",
            actor=SYSTEM,
            resource=ResourceRef("entity", "component:default/petstore"),
            # An owner change changes relations: only the catalog can say what the entity looks like now.
            data={"uid": uid, "changes": {"spec.owner": {"before": "team-a", "after": "team-b"}}},
        )
        await publish_event(scorecard.deps.js, update)
        pool = scorecard.deps.pool

        async def stale() -> bool:
            return await pool.fetchval("SELECT count(*) FROM stale_entities WHERE uid = $1", uid) == 1

        await eventually(stale)
        async with running_service(CATALOG, make_settings(CatalogSettings)) as catalog:
            await replace_entity(http, catalog, component("petstore", lifecycle="production"))
            await wait_for_status(http, scorecard, "petstore", "production", "pass")

            async def refreshed() -> bool:
                return await pool.fetchval("SELECT count(*) FROM stale_entities") == 0

            await eventually(refreshed)
        async with http.get(f"{scorecard.url}/api/scorecard/dead-letters") as r:
            assert (await r.json())["items"] == []


async def test_relations_a_target_gains_without_an_event_of_its_own_are_evaluated(catalog, scorecard, http):
    await create_entity(http, catalog, GROUP)
    teams = {
        "id": "teams",
        "name": "Teams own software",
        "owner": "group:default/platform",
        "filter": {"kinds": ["Group"]},
        "checks": [{"id": "owns", "name": "Owns a component", "rule": {"op": "relation", "type": "ownerOf"}}],
    }
    await create_scorecard(http, scorecard, teams)
    await wait_for_status(http, scorecard, "team-a", "owns", "fail", card="teams", kind="group")
    created = await create_entity(http, catalog, component("petstore"))
    body = await wait_for_status(http, scorecard, "team-a", "owns", "pass", card="teams", kind="group")
    assert body["scorecards"][0]["checks"][0]["found"] == ["component:default/petstore"]
    async with http.delete(f"{catalog.url}/api/catalog/entities/by-uid/{created['metadata']['uid']}") as r:
        assert r.status == 204
    await wait_for_status(http, scorecard, "team-a", "owns", "fail", card="teams", kind="group")


async def test_event_window_checks_count_events_about_the_entity(catalog, scorecard, http):
    from shared.bus import publish_event
    from shared.events import SYSTEM, ResourceRef, new_event

    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("petstore"))
    runs = {
        "id": "delivery",
        "name": "Delivery",
        "owner": "group:default/platform",
        "checks": [
            {
                "id": "deployed",
                "name": "A successful run in 30 days",
                "rule": {"op": "events", "type": "workflow.run.succeeded", "within_days": 30},
            }
        ],
    }
    await create_scorecard(http, scorecard, runs)
    await wait_for_status(http, scorecard, "petstore", "deployed", "fail", card="delivery")
    run = new_event(
        "workflow.run.succeeded",
        source="workflow",
        actor=SYSTEM,
        resource=ResourceRef("run", "run-1"),
        data={"entityRef": "component:petstore"},
    )
    await publish_event(scorecard.deps.js, run)
    body = await wait_for_status(http, scorecard, "petstore", "deployed", "pass", card="delivery")
    assert body["scorecards"][0]["checks"][0]["found"] == 1
