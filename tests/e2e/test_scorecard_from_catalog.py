"""The whole path: an entity update through the catalog's HTTP API is recorded by audit and re-scored by the
scorecard service, each from the same event on the bus."""

from __future__ import annotations

from services.audit.app import DEFINITION as AUDIT
from services.audit.app import Settings as AuditSettings
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from services.scorecard.app import DEFINITION as SCORECARD
from services.scorecard.app import Settings as ScorecardSettings
from shared.service import running_service
from tests.helpers import eventually
from tests.integration.scorecard.helpers import (
    GROUP,
    component,
    create_entity,
    create_scorecard,
    readiness,
    replace_entity,
    wait_for_status,
)


async def test_catalog_update_reaches_audit_and_the_scorecard(make_settings, http):
    async with (
        running_service(CATALOG, make_settings(CatalogSettings)) as catalog,
        running_service(AUDIT, make_settings(AuditSettings)) as audit,
        running_service(SCORECARD, make_settings(ScorecardSettings)) as scorecard,
    ):
        await create_entity(http, catalog, GROUP)
        await create_entity(http, catalog, component("petstore"))
        await create_scorecard(http, scorecard, readiness())
        await wait_for_status(http, scorecard, "petstore", "production", "fail")

        updated = await replace_entity(http, catalog, component("petstore", lifecycle="production"))

        async def audited():
            params = {"type": "catalog.entity.updated"}
            async with http.get(f"{audit.url}/api/audit/events", params=params) as r:
                items = (await r.json())["items"]
            return [i for i in items if i["resource"]["id"] == "component:default/petstore"]

        [record] = await eventually(audited)
        assert record["data"]["uid"] == updated["metadata"]["uid"]
        assert record["data"]["changes"]["spec.lifecycle"] == {"before": "experimental", "after": "production"}
        body = await wait_for_status(http, scorecard, "petstore", "production", "pass")
        assert body["scorecards"][0]["score"] == 80.0

        async def score_change_audited():
            async with http.get(f"{audit.url}/api/audit/events", params={"type": "scorecard.score.changed"}) as r:
                return (await r.json())["items"]

        [change] = await eventually(score_change_audited)
        assert change["data"]["score"] == 80.0 and change["data"]["previous_score"] == 60.0
