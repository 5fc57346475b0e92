"""Access control enforced by every service with identity-sync's real tokens: 401 without a token, 403 with a
token whose principal lacks the permission, through with it; lists filtered in SQL to the scopes the caller's
bindings reach; denials recorded in the audit trail."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from shared.bus import publish_event
from shared.service import RunningService, running_service
from tests.helpers import eventually, sample_event

OTHER_SERVICES = ["audit", "catalog", "scorecard", "plugin_proxy", "workflow"]


@pytest_asyncio.fixture
async def suite(make_settings) -> AsyncIterator[dict[str, RunningService]]:
    """identity-sync and every other service, each verifying tokens and keeping an access replica."""
    async with contextlib.AsyncExitStack() as stack:
        running = {}
        for name in ["identity_sync", *OTHER_SERVICES]:
            definition = importlib.import_module(f"services.{name}.app").DEFINITION
            settings = make_settings(definition.settings_type)
            running[name] = await stack.enter_async_context(running_service(definition, settings))
        yield running


async def call(http, method: str, url: str, status: int | None = None, **kwargs: Any) -> Any:
    async with http.request(method, url, **kwargs) as r:
        body = await r.json() if r.content_type.endswith("json") else await r.text()
        assert status is None or r.status == status, (r.status, body)
        return body


async def user_with_token(http, identity: RunningService, username: str) -> tuple[str, str]:
    """A real user and an access token identity-sync signed for it."""
    user = await call(http, "POST", f"{identity.url}/api/identity/users", 201, json={"username": username})
    token = await call(http, "POST", f"{identity.url}/api/identity/users/{user['id']}/tokens", 200)
    return user["id"], token["access_token"]


async def grant(http, identity, subject: str, scope: str, role_id: str | None = None, permissions=()) -> int:
    """Bind `subject` at `scope` (and below) to a role; returns the access-control version of the binding."""
    if role_id is None:
        role = await call(
            http,
            "POST",
            f"{identity.url}/api/identity/roles",
            201,
            json={"scope": scope, "name": f"role of {subject}", "permissions": list(permissions)},
        )
        role_id = role["id"]
    group = await call(
        http,
        "POST",
        f"{identity.url}/api/identity/resource-groups",
        201,
        json={"scope": scope, "name": f"reach of {subject}", "all_resources": True, "include_child_scopes": True},
    )
    binding = await call(
        http,
        "POST",
        f"{identity.url}/api/identity/role-bindings",
        201,
        json={"scope": scope, "subject": subject, "role_id": role_id, "resource_group_id": group["id"]},
    )
    return binding["version"]


async def everywhere(suite: dict[str, RunningService], version: int) -> None:
    for service in suite.values():
        assert await service.deps.access.caught_up(version, timeout=10), service.deps.service


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_every_route_of_every_service_is_401_then_403_then_through(suite, http, anonymous_http):
    identity = suite["identity_sync"]
    _, nobody = await user_with_token(http, identity, "nobody")
    root_id, root = await user_with_token(http, identity, "root")
    await everywhere(suite, await grant(http, identity, f"user:{root_id}", "account", role_id="_idp_admin"))
    checked = 0
    for name, service in suite.items():
        document = await call(anonymous_http, "GET", f"{service.url}/openapi.json", 200)
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if "x-permission" not in operation:
                    continue
                url = service.url + path.replace("{", "x").replace("}", "")
                body = {"json": {}} if method in ("post", "put", "patch") else {}
                async with anonymous_http.request(method, url, **body) as r:
                    assert r.status == 401, (name, method, path, r.status)
                async with anonymous_http.request(method, url, headers=bearer(nobody), **body) as r:
                    assert r.status == 403, (name, method, path, r.status)
                    assert r.content_type == "application/problem+json"
                async with anonymous_http.request(method, url, headers=bearer(root), **body) as r:
                    assert r.status not in (401, 403), (name, method, path, r.status, await r.text())
                checked += 1
    assert checked > 100


async def test_lists_show_what_the_callers_bindings_reach_and_denials_are_audited(suite, http, anonymous_http):
    identity, audit = suite["identity_sync"], suite["audit"]
    for n, scope in enumerate(["account.acme.pay", "account.acme", "account.other", "account"]):
        await publish_event(audit.deps.js, sample_event(n, type="test.thing.created", scope=scope))

    async def all_recorded() -> bool:
        body = await call(http, "GET", f"{audit.url}/api/audit/events", 200, params={"type": "test."})
        return len(body["items"]) == 4

    await eventually(all_recorded)
    ann_id, ann = await user_with_token(http, identity, "ann")
    as_ann = {"headers": bearer(ann)}
    await call(anonymous_http, "GET", f"{audit.url}/api/audit/events", 403, **as_ann)  # no binding at all

    await everywhere(
        suite, await grant(http, identity, f"user:{ann_id}", "account.acme", permissions=["audit_event_view"])
    )
    page = await call(anonymous_http, "GET", f"{audit.url}/api/audit/events", 200, params={"type": "test."}, **as_ann)
    assert sorted(item["scope"] for item in page["items"]) == ["account.acme", "account.acme.pay"]
    stats = await call(anonymous_http, "GET", f"{audit.url}/api/audit/stats", 200, params={"type": "test."}, **as_ann)
    assert sum(row["count"] for row in stats["items"]) == 2
    # The chain and the retention settings are account-wide; export is a permission of its own.
    await call(anonymous_http, "GET", f"{audit.url}/api/audit/verify", 403, **as_ann)
    await call(anonymous_http, "GET", f"{audit.url}/api/audit/settings", 403, **as_ann)
    await call(anonymous_http, "GET", f"{audit.url}/api/audit/export", 403, **as_ann)

    async def denials() -> list[dict] | None:
        body = await call(http, "GET", f"{audit.url}/api/audit/events", 200, params={"type": "audit.access.denied"})
        permissions = {item["data"]["permission"] for item in body["items"]}
        wanted = {"audit_event_view", "audit_settings_view", "audit_event_export"}
        return body["items"] if permissions == wanted else None

    recorded = await eventually(denials)
    assert {item["actor"]["id"] for item in recorded} == {ann_id}
    assert {item["resource"]["id"] for item in recorded} >= {"GET /api/audit/verify", "GET /api/audit/events"}


async def test_group_membership_grants_and_deleting_the_user_revokes(suite, http, anonymous_http):
    identity, audit = suite["identity_sync"], suite["audit"]
    bob_id, bob = await user_with_token(http, identity, "bob")
    group = await call(http, "POST", f"{identity.url}/api/identity/groups", 201, json={"name": "auditors"})
    await everywhere(
        suite, await grant(http, identity, f"group:{group['id']}", "account", permissions=["audit_event_view"])
    )
    await call(anonymous_http, "GET", f"{audit.url}/api/audit/events", 403, headers=bearer(bob))
    await call(http, "PUT", f"{identity.url}/api/identity/groups/{group['id']}/members/{bob_id}", 204)
    await everywhere(suite, await _state_version(identity))
    await call(anonymous_http, "GET", f"{audit.url}/api/audit/events", 200, headers=bearer(bob))
    # A user binding itself into a group is an identity_group_edit it does not hold.
    await call(
        anonymous_http,
        "PUT",
        f"{identity.url}/api/identity/groups/{group['id']}/members/{bob_id}",
        403,
        headers=bearer(bob),
    )


async def _state_version(identity: RunningService) -> int:
    async with identity.deps.pool.acquire() as conn:
        return await conn.fetchval("SELECT version FROM access_state WHERE id = 1")


async def test_an_api_keys_permissions_reach_only_its_scope(suite, http, anonymous_http):
    identity = suite["identity_sync"]
    base = f"{identity.url}/api/identity"
    account = await call(http, "POST", f"{base}/service-accounts", 201, json={"name": "ci", "scope": "account.acme"})
    key = await call(
        http,
        "POST",
        f"{base}/service-accounts/{account['id']}/keys",
        201,
        json={"name": "roles", "permissions": ["identity_role_create"]},
    )
    token = await call(anonymous_http, "POST", f"{base}/token", 200, json={"api_key": key["key"]})
    for credential in (key["key"], token["access_token"]):
        as_key = {"headers": bearer(credential)}
        role = {"name": f"inside {credential[:8]}", "permissions": ["catalog_entity_view"]}
        await call(anonymous_http, "POST", f"{base}/roles", 201, json={**role, "scope": "account.acme.pay"}, **as_key)
        await call(anonymous_http, "POST", f"{base}/roles", 403, json={**role, "scope": "account.other"}, **as_key)
        await call(anonymous_http, "POST", f"{base}/roles", 403, json={**role, "scope": "account"}, **as_key)


async def test_catalog_lists_and_facets_keep_what_the_caller_may_see(suite, http, anonymous_http):
    identity, catalog = suite["identity_sync"], suite["catalog"]
    for scope, name in [("account.acme.pay", "in-pay"), ("account.acme", "in-acme"), ("account.other", "elsewhere")]:
        entity = {
            "apiVersion": "backstage.io/v1alpha1",
            "kind": "Component",
            "metadata": {"name": name},
            "spec": {"type": "service", "lifecycle": "production", "owner": "team"},
        }
        await call(http, "POST", f"{catalog.url}/api/catalog/entities", 201, params={"scope": scope}, json=entity)
    ann_id, ann = await user_with_token(http, identity, "cat")
    await everywhere(
        suite, await grant(http, identity, f"user:{ann_id}", "account.acme", permissions=["catalog_entity_view"])
    )
    as_ann = {"headers": bearer(ann)}
    everywhere_below = {"scope": "account", "includeChildren": "true", "filter": "kind=component"}
    listed = await call(
        anonymous_http, "GET", f"{catalog.url}/api/catalog/entities", 200, params=everywhere_below, **as_ann
    )
    assert sorted(e["metadata"]["name"] for e in listed) == ["in-acme", "in-pay"]
    page = await call(
        anonymous_http, "GET", f"{catalog.url}/api/catalog/entities/by-query", 200, params=everywhere_below, **as_ann
    )
    assert page["totalItems"] == 2
    page = await call(
        anonymous_http,
        "POST",
        f"{catalog.url}/api/catalog/entities/by-query",
        200,
        params={"scope": "account", "includeChildren": "true"},
        json={"query": {"kind": "component"}},
        **as_ann,
    )
    assert sorted(e["metadata"]["name"] for e in page["items"]) == ["in-acme", "in-pay"]
    facets = await call(
        anonymous_http,
        "GET",
        f"{catalog.url}/api/catalog/entity-facets",
        200,
        params={**everywhere_below, "facet": "metadata.name"},
        **as_ann,
    )
    assert sorted(v["value"] for v in facets["facets"]["metadata.name"]) == ["in-acme", "in-pay"]
    # The administrator still sees all three.
    listed = await call(http, "GET", f"{catalog.url}/api/catalog/entities", 200, params=everywhere_below)
    assert len(listed) == 3


LIFECYCLE_POLICY = """package idp.catalog
import rego.v1
deny contains msg if { input.resource.kind == "Component"; not input.resource.spec.lifecycle; msg := "no lifecycle" }
deny contains msg if { input.resource.kind == "Component"; not input.resource.spec.owner; msg := "needs an owner" }
warn contains msg if { count(object.get(input.resource.metadata, "tags", [])) == 0; msg := "no tags" }
"""


async def test_catalog_writes_need_the_permission_at_their_scope_and_pass_the_policies(suite, http, anonymous_http):
    identity, catalog, audit = suite["identity_sync"], suite["catalog"], suite["audit"]
    base = f"{identity.url}/api/identity"
    policy = await call(
        http, "POST", f"{base}/policies", 201, json={"scope": "account", "name": "c", "source": LIFECYCLE_POLICY}
    )
    for mode, action in (("deny", "catalog_entity_create"), ("warn", "catalog_entity_create")):
        await call(
            http,
            "POST",
            f"{base}/policy-sets",
            201,
            json={
                "scope": "account.acme",
                "name": mode,
                "actions": [action],
                "policy_ids": [policy["id"]],
                "mode": mode,
            },
        )
    editor_id, editor = await user_with_token(http, identity, "editor")
    await everywhere(suite, await grant(http, identity, f"user:{editor_id}", "account.acme", role_id="_catalog_editor"))
    as_editor = {"headers": bearer(editor)}
    entities = f"{catalog.url}/api/catalog/entities"
    component = {"apiVersion": "backstage.io/v1alpha1", "kind": "Component", "metadata": {"name": "svc"}}
    incomplete = {**component, "spec": {"type": "service"}}
    complete = {**component, "spec": {"type": "service", "lifecycle": "production", "owner": "team"}}

    # Holding catalog_entity_create at acme does not reach another org.
    await call(anonymous_http, "POST", entities, 403, params={"scope": "account.other"}, json=complete, **as_editor)
    denied = await call(
        anonymous_http, "POST", entities, 403, params={"scope": "account.acme.pay"}, json=incomplete, **as_editor
    )
    assert denied["title"] == "Denied by policy"
    assert sorted(e["message"] for e in denied["errors"]) == ["needs an owner", "no lifecycle"]
    async with anonymous_http.post(entities, params={"scope": "account.acme.pay"}, json=complete, **as_editor) as r:
        assert r.status == 201, await r.text()
        assert r.headers.getall("X-Policy-Warning") == ["no tags"]
    # Outside the sets' scope the policies do not apply (the admin writes at account.other).
    async with http.post(entities, params={"scope": "account.other"}, json=complete) as r:
        assert r.status == 201 and "X-Policy-Warning" not in r.headers

    async def recorded() -> list[dict] | None:
        body = await call(
            http, "GET", f"{audit.url}/api/audit/events", 200, params={"type": "catalog.policy.evaluated"}
        )
        return body["items"] or None

    evaluated = (await eventually(recorded))[0]
    assert evaluated["actor"]["id"] == editor_id and evaluated["scope"] == "account.acme.pay"
    assert {w["message"] for w in evaluated["data"]["warnings"]} == {"no tags"}
    assert len(evaluated["data"]["policy_sets"]) == 2
