"""The audit HTTP API: filters, pagination, export, stats, settings, and problem+json for bad input."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import msgspec
import pytest

from services.audit import service
from tests.helpers import eventually, sample_event


async def seed(audit, n=25):
    events = []
    for i in range(n):
        scope = ["account", "account.acme", "account.acme.web", "account.other"][i % 4]
        kind = "catalog.entity.updated" if i % 2 else "identity.user.created"
        events.append(sample_event(i, type=kind, scope=scope))
    await service.append_events(audit.deps.pool, events)
    return events


async def get_items(http, audit, **params):
    async with http.get(f"{audit.url}/api/audit/events", params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_filters_select_the_right_events(audit, http):
    events = await seed(audit)
    page = await get_items(http, audit, type="catalog", limit=100)
    assert len(page["items"]) == 12 and {i["type"] for i in page["items"]} == {"catalog.entity.updated"}
    assert len((await get_items(http, audit, type="catalog.entity.updated"))["items"]) == 12
    assert (await get_items(http, audit, type="catalog.entity"))["items"]
    assert not (await get_items(http, audit, type="catalog.ent"))["items"]

    assert len((await get_items(http, audit, scope="account.acme"))["items"]) == 12
    assert len((await get_items(http, audit, scope="account.acme", include_subscopes="false"))["items"]) == 6
    assert len((await get_items(http, audit, actor="user-3"))["items"]) == len(
        [e for e in events if e.actor.id == "user-3"]
    )
    assert [i["id"] for i in (await get_items(http, audit, resource_kind="thing", resource_id="thing-7"))["items"]] == [
        events[7].id
    ]
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert not (await get_items(http, audit, since=future))["items"]
    assert len((await get_items(http, audit, until=future))["items"]) == 25


async def test_cursor_pagination_walks_newest_first_without_gaps(audit, http):
    await seed(audit, 25)
    seen, cursor = [], None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = await get_items(http, audit, **params)
        seen += [i["seq"] for i in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(range(25, 0, -1))


async def test_trace_id_filter(audit, http):
    trace_id = "ab" * 16
    event = msgspec.structs.replace(
        sample_event(1), trace=msgspec.structs.replace(sample_event().trace, traceparent=f"00-{trace_id}-{'cd' * 8}-01")
    )
    await service.append_events(audit.deps.pool, [event, sample_event(2)])
    items = (await get_items(http, audit, trace_id=trace_id))["items"]
    assert [i["id"] for i in items] == [event.id]


async def test_export_streams_jsonl_and_csv(audit, http):
    events = await seed(audit, 30)
    async with http.get(f"{audit.url}/api/audit/export", params={"format": "jsonl", "type": "identity"}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert [line["id"] for line in lines] == [e.id for e in events if e.type.startswith("identity")]
    async with http.get(f"{audit.url}/api/audit/export", params={"format": "csv"}) as r:
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert len(rows) == 30 and rows[0]["id"] == events[0].id and json.loads(rows[0]["data"]) == {"n": 0}


async def test_stats_count_by_day_and_type(audit, http):
    await seed(audit, 10)
    async with http.get(f"{audit.url}/api/audit/stats") as r:
        items = (await r.json())["items"]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert {(i["day"], i["type"], i["count"]) for i in items} == {
        (today, "catalog.entity.updated", 5),
        (today, "identity.user.created", 5),
    }


async def test_verify_route_reports_the_chain(audit, http):
    await seed(audit, 5)
    async with http.get(f"{audit.url}/api/audit/verify") as r:
        assert await r.json() == {"ok": True, "checked": 5, "from_seq": 1, "to_seq": 5, "first_error": None}


async def test_settings_change_is_an_event_that_audit_records(audit, http):
    async with http.get(f"{audit.url}/api/audit/settings") as r:
        etag = r.headers["ETag"]
        assert (await r.json())["retention_days"] == 365
    async with http.put(
        f"{audit.url}/api/audit/settings", json={"retention_days": 30}, headers={"If-Match": etag}
    ) as r:
        assert r.status == 200 and (await r.json())["retention_days"] == 30
    async with http.put(
        f"{audit.url}/api/audit/settings", json={"retention_days": 31}, headers={"If-Match": etag}
    ) as r:
        assert r.status == 412
        assert r.content_type == "application/problem+json"

    async def recorded():
        return (await get_items(http, audit, type="audit.settings.updated"))["items"]

    items = await eventually(recorded)
    assert items[0]["actor"] == {"kind": "user", "id": "dev-admin"}
    assert items[0]["data"]["changes"] == {"retention_days": {"before": 365, "after": 30}}


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "status", "field"),
    [
        ("GET", "/api/audit/events", {"limit": "0"}, None, 400, "query.limit"),
        ("GET", "/api/audit/events", {"limit": "lots"}, None, 400, "query.limit"),
        ("GET", "/api/audit/events", {"since": "yesterday"}, None, 400, "query.since"),
        ("GET", "/api/audit/events", {"cursor": "!!"}, None, 400, "query.cursor"),
        ("GET", "/api/audit/events", {"trace_id": "xyz"}, None, 400, "query.trace_id"),
        ("GET", "/api/audit/events", {"bogus": "1"}, None, 400, "query"),
        ("GET", "/api/audit/export", {"format": "xml"}, None, 400, "query.format"),
        ("GET", "/api/audit/stats", {"until": "soon"}, None, 400, "query.until"),
        ("PUT", "/api/audit/settings", {}, b'{"retention_days": 0}', 400, "$.retention_days"),
        ("PUT", "/api/audit/settings", {}, b'{"retention_days": "x"}', 400, "$.retention_days"),
        ("PUT", "/api/audit/settings", {}, b'{"retention": 3}', 400, "$"),
        ("PUT", "/api/audit/settings", {}, b"{not json", 400, "$"),
        ("PUT", "/api/audit/settings", {}, b"[]", 400, "$"),
    ],
)
async def test_bad_input_gets_problem_json_naming_the_field(audit, http, method, path, params, body, status, field):
    headers = {"Content-Type": "application/json"}
    async with http.request(method, f"{audit.url}{path}", params=params, data=body, headers=headers) as r:
        assert r.status == status
        assert r.content_type == "application/problem+json"
        problem = await r.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert any(e["field"].startswith(field) for e in problem["errors"]), problem


async def test_wrong_content_type_and_oversized_body(audit, http):
    async with http.put(
        f"{audit.url}/api/audit/settings",
        data="retention_days=3",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as r:
        assert r.status == 415 and r.content_type == "application/problem+json"
    big = b'{"retention_days": 3, "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    async with http.put(f"{audit.url}/api/audit/settings", data=big, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 413 and r.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "path", ["/api/audit/events", "/api/audit/export", "/api/audit/verify", "/api/audit/stats", "/api/audit/settings"]
)
async def test_routes_require_authentication(audit, anonymous_http, path):
    async with anonymous_http.get(f"{audit.url}{path}") as r:
        assert r.status == 401 and r.content_type == "application/problem+json"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    async with anonymous_http.get(f"{audit.url}{path}", headers={"Authorization": "Bearer wrong-token"}) as r:
        assert r.status == 401


async def test_unknown_route_and_method_are_problems(audit, http):
    async with http.get(f"{audit.url}/api/audit/nope") as r:
        assert r.status == 404 and r.content_type == "application/problem+json"
    async with http.delete(f"{audit.url}/api/audit/settings") as r:
        assert r.status == 405 and r.content_type == "application/problem+json"
