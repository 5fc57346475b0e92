"""Alert rules: a group's average below a threshold and a check's pass-rate drop trigger once, emit
`scorecard.alert.triggered` and reach the configured webhook (a loopback aiohttp server)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest_asyncio
from aiohttp import web

from services.scorecard import alerts
from tests.integration.scorecard.helpers import (
    GROUP,
    component,
    create_entity,
    create_scorecard,
    readiness,
    replace_entity,
    wait_for_status,
)


@pytest_asyncio.fixture
async def webhook() -> AsyncIterator[tuple[str, list]]:
    received: list = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/hook", received
    await runner.cleanup()


async def test_alerts_trigger_once_and_reach_the_webhook(catalog, scorecard, http, webhook):
    url, received = webhook
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("a", lifecycle="production"))
    await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "a", "production", "pass")
    rules = f"{scorecard.url}/api/scorecard/alert-rules"
    low = {
        "id": "low",
        "name": "Low average",
        "scorecard": "readiness",
        "condition": {"kind": "group-average-below", "threshold": 90},
    }
    drop = {
        "id": "drop",
        "name": "Production pass rate drop",
        "scorecard": "readiness",
        "condition": {"kind": "check-pass-rate-drop", "check": "production", "points": 50},
    }
    for body in (low, drop):
        async with http.put(f"{rules}/{body['id']}", json=body) as r:
            assert r.status == 200, await r.text()
    async with http.put(f"{rules}/bad", json={**low, "id": "bad", "scorecard": "nope"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.scorecard"

    pool = scorecard.deps.pool
    first = await alerts.evaluate_alerts(pool, url)
    assert [(a.rule, a.subject, a.value) for a in first] == [("low", "group:default/team-a", 80.0)]
    assert received[0]["alerts"][0]["subject"] == "group:default/team-a"
    assert await alerts.evaluate_alerts(pool, url) == []  # still firing: not triggered again

    await replace_entity(http, catalog, component("a", lifecycle="experimental"))
    await wait_for_status(http, scorecard, "a", "production", "fail")
    later = await alerts.evaluate_alerts(pool, url, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1))
    assert [(a.rule, a.subject, a.value) for a in later] == [("drop", "production", 100.0)]
    async with http.get(f"{rules}/drop") as r:
        assert (await r.json())["firing"] == ["production"]
    subjects = [r["subject"] for r in await pool.fetch("SELECT subject FROM outbox ORDER BY seq")]
    assert subjects.count("idp.evt.scorecard.alert.triggered") == 2
    assert subjects.count("idp.evt.scorecard.alert_rule.created") == 2
    assert len(received) == 2
