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
async def suite(make_settings, tmp_path) -> AsyncIterator[dict[str, RunningService]]:
    """identity-sync and every other service, each verifying tokens and keeping an access replica; the catalog
    reads `file:` locations under `tmp_path`."""
    async with contextlib.AsyncExitStack() as stack:
        running = {}
        for name in ["identity_sync", *OTHER_SERVICES]:
            definition = importlib.import_module(f"services.{name}.app").DEFINITION
            overrides = {"file_location_roots": str(tmp_path)} if name == "catalog" else {}
            settings = make_settings(definition.settings_type, **overrides)
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


def component(name: str, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": name, **metadata},
        "spec": {"type": "service", "lifecycle": "production", "owner": "team"},
    }


async def test_catalog_single_reads_answer_404_outside_the_callers_reach(suite, http, anonymous_http):
    identity, catalog = suite["identity_sync"], suite["catalog"]
    api = f"{catalog.url}/api/catalog"
    created = {}
    for scope, name in [("account.acme.pay", "in-pay"), ("account.other", "elsewhere")]:
        created[name] = await call(http, "POST", f"{api}/entities", 201, params={"scope": scope}, json=component(name))
    ann_id, ann = await user_with_token(http, identity, "reader")
    await everywhere(
        suite, await grant(http, identity, f"user:{ann_id}", "account.acme", permissions=["catalog_entity_view"])
    )
    as_ann = {"headers": bearer(ann)}
    by_name = f"{api}/entities/by-name/component/default"

    await call(anonymous_http, "GET", f"{by_name}/in-pay", 200, params={"scope": "account.acme.pay"}, **as_ann)
    await call(anonymous_http, "GET", f"{by_name}/elsewhere", 404, params={"scope": "account.other"}, **as_ann)
    await call(anonymous_http, "GET", f"{by_name}/elsewhere/ancestry", 404, params={"scope": "account.other"}, **as_ann)
    await call(anonymous_http, "GET", f"{api}/entities/by-uid/{created['in-pay']['metadata']['uid']}", 200, **as_ann)
    other_uid = created["elsewhere"]["metadata"]["uid"]
    await call(anonymous_http, "GET", f"{api}/entities/by-uid/{other_uid}", 404, **as_ann)
    await call(http, "GET", f"{api}/entities/by-uid/{other_uid}", 200)  # it is there, for the administrator
    refs = {"entityRefs": ["component:in-pay@account.acme.pay", "component:elsewhere@account.other"]}
    found = await call(anonymous_http, "POST", f"{api}/entities/by-refs", 200, json=refs, **as_ann)
    assert [item and item["metadata"]["name"] for item in found["items"]] == ["in-pay", None]
    hits = await call(anonymous_http, "GET", f"{api}/search", 200, params={"q": "in elsewhere"}, **as_ann)
    assert hits["totalItems"] == 0
    hits = await call(anonymous_http, "GET", f"{api}/search", 200, params={"q": "pay"}, **as_ann)
    assert [h["entity"]["metadata"]["name"] for h in hits["items"]] == ["in-pay"]
    graph = {"root": "component:elsewhere@account.other"}
    await call(anonymous_http, "GET", f"{api}/graph", 404, params=graph, **as_ann)
    await call(anonymous_http, "PUT", f"{api}/favorites/{other_uid}", 404, **as_ann)


