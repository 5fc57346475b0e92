"""Alert rules: a group's average below a threshold and a check's pass-rate drop trigger once, emit
`scorecard.alert.triggered` and reach the configured webhook (a loopback aiohttp server); deliveries are retried
with backoff on 5xx and connection errors, not on 4xx, and a delivery that fails every attempt stays visible."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import pytest_asyncio
from aiohttp import web

from services.scorecard import alerts, webhook
from services.scorecard.webhook import RetryPolicy
from shared.service import RunningService
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


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[str, list]]:
    """A webhook receiver answering `received[i]`'s status from `answers` (then 204), recording what it got."""
    received: list = []
    answers: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((request.headers["X-IDP-Delivery"], await request.json()))
        return web.Response(status=answers.pop(0) if answers else 204)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/hook", received, answers
    await runner.cleanup()


async def test_alerts_trigger_once_and_reach_the_webhook(catalog, scorecard, http, receiver):
    url, received, _ = receiver
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
    assert received[0][1]["alerts"][0]["subject"] == "group:default/team-a"
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


QUICK = RetryPolicy(max_attempts=4, backoff_seconds=0.01, max_backoff_seconds=0.05, timeout_seconds=5)


async def trigger_low_average(http, catalog, scorecard: RunningService, url: str) -> str:
    """One alert (team-a's average below 90) sent to `url`; the id of its delivery."""
    await create_entity(http, catalog, GROUP)
    await create_entity(http, catalog, component("a", lifecycle="production"))
    await create_scorecard(http, scorecard, readiness())
    await wait_for_status(http, scorecard, "a", "production", "pass")
    rule = {
        "id": "low",
        "name": "Low",
        "scorecard": "readiness",
        "condition": {"kind": "group-average-below", "threshold": 90},
    }
    async with http.put(f"{scorecard.url}/api/scorecard/alert-rules/low", json=rule) as r:
        assert r.status == 200, await r.text()
    assert len(await alerts.evaluate_alerts(scorecard.deps.pool, url, policy=QUICK)) == 1
    async with http.get(f"{scorecard.url}/api/scorecard/alert-deliveries") as r:
        return (await r.json())["items"][0]["id"]


async def delivery_when_finished(http, scorecard: RunningService, delivery_id: str) -> dict:
    """Attempt due deliveries until this one is delivered or failed."""

    async def finished() -> dict | None:
        await webhook.deliver_due(scorecard.deps.pool, QUICK)
        async with http.get(f"{scorecard.url}/api/scorecard/alert-deliveries/{delivery_id}") as r:
            body = await r.json()
        return body if body["status"] != "pending" else None

    return await eventually(finished)


async def test_a_delivery_is_retried_after_server_errors_until_delivered(catalog, scorecard, http, receiver):
    url, received, answers = receiver
    answers += [500, 503]
    delivery_id = await trigger_low_average(http, catalog, scorecard, url)
    delivery = await delivery_when_finished(http, scorecard, delivery_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("delivered", 3, 204)
    assert delivery["destination"] == url.rsplit("/", 1)[0] and delivery["alerts"][0]["rule"] == "low"
    assert [d for d, _ in received] == [delivery_id] * 3  # the same delivery id: receivers deduplicate by it
    assert all(body == received[0][1] for _, body in received)


async def test_a_delivery_failing_every_attempt_is_kept_failed_and_can_be_sent_again(
    catalog, scorecard, http, receiver
):
    url, received, answers = receiver
    answers += [500] * 10
    delivery_id = await trigger_low_average(http, catalog, scorecard, url)
    delivery = await delivery_when_finished(http, scorecard, delivery_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("failed", 4, 500)
    assert delivery["last_error"] == "HTTP 500 Internal Server Error" and delivery["finished_at"]
    assert len(received) == 4
    async with http.get(f"{scorecard.url}/api/scorecard/alert-deliveries", params={"status": "failed"}) as r:
        assert [d["id"] for d in (await r.json())["items"]] == [delivery_id]
    async with http.get(f"{scorecard.url}/api/scorecard/alert-deliveries", params={"cursor": "nope"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "query.cursor"
    events = await scorecard.deps.pool.fetch("SELECT subject FROM outbox ORDER BY seq")
    assert [e["subject"] for e in events].count("idp.evt.scorecard.alert_delivery.failed") == 1

    answers.clear()
    async with http.post(f"{scorecard.url}/api/scorecard/alert-deliveries/{delivery_id}/retry") as r:
        assert r.status == 200, await r.text()
        again = await r.json()
    assert (again["status"], again["attempts"], again["last_status"]) == ("delivered", 1, 204)
    async with http.post(f"{scorecard.url}/api/scorecard/alert-deliveries/not-an-id/retry") as r:
        assert r.status == 404


async def test_client_errors_are_not_retried_and_connection_errors_are(catalog, scorecard, http, receiver):
    url, _, answers = receiver
    answers.append(400)
    delivery_id = await trigger_low_average(http, catalog, scorecard, url)
    delivery = await delivery_when_finished(http, scorecard, delivery_id)
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("failed", 1, 400)

    async with scorecard.deps.pool.acquire() as conn:
        unreachable = await webhook.queue(conn, "http://127.0.0.1:9/hook", [])
    delivery = await delivery_when_finished(http, scorecard, unreachable)
    assert (delivery["status"], delivery["attempts"], delivery["last_status"]) == ("failed", 4, None)
    assert delivery["last_error"].startswith("ClientConnectorError")
