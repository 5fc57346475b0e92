"""Access control enforced by a service from its replica: route-level 403s, lists filtered in SQL by the
scopes the caller's bindings reach, account-wide operations refused below the account."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

from services.audit.app import DEFINITION as AUDIT
from services.audit.app import Settings as AuditSettings
from services.identity_sync.app import DEFINITION as IDENTITY
from shared.auth import DEV_ADMIN, Principal, bearer_token
from shared.bus import publish_event
from shared.service import RunningService, running_service
from tests.conftest import DEV_TOKEN
from tests.helpers import eventually, sample_event


async def named_callers(request: web.Request) -> Principal | None:
    """Test credentials: the bearer token is the user's id (the dev token is the admin)."""
    token = bearer_token(request)
    if token == DEV_TOKEN:
        return DEV_ADMIN
    return Principal(kind="user", id=token) if token else None


@pytest_asyncio.fixture
async def services(make_settings) -> AsyncIterator[tuple[RunningService, RunningService]]:
    async with (
        running_service(IDENTITY, make_settings(IDENTITY.settings_type)) as identity,
        running_service(AUDIT, make_settings(AuditSettings), authenticate=named_callers) as audit,
    ):
        yield identity, audit


async def as_user(user: str, method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {user}"}) as session:
        async with session.request(method, url, **kwargs) as r:
            return r.status, await r.json()


async def grant(http, identity: RunningService, subject: str, scope: str, permissions: list[str]) -> None:
    async with http.post(
        f"{identity.url}/api/identity/roles",
        json={"scope": scope, "name": f"{subject} role", "permissions": permissions},
    ) as r:
        role = await r.json()
    async with http.post(
        f"{identity.url}/api/identity/resource-groups",
        json={"scope": scope, "name": f"{subject} reach", "all_resources": True, "include_child_scopes": True},
    ) as r:
        group = await r.json()
    async with http.post(
        f"{identity.url}/api/identity/role-bindings",
        json={"scope": scope, "subject": subject, "role_id": role["id"], "resource_group_id": group["id"]},
    ) as r:
        assert r.status == 201, await r.json()


async def test_audit_lists_only_what_the_callers_bindings_reach(services, http):
    identity, audit = services
    for n, scope in enumerate(["account.acme.pay", "account.acme", "account.other", "account"]):
        await publish_event(audit.deps.js, sample_event(n, type="test.thing.created", scope=scope))

    async def all_recorded() -> bool:
        async with http.get(f"{audit.url}/api/audit/events", params={"type": "test."}) as r:
            return len((await r.json())["items"]) == 4

    await eventually(all_recorded)
    status, _ = await as_user("ann", "GET", f"{audit.url}/api/audit/events")
    assert status == 403  # no binding at all: refused at the route

    await grant(http, identity, "user:ann", "account.acme", ["audit_event_view"])

    async def ann_sees_acme() -> list[str] | None:
        status, body = await as_user("ann", "GET", f"{audit.url}/api/audit/events", params={"type": "test."})
        return sorted(item["scope"] for item in body["items"]) if status == 200 else None

    assert await eventually(ann_sees_acme) == ["account.acme", "account.acme.pay"]
    status, body = await as_user("ann", "GET", f"{audit.url}/api/audit/stats", params={"type": "test."})
    assert status == 200 and sum(row["count"] for row in body["items"]) == 2
    # The whole chain and the retention settings are account-wide.
    status, body = await as_user("ann", "GET", f"{audit.url}/api/audit/verify")
    assert status == 403 and body["status"] == 403
    status, _ = await as_user("ann", "GET", f"{audit.url}/api/audit/settings")
    assert status == 403
    # Export needs its own permission.
    status, _ = await as_user("ann", "GET", f"{audit.url}/api/audit/export")
    assert status == 403

    async def denials() -> list[dict] | None:
        async with http.get(f"{audit.url}/api/audit/events", params={"type": "audit.access.denied"}) as r:
            items = (await r.json())["items"]
        permissions = {item["data"]["permission"] for item in items}
        return items if permissions == {"audit_event_view", "audit_settings_view", "audit_event_export"} else None

    recorded = await eventually(denials)
    assert {item["actor"]["id"] for item in recorded} == {"ann"}
    assert {item["resource"]["id"] for item in recorded} >= {"GET /api/audit/verify", "GET /api/audit/events"}
