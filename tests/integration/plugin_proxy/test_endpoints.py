"""Proxy endpoints by API (etags, events through the outbox, problem+json) and from the start-up file."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from services.plugin_proxy.app import DEFINITION, Settings
from shared.config import ConfigError
from shared.events import decode_event
from shared.service import running_service

GITLAB = {
    "name": "gitlab",
    "target": "https://gitlab.example.com/api/v4",
    "methods": ["GET", "POST"],
    "credentials": [{"header": "PRIVATE-TOKEN", "secret": "env:GITLAB_TOKEN"}],
    "delegate": {"tags": ["eu", "gitlab"]},
}


async def outbox_events(proxy, type_prefix="plugin_proxy.endpoint"):
    """Events this proxy wrote to its outbox, oldest first."""
    async with proxy.deps.pool.acquire() as conn:
        rows = await conn.fetch("SELECT subject, payload FROM outbox ORDER BY seq")
    return [decode_event(r["payload"]) for r in rows if r["subject"].startswith("idp.evt." + type_prefix)]


async def test_create_read_replace_delete_with_etags_and_events(proxy, http):
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json=GITLAB) as r:
        assert r.status == 201, await r.text()
        etag = r.headers["ETag"]
        created = await r.json()
    assert created["name"] == "gitlab" and created["origin"] == "api" and created["version"] == 1
    async with http.get(f"{proxy.url}/api/proxy/endpoints/gitlab") as r:
        assert r.status == 200 and r.headers["ETag"] == etag
    changed = {k: v for k, v in GITLAB.items() if k != "name"} | {"timeout_seconds": 5}
    async with http.put(f"{proxy.url}/api/proxy/endpoints/gitlab", json=changed, headers={"If-Match": '"7"'}) as r:
        assert r.status == 412 and r.content_type == "application/problem+json"
    async with http.put(f"{proxy.url}/api/proxy/endpoints/gitlab", json=changed, headers={"If-Match": etag}) as r:
        assert r.status == 200 and (await r.json())["timeout_seconds"] == 5
        etag = r.headers["ETag"]
    async with http.delete(f"{proxy.url}/api/proxy/endpoints/gitlab", headers={"If-Match": '"1"'}) as r:
        assert r.status == 412
    async with http.delete(f"{proxy.url}/api/proxy/endpoints/gitlab", headers={"If-Match": etag}) as r:
        assert r.status == 204
    async with http.get(f"{proxy.url}/api/proxy/endpoints/gitlab") as r:
        assert r.status == 404
    events = await outbox_events(proxy)
    assert [e.type for e in events] == [
        "plugin_proxy.endpoint.created",
        "plugin_proxy.endpoint.updated",
        "plugin_proxy.endpoint.deleted",
    ]
    assert events[1].data["changes"] == {"timeout_seconds": {"before": 30.0, "after": 5.0}}
    assert events[0].data["endpoint"]["credentials"] == [
        {"header": "PRIVATE-TOKEN", "secret": "env:GITLAB_TOKEN", "prefix": ""}
    ]


async def test_list_pages_by_name(proxy, http):
    for name in ("c", "a", "b"):
        async with http.post(f"{proxy.url}/api/proxy/endpoints", json={"name": name, "target": "https://x.test"}) as r:
            assert r.status == 201
    async with http.get(f"{proxy.url}/api/proxy/endpoints", params={"limit": 2}) as r:
        page = await r.json()
    assert [i["name"] for i in page["items"]] == ["a", "b"] and page["nextCursor"] == "b"
    async with http.get(f"{proxy.url}/api/proxy/endpoints", params={"cursor": "b"}) as r:
        assert [i["name"] for i in (await r.json())["items"]] == ["c"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad Name", "target": "https://x.test"}, "$.name"),
        ({"name": "agents", "target": "https://x.test"}, "name"),
        ({"name": "ok", "target": "ftp://x.test"}, "$.target"),
        ({"name": "ok", "target": "http://[::1"}, "$.target"),
        ({"name": "ok", "target": "http://x.test:99999/"}, "$.target"),
        ({"name": "ok", "target": "https://x.test", "methods": ["TRACE"]}, "$.methods[0]"),
        ({"name": "ok", "target": "https://x.test", "request_headers": ["Authorization"]}, "$.request_headers[0]"),
        ({"name": "ok", "target": "https://x.test", "request_headers": ["X-A\r\nB"]}, "$.request_headers[0]"),
        (
            {"name": "ok", "target": "https://x.test", "credentials": [{"header": "A", "secret": "plain"}]},
            "$.credentials[0].secret",
        ),
        ({"name": "ok", "target": "https://x.test", "path_rewrite": [{"pattern": "("}]}, "$.path_rewrite[0].pattern"),
        ({"name": "ok", "target": "https://x.test", "allow_networks": ["10.0.0.0/33"]}, "$.allow_networks[0]"),
        ({"name": "ok", "target": "https://x.test", "timeout_seconds": 0}, "$.timeout_seconds"),
        ({"name": "ok", "target": "https://x.test", "surprise": 1}, "$"),
    ],
)
async def test_bad_endpoints_are_problems_naming_the_field(proxy, http, body, field):
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json=body) as r:
        assert r.status == 400 and r.content_type == "application/problem+json"
        problem = await r.json()
    assert field in [e["field"] for e in problem["errors"]], problem


async def test_duplicate_is_a_conflict_and_anonymous_is_401(proxy, http, anonymous_http):
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json={"name": "a", "target": "https://x.test"}) as r:
        assert r.status == 201
    async with http.post(f"{proxy.url}/api/proxy/endpoints", json={"name": "a", "target": "https://x.test"}) as r:
        assert r.status == 409
    async with anonymous_http.get(f"{proxy.url}/api/proxy/endpoints") as r:
        assert r.status == 401 and r.content_type == "application/problem+json"


async def test_endpoints_file_is_applied_at_start_and_again_after_changes(make_settings, tmp_path, http):
    path = tmp_path / "endpoints.yaml"
    path.write_text(
        """