async def test_restricted_entities_are_seen_and_edited_by_their_owners_only(suite, http, anonymous_http):
    identity, catalog = suite["identity_sync"], suite["catalog"]
    api, base = f"{catalog.url}/api/catalog", f"{identity.url}/api/identity"
    owner_id, owner = await user_with_token(http, identity, "owner")
    other_id, other = await user_with_token(http, identity, "other")
    team = await call(http, "POST", f"{base}/groups", 201, json={"name": "vault-team"})
    await call(http, "PUT", f"{base}/groups/{team['id']}/members/{owner_id}", 204)
    for user_id in (owner_id, other_id):
        version = await grant(http, identity, f"user:{user_id}", "account", role_id="_viewer")
    await everywhere(suite, version)

    async def mirrored() -> bool:
        async with http.get(f"{api}/entities/by-name/group/default/vault-team") as r:
            return r.status == 200 and "user:default/owner" in {
                rel["targetRef"] for rel in (await r.json()).get("relations", []) if rel["type"] == "hasMember"
            }

    await eventually(mirrored)
    secret = component("vault", tags=["secrets"])
    secret["spec"]["owner"] = "group:default/vault-team"
    await call(http, "POST", f"{api}/entities", 201, json=secret)
    await call(http, "POST", f"{api}/entities", 201, json=component("open"))
    by_name = f"{api}/entities/by-name/component/default/vault"

    for token, sees in ((owner, True), (other, False)):
        as_user = {"headers": bearer(token)}
        listed = await call(
            anonymous_http, "GET", f"{api}/entities", 200, params={"filter": "kind=component"}, **as_user
        )
        assert sorted(e["metadata"]["name"] for e in listed) == (["open", "vault"] if sees else ["open"])
        page = await call(
            anonymous_http, "GET", f"{api}/entities/by-query", 200, params={"filter": "kind=component"}, **as_user
        )
        assert page["totalItems"] == (2 if sees else 1)
        await call(anonymous_http, "GET", by_name, 200 if sees else 404, **as_user)
        hits = await call(
            anonymous_http, "GET", f"{api}/search", 200, params={"q": "vault", "kind": "component"}, **as_user
        )
        assert len(hits["items"]) == (1 if sees else 0)
        # Owners may edit their own entity without a binding granting catalog_entity_edit; others may not.
        edited = {**secret, "metadata": {**secret["metadata"], "description": "edited"}}
        await call(anonymous_http, "PUT", by_name, 200 if sees else 403, json=edited, **as_user)
        ingest = {"items": [{"entityRef": "component:vault", "properties": {"metadata.annotations.x": "1"}}]}
        await call(anonymous_http, "POST", f"{api}/ingest", 200 if sees else 403, json=ingest, **as_user)
        # …but not an entity they do not own.
        await call(
            anonymous_http,
            "PUT",
            f"{api}/entities/by-name/component/default/open",
            403,
            json=component("open"),
            **as_user,
        )
    # Neither may delete: the owner rule covers edits only.
    uid = (await call(http, "GET", by_name, 200))["metadata"]["uid"]
    await call(anonymous_http, "DELETE", f"{api}/entities/by-uid/{uid}", 403, headers=bearer(owner))
    await call(http, "DELETE", f"{api}/entities/by-uid/{uid}", 204)


