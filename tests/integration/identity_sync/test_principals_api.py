"""Users, groups, service accounts and memberships through the HTTP API, with their events."""

from __future__ import annotations

import datetime as dt

from tests.integration.identity_sync.conftest import outbox_types

API = "/api/identity"


async def post(http, url, body, status=201):
    async with http.post(url, json=body) as response:
        assert response.status == status, await response.text()
        return await response.json() if response.status != 204 else None


async def create_user(http, identity, username, **fields):
    return await post(http, f"{identity.url}{API}/users", {"username": username, **fields})


async def create_group(http, identity, name, **fields):
    return await post(http, f"{identity.url}{API}/groups", {"name": name, **fields})


async def test_user_lifecycle_emits_events_and_honours_if_match(identity, http):
    user = await create_user(http, identity, "ada", display_name="Ada", emails=["ada@example.com"])
    url = f"{identity.url}{API}/users/{user['id']}"
    async with http.get(url) as r:
        assert r.status == 200 and r.headers["ETag"] == '"1"'
        assert (await r.json())["username"] == "ada"
    async with http.patch(url, json={"display_name": "Ada L."}, headers={"If-Match": '"7"'}) as r:
        assert r.status == 412 and r.content_type == "application/problem+json"
    async with http.patch(url, json={"display_name": "Ada L."}, headers={"If-Match": '"1"'}) as r:
        assert r.status == 200 and r.headers["ETag"] == '"2"'
    async with http.patch(url, json={"display_name": "Ada L."}) as r:
        assert r.headers["ETag"] == '"2"', "an unchanged patch writes nothing"
    async with http.post(url + "/deactivate") as r:
        body = await r.json()
        assert r.status == 200 and body["active"] is False and body["deactivated_at"]
    async with http.post(url + "/reactivate") as r:
        assert (await r.json())["active"] is True
    async with http.delete(url) as r:
        assert r.status == 204
    async with http.get(url) as r:
        assert r.status == 404 and r.content_type == "application/problem+json"
    assert await outbox_types(identity) == [
        "identity.user.created",
        "identity.user.updated",
        "identity.user.deactivated",
        "identity.user.reactivated",
        "identity.user.deleted",
    ]