endpoints:
  - name: jira
    target: https://jira.internal
    credentials: [{header: Authorization, prefix: "Bearer ", secret: "vault:kv/jira#token"}]
  - name: wiki
    target: https://wiki.internal
"""
    )
    settings = make_settings(Settings, endpoints_file=str(path))
    async with running_service(DEFINITION, settings) as proxy:
        async with http.get(f"{proxy.url}/api/proxy/endpoints") as r:
            items = (await r.json())["items"]
        assert [(i["name"], i["origin"]) for i in items] == [("jira", "file"), ("wiki", "file")]
    path.write_text("endpoints:\n  - {name: jira, target: 'https://jira2.internal'}\n")
    async with running_service(DEFINITION, settings) as proxy:
        async with http.get(f"{proxy.url}/api/proxy/endpoints") as r:
            items = (await r.json())["items"]
        assert [(i["name"], i["target"]) for i in items] == [("jira", "https://jira2.internal")]
        events = await outbox_events(proxy)
        assert [(e.type, e.resource.id, e.actor.kind) for e in events[2:]] == [
            ("plugin_proxy.endpoint.deleted", "wiki", "system"),
            ("plugin_proxy.endpoint.updated", "jira", "system"),
        ]


async def test_a_bad_endpoints_file_stops_the_start_naming_the_field(make_settings, tmp_path):
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints:\n  - {name: x, target: 'gopher://x'}\n")
    with pytest.raises(ConfigError, match=r"\$\.endpoints\[0\]\.target"):
        async with running_service(DEFINITION, make_settings(Settings, endpoints_file=str(path))):
            pass


async def test_replicas_starting_together_apply_the_file_once(make_settings, tmp_path, http):
    path = tmp_path / "endpoints.yaml"
    path.write_text(
        "endpoints:\n" + "".join(f"  - {{name: e{i}, target: 'https://e{i}.internal'}}\n" for i in range(20))
    )
    settings = make_settings(Settings, endpoints_file=str(path))
    async with contextlib.AsyncExitStack() as stack:
        first, _ = await asyncio.gather(
            *(stack.enter_async_context(running_service(DEFINITION, settings)) for _ in range(2))
        )
        events = await outbox_events(first)
    assert len(events) == 20 and {e.type for e in events} == {"plugin_proxy.endpoint.created"}