async def test_catalog_deletes_locations_refresh_and_kinds_need_the_permission_at_their_scope(
    suite, http, anonymous_http, tmp_path
):
    identity, catalog = suite["identity_sync"], suite["catalog"]
    api = f"{catalog.url}/api/catalog"
    editor_id, editor = await user_with_token(http, identity, "scoped-editor")
    await everywhere(suite, await grant(http, identity, f"user:{editor_id}", "account.acme", role_id="_catalog_editor"))
    as_editor = {"headers": bearer(editor)}
    uids = {}
    for scope in ("account.acme", "account.other"):
        entity = await call(http, "POST", f"{api}/entities", 201, params={"scope": scope}, json=component("svc"))
        uids[scope] = entity["metadata"]["uid"]
    await call(anonymous_http, "DELETE", f"{api}/entities/by-uid/{uids['account.other']}", 403, **as_editor)
    await call(anonymous_http, "DELETE", f"{api}/entities/by-uid/{uids['account.acme']}", 204, **as_editor)

    catalog_file = tmp_path / "catalog-info.yaml"
    catalog_file.write_text(
        "apiVersion: backstage.io/v1alpha1\nkind: Group\nmetadata: {name: g}\nspec: {type: team, children: []}\n"
    )
    spec = {"type": "file", "target": str(catalog_file)}
    await call(
        anonymous_http, "POST", f"{api}/locations", 403, params={"scope": "account.other"}, json=spec, **as_editor
    )
    await call(
        anonymous_http,
        "POST",
        f"{api}/analyze-location",
        403,
        params={"scope": "account.other"},
        json={"location": spec},
        **as_editor,
    )
    mine = await call(
        anonymous_http, "POST", f"{api}/locations", 201, params={"scope": "account.acme"}, json=spec, **as_editor
    )
    theirs = await call(http, "POST", f"{api}/locations", 201, params={"scope": "account.other"}, json=spec)
    listed = await call(anonymous_http, "GET", f"{api}/locations", 200, **as_editor)
    assert [item["data"]["id"] for item in listed] == [mine["location"]["id"]]
    await call(anonymous_http, "GET", f"{api}/locations/{theirs['location']['id']}", 404, **as_editor)
    await call(anonymous_http, "DELETE", f"{api}/locations/{theirs['location']['id']}", 403, **as_editor)
    refresh = {"entityRef": "group:g"}
    await call(
        anonymous_http, "POST", f"{api}/refresh", 403, params={"scope": "account.other"}, json=refresh, **as_editor
    )
    await call(
        anonymous_http, "POST", f"{api}/refresh", 200, params={"scope": "account.acme"}, json=refresh, **as_editor
    )
    await call(anonymous_http, "DELETE", f"{api}/locations/{mine['location']['id']}", 204, **as_editor)
    # Kinds hold at every scope: an org's catalog editor may not register one.
    kind = {"apiVersion": "example.com/v1", "kind": "Widget", "schema": {"type": "object"}}
    await call(anonymous_http, "POST", f"{api}/kinds", 403, json=kind, **as_editor)


CRUD = ("view", "create", "edit", "delete")


async def test_identity_groups_and_service_accounts_are_managed_where_the_callers_bindings_reach(
    suite, http, anonymous_http
):
    identity = suite["identity_sync"]
    base = f"{identity.url}/api/identity"
    manage = [f"identity_{resource}_{action}" for resource in ("group", "service_account") for action in CRUD]
    manage += ["identity_api_key_view", "identity_api_key_create", "identity_user_view", "identity_user_create"]
    manage += ["identity_user_edit"]
    admin_id, org_admin = await user_with_token(http, identity, "org-admin")
    await everywhere(suite, await grant(http, identity, f"user:{admin_id}", "account.acme", permissions=manage))
    as_admin = {"headers": bearer(org_admin)}
    theirs = await call(http, "POST", f"{base}/groups", 201, json={"name": "theirs", "scope": "account.other"})
    their_account = await call(
        http, "POST", f"{base}/service-accounts", 201, json={"name": "their-bot", "scope": "account.other"}
    )

    await call(anonymous_http, "POST", f"{base}/groups", 403, json={"name": "x", "scope": "account.other"}, **as_admin)
    ours = await call(
        anonymous_http, "POST", f"{base}/groups", 201, json={"name": "ours", "scope": "account.acme.pay"}, **as_admin
    )
    listed = await call(anonymous_http, "GET", f"{base}/groups", 200, **as_admin)
    assert [g["name"] for g in listed["items"]] == ["ours"] and listed["totalItems"] == 1
    await call(anonymous_http, "GET", f"{base}/groups/{theirs['id']}", 404, **as_admin)
    await call(anonymous_http, "PATCH", f"{base}/groups/{theirs['id']}", 404, json={"name": "mine"}, **as_admin)
    await call(anonymous_http, "PUT", f"{base}/groups/{theirs['id']}/members/{admin_id}", 404, **as_admin)
    await call(anonymous_http, "DELETE", f"{base}/groups/{theirs['id']}", 404, **as_admin)
    await call(anonymous_http, "PUT", f"{base}/groups/{ours['id']}/members/{admin_id}", 204, **as_admin)

    bot = {"name": "bot", "scope": "account.other"}
    await call(anonymous_http, "POST", f"{base}/service-accounts", 403, json=bot, **as_admin)
    ours_bot = await call(
        anonymous_http, "POST", f"{base}/service-accounts", 201, json={**bot, "scope": "account.acme"}, **as_admin
    )
    listed = await call(anonymous_http, "GET", f"{base}/service-accounts", 200, **as_admin)
    assert [a["name"] for a in listed["items"]] == ["bot"]
    await call(
        anonymous_http,
        "POST",
        f"{base}/service-accounts/{their_account['id']}/keys",
        404,
        json={"name": "k"},
        **as_admin,
    )
    await call(
        anonymous_http, "POST", f"{base}/service-accounts/{ours_bot['id']}/keys", 201, json={"name": "k"}, **as_admin
    )
    # Users are account-wide: an org's administrator sees the directory but may not create or change users.
    await call(anonymous_http, "GET", f"{base}/users", 200, **as_admin)
    await call(anonymous_http, "POST", f"{base}/users", 403, json={"username": "new"}, **as_admin)
    await call(anonymous_http, "POST", f"{base}/users/{admin_id}/deactivate", 403, **as_admin)