async def test_bad_input_is_a_problem_naming_the_field_and_writes_nothing(identity, http):
    await create_user(http, identity, "grace")
    cases = [
        ({"username": "Grace"}, 409, "$.username"),
        ({"username": "has space"}, 400, "$.username"),
        ({"username": "x", "emails": ["nope"]}, 400, "$.emails[0]"),
        ({"username": "x", "colour": "red"}, 400, "$"),
    ]
    for body, status, field in cases:
        async with http.post(f"{identity.url}{API}/users", json=body) as r:
            problem = await r.json()
            assert r.status == status and r.content_type == "application/problem+json", problem
            assert problem["errors"][0]["field"] == field
    async with http.get(f"{identity.url}{API}/users/not-an-id") as r:
        assert r.status == 400
    async with http.get(f"{identity.url}{API}/users", params={"cursor": "garbage"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "query.cursor"
    assert await outbox_types(identity) == ["identity.user.created"]


async def test_user_filters_and_cursor_pagination(identity, http):
    for i in range(7):
        await create_user(http, identity, f"user{i}", emails=[f"u{i}@{'a' if i % 2 else 'b'}.org"], active=i != 3)
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{identity.url}{API}/users", params=params) as r:
            page = await r.json()
        assert page["totalItems"] == 7
        seen += [u["username"] for u in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == [f"user{i}" for i in range(7)]
    async with http.get(f"{identity.url}{API}/users", params={"active": "false"}) as r:
        assert [u["username"] for u in (await r.json())["items"]] == ["user3"]
    async with http.get(f"{identity.url}{API}/users", params={"q": "@a.org"}) as r:
        assert [u["username"] for u in (await r.json())["items"]] == ["user1", "user3", "user5"]
    async with http.get(f"{identity.url}{API}/users", params={"email": "U2@B.ORG"}) as r:
        assert [u["username"] for u in (await r.json())["items"]] == ["user2"]


async def test_inactive_since_finds_users_not_seen(identity, http):
    old = await create_user(http, identity, "old")
    fresh = await create_user(http, identity, "fresh")
    async with identity.deps.pool.acquire() as conn:
        await conn.execute("UPDATE users SET created_at = now() - interval '90 days' WHERE id = $1", old["id"])
        await conn.execute("UPDATE users SET created_at = now() - interval '90 days' WHERE id = $1", fresh["id"])
        await conn.execute("UPDATE users SET last_seen = now() WHERE id = $1", fresh["id"])
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).isoformat()
    async with http.get(f"{identity.url}{API}/users", params={"inactive_since": since}) as r:
        assert [u["username"] for u in (await r.json())["items"]] == ["old"]


async def test_groups_nest_at_scopes_and_refuse_cycles(identity, http):
    root = await create_group(http, identity, "eng", scope="account.acme")
    team = await create_group(http, identity, "web", scope="account.acme.shop", parent=root["id"])
    leaf = await create_group(http, identity, "web-ui", scope="account.acme.shop", parent=team["id"])
    async with http.post(
        f"{identity.url}{API}/groups", json={"name": "x", "scope": "account", "parent": root["id"]}
    ) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.parent"
    async with http.patch(f"{identity.url}{API}/groups/{root['id']}", json={"parent": leaf["id"]}) as r:
        assert r.status == 400 or r.status == 409, await r.text()
    async with http.patch(f"{identity.url}{API}/groups/{team['id']}", json={"parent": team["id"]}) as r:
        assert r.status == 409 and "cycle" in (await r.json())["detail"]
    async with http.post(f"{identity.url}{API}/groups", json={"name": "eng", "scope": "account.acme"}) as r:
        assert r.status == 409
    async with http.post(f"{identity.url}{API}/groups", json={"name": "eng", "scope": "not a scope"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.scope"
    async with http.get(f"{identity.url}{API}/groups", params={"scope": "account.acme.shop"}) as r:
        assert [g["name"] for g in (await r.json())["items"]] == ["web", "web-ui"]
    async with http.get(f"{identity.url}{API}/groups", params={"scope": "account.acme"}) as r:
        assert (await r.json())["totalItems"] == 3
    async with http.delete(f"{identity.url}{API}/groups/{team['id']}") as r:
        assert r.status == 204
    async with http.get(f"{identity.url}{API}/groups/{leaf['id']}") as r:
        assert (await r.json())["parent"] == root["id"], "children move up to the deleted group's parent"


async def test_membership_is_idempotent_and_listed(identity, http):
    group = await create_group(http, identity, "ops")
    users = [await create_user(http, identity, name) for name in ("bo", "al")]
    for user in users:
        for _ in range(2):
            async with http.put(f"{identity.url}{API}/groups/{group['id']}/members/{user['id']}") as r:
                assert r.status == 204
    async with http.get(f"{identity.url}{API}/groups/{group['id']}/members") as r:
        assert [u["username"] for u in (await r.json())["items"]] == ["al", "bo"]
    async with http.get(f"{identity.url}{API}/users/{users[0]['id']}") as r:
        assert (await r.json())["groups"] == [group["id"]]
    async with http.delete(f"{identity.url}{API}/groups/{group['id']}/members/{users[0]['id']}") as r:
        assert r.status == 204
    async with http.put(f"{identity.url}{API}/groups/{group['id']}/members/{'0' * 32}") as r:
        assert r.status == 404
    types = await outbox_types(identity)
    assert types.count("identity.group.member_added") == 2 and types.count("identity.group.member_removed") == 1


async def test_service_accounts_at_scopes(identity, http):
    url = f"{identity.url}{API}/service-accounts"
    account = await post(http, url, {"name": "ci-bot", "scope": "account.acme", "description": "CI"})
    await post(http, url, {"name": "ci-bot", "scope": "account.other"})
    async with http.post(url, json={"name": "ci-bot", "scope": "account.acme"}) as r:
        assert r.status == 409
    async with http.get(url, params={"scope": "account.acme"}) as r:
        assert [a["id"] for a in (await r.json())["items"]] == [account["id"]]
    async with http.patch(f"{url}/{account['id']}", json={"active": False}, headers={"If-Match": '"1"'}) as r:
        assert r.status == 200 and (await r.json())["active"] is False
    async with http.delete(f"{url}/{account['id']}") as r:
        assert r.status == 204
    types = await outbox_types(identity)
    assert "identity.service_account.deactivated" in types and types[-1] == "identity.service_account.deleted"


async def test_routes_need_a_token(identity, anonymous_http):
    async with anonymous_http.get(f"{identity.url}{API}/users") as r:
        assert r.status == 401 and r.content_type == "application/problem+json"


async def test_openapi_declares_every_route_with_an_identity_permission(identity, anonymous_http):
    async with anonymous_http.get(f"{identity.url}/openapi.json") as r:
        document = await r.json()
    operations = [op for path in document["paths"].values() for op in path.values()]
    permissions = {op["x-permission"] for op in operations if "x-permission" in op}
    assert all(p.startswith("identity_") for p in permissions), permissions
    assert {"identity_user_view", "identity_scim_edit", "identity_api_key_create"} <= permissions
    public = {op["operationId"] for op in operations if "x-permission" not in op}
    assert public == {
        "exchange_api_key",
        "jwks",
        "sso_login",
        "sso_callback",
        "scim_service_provider_config",
    }
