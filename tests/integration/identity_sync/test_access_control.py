"""Access control in identity-sync (roles, resource groups, bindings, policies) against real PostgreSQL and
NATS: validation, references, events recorded by audit, and replication into another service's replica."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from services.audit.app import DEFINITION as AUDIT
from services.audit.app import Settings as AuditSettings
from services.identity_sync.app import DEFINITION as IDENTITY
from shared.auth import Principal
from shared.authz import Resource
from shared.service import RunningService, running_service
from tests.helpers import eventually

OWNERSHIP_POLICY = """package idp.ownership
import rego.v1
deny contains msg if { input.entity.kind == "Component"; not input.entity.spec.owner; msg := "owner required" }
"""


@pytest_asyncio.fixture
async def identity(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    async with running_service(IDENTITY, make_settings(IDENTITY.settings_type)) as service:
        yield service


async def call(http, method: str, url: str, status: int, **kwargs) -> Any:
    async with http.request(method, url, **kwargs) as r:
        body = await r.json() if r.content_type.endswith("json") else None
        assert r.status == status, body
        return body


async def user_subject(http, base: str, username: str) -> str:
    user = await call(http, "POST", f"{base}/api/identity/users", 201, json={"username": username})
    return f"user:{user['id']}"


async def org_setup(http, base: str) -> tuple[dict, dict]:
    role = await call(
        http,
        "POST",
        f"{base}/api/identity/roles",
        201,
        json={
            "scope": "account.acme",
            "name": "entity editor",
            "permissions": ["catalog_entity_view", "catalog_entity_edit"],
        },
    )
    group = await call(
        http,
        "POST",
        f"{base}/api/identity/resource-groups",
        201,
        json={"scope": "account.acme", "name": "acme and below", "all_resources": True, "include_child_scopes": True},
    )
    return role, group


async def test_roles_are_versioned_validated_and_builtins_are_read_only(identity, http):
    base = identity.url
    role, _ = await org_setup(http, base)
    assert role["scope"] == "account.acme" and sorted(role["document"]["permissions"]) == [
        "catalog_entity_edit",
        "catalog_entity_view",
    ]
    await call(
        http,
        "POST",
        f"{base}/api/identity/roles",
        409,
        json={"scope": "account.acme", "name": "entity editor", "permissions": []},
    )
    bad = await call(
        http,
        "POST",
        f"{base}/api/identity/roles",
        400,
        json={"scope": "account.acme", "name": "x", "permissions": ["catalog_entity_fly"]},
    )
    assert bad["errors"][0]["field"] == "permissions[0]"
    bad = await call(
        http, "POST", f"{base}/api/identity/roles", 400, json={"scope": "acme", "name": "x", "permissions": []}
    )
    assert bad["errors"][0]["field"] == "scope"

    async with http.get(f"{base}/api/identity/roles/{role['id']}") as r:
        etag = r.headers["ETag"]
    replaced = {"scope": "account.acme", "name": "entity editor", "permissions": ["catalog_entity_view"]}
    await call(http, "PUT", f"{base}/api/identity/roles/{role['id']}", 412, json=replaced, headers={"If-Match": '"0"'})
    updated = await call(
        http, "PUT", f"{base}/api/identity/roles/{role['id']}", 200, json=replaced, headers={"If-Match": etag}
    )
    assert updated["document"]["permissions"] == ["catalog_entity_view"] and updated["version"] > role["version"]

    listed = await call(http, "GET", f"{base}/api/identity/roles", 200)
    names = [item["name"] for item in listed["items"]]
    assert names[:4] == ["IDP Admin", "Viewer", "Catalog Editor", "Workflow Executor"] and "entity editor" in names
    await call(http, "DELETE", f"{base}/api/identity/roles/_idp_admin", 409)
    permissions = await call(http, "GET", f"{base}/api/identity/permissions", 200)
    assert {"name": "catalog_entity_view", "resource_type": "catalog_entity", "action": "view"} in permissions


async def test_bindings_check_their_references_and_references_block_deletes(identity, http):
    base = identity.url
    role, group = await org_setup(http, base)
    ann_subject = await user_subject(http, base, "ann")
    nobody = await call(
        http,
        "POST",
        f"{base}/api/identity/role-bindings",
        400,
        json={
            "scope": "account.acme",
            "subject": "user:nobody",
            "role_id": role["id"],
            "resource_group_id": group["id"],
        },
    )
    assert nobody["errors"][0]["field"] == "subject"
    missing = await call(
        http,
        "POST",
        f"{base}/api/identity/role-bindings",
        400,
        json={"scope": "account.acme", "subject": ann_subject, "role_id": "nope", "resource_group_id": group["id"]},
    )
    assert missing["errors"][0]["field"] == "role_id"
    # A resource group of the org cannot serve a binding made at a project, nor the other way round.
    wrong_scope = await call(
        http,
        "POST",
        f"{base}/api/identity/role-bindings",
        400,
        json={
            "scope": "account.acme.pay",
            "subject": ann_subject,
            "role_id": role["id"],
            "resource_group_id": group["id"],
        },
    )
    assert wrong_scope["errors"][0]["field"] == "resource_group_id"
    bad_subject = await call(
        http,
        "POST",
        f"{base}/api/identity/role-bindings",
        400,
        json={"scope": "account.acme", "subject": "ann", "role_id": role["id"], "resource_group_id": group["id"]},
    )
    assert bad_subject["errors"][0]["field"] == "subject"
    binding = await call(
        http,
        "POST",
        f"{base}/api/identity/role-bindings",
        201,
        json={"scope": "account.acme", "subject": ann_subject, "role_id": role["id"], "resource_group_id": group["id"]},
    )
    in_use = await call(http, "DELETE", f"{base}/api/identity/roles/{role['id']}", 409)
    assert binding["id"] in in_use["detail"]
    await call(http, "DELETE", f"{base}/api/identity/resource-groups/{group['id']}", 409)
    mine = await call(http, "GET", f"{base}/api/identity/role-bindings", 200, params={"subject": ann_subject})
    assert [item["id"] for item in mine["items"]] == [binding["id"]]
    await call(http, "DELETE", f"{base}/api/identity/role-bindings/{binding['id']}", 204)
    await call(http, "DELETE", f"{base}/api/identity/roles/{role['id']}", 204)
    await call(http, "GET", f"{base}/api/identity/roles/{role['id']}", 404)


async def test_resource_groups_cannot_reach_other_scopes(identity, http):
    bad = await call(
        http,
        "POST",
        f"{identity.url}/api/identity/resource-groups",
        400,
        json={"scope": "account.acme", "name": "x", "all_resources": True, "child_scopes": ["account.other.pay"]},
    )
    assert bad["errors"][0]["field"] == "child_scopes[0]"


async def test_policies_compile_dry_run_and_attach_through_sets(identity, http):
    base = identity.url
    broken = await call(
        http,
        "POST",
        f"{base}/api/identity/policies",
        400,
        json={
            "scope": "account",
            "name": "broken",
            "source": "package x\nimport rego.v1\ndeny contains m if { input.a == }",
        },
    )
    assert broken["errors"][0]["field"] == "source" and "Invalid boolean operator" in broken["detail"]
    policy = await call(
        http,
        "POST",
        f"{base}/api/identity/policies",
        201,
        json={"scope": "account", "name": "ownership", "source": OWNERSHIP_POLICY},
    )
    result = await call(
        http,
        "POST",
        f"{base}/api/identity/policies/evaluate",
        200,
        json={"policy_id": policy["id"], "input": {"entity": {"kind": "Component", "spec": {}}}},
    )
    assert result == {"deny": ["owner required"], "warn": []}
    result = await call(
        http,
        "POST",
        f"{base}/api/identity/policies/evaluate",
        200,
        json={"source": OWNERSHIP_POLICY, "input": {"entity": {"kind": "Component", "spec": {"owner": "x"}}}},
    )
    assert result == {"deny": [], "warn": []}
    unknown_action = await call(
        http,
        "POST",
        f"{base}/api/identity/policy-sets",
        400,
        json={"scope": "account", "name": "s", "actions": ["catalog_entity_fly"], "policy_ids": [policy["id"]]},
    )
    assert unknown_action["errors"][0]["field"] == "actions[0]"
    await call(
        http,
        "POST",
        f"{base}/api/identity/policy-sets",
        201,
        json={"scope": "account.acme", "name": "s", "actions": ["catalog_entity_create"], "policy_ids": [policy["id"]]},
    )
    await call(http, "DELETE", f"{base}/api/identity/policies/{policy['id']}", 409)


async def test_changes_reach_every_replica_and_the_audit_trail(identity, make_settings, http):
    base = identity.url
    async with running_service(AUDIT, make_settings(AuditSettings)) as audit:
        replica = audit.deps.access
        await eventually(lambda: _true(replica.loaded))
        role, group = await org_setup(http, base)
        ann_subject = await user_subject(http, base, "ann")
        ann = Principal(kind="user", id=ann_subject.partition(":")[2])
        resource = Resource("catalog_entity", "account.acme.pay", "component:default/web")
        assert not replica.check(ann, "catalog_entity_edit", resource).allowed
        binding = await call(
            http,
            "POST",
            f"{base}/api/identity/role-bindings",
            201,
            json={
                "scope": "account.acme",
                "subject": ann_subject,
                "role_id": role["id"],
                "resource_group_id": group["id"],
            },
        )
        decision = await eventually(lambda: _true(replica.check(ann, "catalog_entity_edit", resource).allowed))
        assert decision
        explained = await call(
            http,
            "GET",
            f"{base}/api/identity/access/explain",
            200,
            params={"principal": ann_subject, "permission": "catalog_entity_edit", "scope": "account.acme.pay"},
        )
        assert explained["allowed"] and explained["binding_id"] == binding["id"]
        denied = await call(
            http,
            "GET",
            f"{base}/api/identity/access/explain",
            200,
            params={"principal": ann_subject, "permission": "catalog_entity_edit", "scope": "account.other"},
        )
        assert not denied["allowed"] and "no role binding" in denied["reason"]

        await call(http, "DELETE", f"{base}/api/identity/role-bindings/{binding['id']}", 204)
        await eventually(lambda: _true(not replica.check(ann, "catalog_entity_edit", resource).allowed))

        async def recorded() -> list[str]:
            async with http.get(f"{audit.url}/api/audit/events", params={"type": "identity."}) as r:
                return sorted(item["type"] for item in (await r.json())["items"])

        types = await eventually(lambda: _len(recorded(), 5))
        assert types == [
            "identity.resource_group.created",
            "identity.role.created",
            "identity.role_binding.created",
            "identity.role_binding.deleted",
            "identity.user.created",
        ]


async def _true(value: Any) -> Any:
    return value


async def _len(items, n: int) -> Any:
    found = await items
    return found if len(found) >= n else None


async def test_deleting_a_principal_deletes_its_bindings(identity, http):
    base = identity.url
    role, group = await org_setup(http, base)
    ann_subject = await user_subject(http, base, "ann")
    binding = await call(
        http,
        "POST",
        f"{base}/api/identity/role-bindings",
        201,
        json={"scope": "account.acme", "subject": ann_subject, "role_id": role["id"], "resource_group_id": group["id"]},
    )
    await call(http, "DELETE", f"{base}/api/identity/users/{ann_subject.partition(':')[2]}", 204)
    await call(http, "GET", f"{base}/api/identity/role-bindings/{binding['id']}", 404)
    await call(http, "DELETE", f"{base}/api/identity/roles/{role['id']}", 204)  # no longer in use
