"""SCIM 2.0 at /scim/v2: scim2-tester finds no failed check, and the PATCH variants real clients send work."""

from __future__ import annotations

import asyncio

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from tests.integration.identity_sync.conftest import outbox_types

API = "/api/identity"
SCIM = "application/scim+json"


async def scim_key(http, identity, permissions=("identity_scim_view", "identity_scim_edit")):
    async with http.post(f"{identity.url}{API}/service-accounts", json={"name": "okta"}) as r:
        account = await r.json()
    async with http.post(
        f"{identity.url}{API}/service-accounts/{account['id']}/keys", json={"name": "scim", "permissions": permissions}
    ) as r:
        return (await r.json())["key"]


def run_scim2_tester(url: str, key: str) -> list:
    with httpx2.Client(base_url=f"{url}/scim/v2", headers={"Authorization": f"Bearer {key}"}) as client:
        return check_server(SyncSCIMClient(client))


async def test_scim2_tester_finds_no_failed_check(identity, http):
    key = await scim_key(http, identity)
    results = await asyncio.to_thread(run_scim2_tester, identity.url, key)
    failed = [(r.title, r.reason, r.description) for r in results if r.status in (Status.ERROR, Status.CRITICAL)]
    assert not failed, failed
    assert sum(r.status == Status.SUCCESS for r in results) > 20
    assert "identity.user.created" in await outbox_types(identity)


@pytest.fixture
def scim_headers():
    return {"Content-Type": SCIM}


async def scim(session, method, url, key, body=None, status=200, **headers):
    async with session.request(
        method, url, json=body, headers={"Authorization": f"Bearer {key}", "Content-Type": SCIM, **headers}
    ) as r:
        text = await r.text()
        assert r.status == status, text
        return (await r.json(content_type=None) if text else None), r.headers


async def test_group_membership_patches_of_okta_and_entra(identity, http, anonymous_http):
    key = await scim_key(http, identity)
    base = f"{identity.url}/scim/v2"
    users = []
    for name in ("ann", "ben", "cat"):
        user, _ = await scim(
            anonymous_http,
            "POST",
            f"{base}/Users",
            key,
            {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": f"{name}@example.com"},
            201,
        )
        users.append(user["id"])
    group, _ = await scim(
        anonymous_http,
        "POST",
        f"{base}/Groups",
        key,
        {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Platform Team"},
        201,
    )
    gid = group["id"]
    patch = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
    # Okta: add members as a list of values.
    await scim(
        anonymous_http,
        "PATCH",
        f"{base}/Groups/{gid}",
        key,
        {"schemas": [patch], "Operations": [{"op": "add", "path": "members", "value": [{"value": u} for u in users]}]},
        204,
    )
    # RFC 7644 filter path, as Okta and Entra send for a removal.
    await scim(
        anonymous_http,
        "PATCH",
        f"{base}/Groups/{gid}",
        key,
        {"schemas": [patch], "Operations": [{"op": "remove", "path": f'members[value eq "{users[0]}"]'}]},
        204,
    )
    # Entra: capitalised op, no path, value an object.
    await scim(
        anonymous_http,
        "PATCH",
        f"{base}/Groups/{gid}",
        key,
        {"schemas": [patch], "Operations": [{"op": "Replace", "value": {"displayName": "Platform"}}]},
        204,
    )
    body, _ = await scim(anonymous_http, "GET", f"{base}/Groups/{gid}", key)
    assert body["displayName"] == "Platform"
    assert sorted(m["value"] for m in body["members"]) == sorted(users[1:])
    async with http.get(f"{identity.url}{API}/groups/{gid}/members") as r:
        assert sorted(u["id"] for u in (await r.json())["items"]) == sorted(users[1:])

    # Entra deactivates with a string boolean.
    await scim(
        anonymous_http,
        "PATCH",
        f"{base}/Users/{users[1]}",
        key,
        {"schemas": [patch], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]},
        204,
    )
    body, _ = await scim(anonymous_http, "GET", f"{base}/Users/{users[1]}", key)
    assert body["active"] is False
    types = await outbox_types(identity)
    assert "identity.user.deactivated" in types and types.count("identity.group.member_added") == 3

    # ETags: a stale If-Match is refused.
    await scim(
        anonymous_http,
        "PUT",
        f"{base}/Groups/{gid}",
        key,
        {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "X"},
        412,
        **{"If-Match": 'W/"1"'},
    )


async def test_filters_sorting_pagination_and_bad_input(identity, http, anonymous_http):
    key = await scim_key(http, identity)
    base = f"{identity.url}/scim/v2"
    core = "urn:ietf:params:scim:schemas:core:2.0:User"
    for i, name in enumerate(["dora", "eve", "finn", "gus"]):
        await scim(
            anonymous_http,
            "POST",
            f"{base}/Users",
            key,
            {"schemas": [core], "userName": name, "displayName": f"N{3 - i}", "title": "eng" if i % 2 else "ops"},
            201,
        )
    found, _ = await scim(anonymous_http, "GET", f'{base}/Users?filter=userName eq "EVE"', key)
    assert [u["userName"] for u in found["Resources"]] == ["eve"]
    found, _ = await scim(anonymous_http, "GET", f'{base}/Users?filter=title eq "eng" and userName sw "g"', key)
    assert [u["userName"] for u in found["Resources"]] == ["gus"]
    found, _ = await scim(anonymous_http, "GET", f'{base}/Users?filter=not (title eq "eng")&sortBy=displayName', key)
    assert [u["userName"] for u in found["Resources"]] == ["finn", "dora"]
    found, _ = await scim(
        anonymous_http, "GET", f"{base}/Users?sortBy=displayName&sortOrder=descending&startIndex=2&count=2", key
    )
    assert found["totalResults"] == 4 and [u["displayName"] for u in found["Resources"]] == ["N2", "N1"]

    error, _ = await scim(anonymous_http, "GET", f"{base}/Users?filter=userName eq", key, status=400)
    assert error["scimType"] == "invalidFilter"
    error, _ = await scim(anonymous_http, "POST", f"{base}/Users", key, {"schemas": [core], "userName": "Eve"}, 409)
    assert error["scimType"] == "uniqueness"
    await scim(anonymous_http, "POST", f"{base}/Users", key, {"schemas": [core], "userName": "x", "bogus": 1}, 400)
    await scim(
        anonymous_http, "POST", f"{base}/Users", key, {"schemas": [core], "userName": "y", "password": "hunter2"}, 201
    )
    async with identity.deps.pool.acquire() as conn:
        stored = [bytes(r["payload"]) for r in await conn.fetch("SELECT payload FROM outbox")]
        attributes = await conn.fetchval("SELECT attributes::text FROM users WHERE username = 'y'")
    assert "hunter2" not in attributes and not any(b"hunter2" in p for p in stored)


async def test_scim_needs_a_key_with_scim_permissions(identity, http, anonymous_http):
    key = await scim_key(http, identity, permissions=("identity_user_view",))
    await scim(anonymous_http, "GET", f"{identity.url}/scim/v2/Users", key, status=403)
    await scim(anonymous_http, "GET", f"{identity.url}/scim/v2/Users", "nope", status=401)
    await scim(anonymous_http, "GET", f"{identity.url}/scim/v2/ServiceProviderConfig", "nope", status=200)