NO_EXPERIMENTS = """package idp.experiments
import rego.v1
deny contains msg if { input.resource.spec.lifecycle == "experimental"; msg := "no experiments here" }
"""


def component_yaml(name: str, lifecycle: str) -> str:
    return (
        f"apiVersion: backstage.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\n"
        f"spec: {{type: service, lifecycle: {lifecycle}, owner: team}}\n"
    )


async def test_entities_read_from_locations_pass_the_policy_sets_on_entity_writes(suite, http, tmp_path):
    identity, catalog = suite["identity_sync"], suite["catalog"]
    base, api = f"{identity.url}/api/identity", f"{catalog.url}/api/catalog"
    policy = await call(
        http, "POST", f"{base}/policies", 201, json={"scope": "account", "name": "e", "source": NO_EXPERIMENTS}
    )
    policy_set = {"scope": "account.acme", "name": "deny", "actions": ["catalog_entity_create", "catalog_entity_edit"]}
    created = await call(
        http, "POST", f"{base}/policy-sets", 201, json={**policy_set, "policy_ids": [policy["id"]], "mode": "deny"}
    )
    await everywhere(suite, created["version"])
    catalog_file = tmp_path / "catalog-info.yaml"
    catalog_file.write_text(component_yaml("good", "production") + "---\n" + component_yaml("bad", "experimental"))
    spec = {"type": "file", "target": str(catalog_file)}
    pay = {"scope": "account.acme.pay"}
    registered = await call(http, "POST", f"{api}/locations", 201, params=pay, json=spec)
    location_url = f"{api}/locations/{registered['location']['id']}"
    location = await call(http, "GET", location_url, 200)
    assert [e["message"] for e in location["errors"]] == ["component:default/bad denied by policy: no experiments here"]
    by_name = f"{api}/entities/by-name/component/default"
    await call(http, "GET", f"{by_name}/good", 200, params=pay)
    await call(http, "GET", f"{by_name}/bad", 404, params=pay)
    # An edit that breaks the policy leaves the stored entity as it was, and the refresh reports it.
    catalog_file.write_text(component_yaml("good", "experimental"))
    await call(http, "POST", f"{api}/refresh", 200, params=pay, json={"entityRef": "component:good"})
    assert (await call(http, "GET", f"{by_name}/good", 200, params=pay))["spec"]["lifecycle"] == "production"
    location = await call(http, "GET", location_url, 200)
    assert [e["message"] for e in location["errors"]] == [
        "component:default/good denied by policy: no experiments here"
    ]
    # Outside the set's scope the same file ingests whole.
    elsewhere = await call(http, "POST", f"{api}/locations", 201, params={"scope": "account.other"}, json=spec)
    assert (await call(http, "GET", f"{api}/locations/{elsewhere['location']['id']}", 200)).get("errors", []) == []
