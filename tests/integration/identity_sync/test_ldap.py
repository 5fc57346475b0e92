"""LDAP sync against a real OpenLDAP slapd: mapping, paging, nested groups, disappearance, safe lookups."""

from __future__ import annotations

import logging

import pytest
import pytest_asyncio

from services.identity_sync.app import DEFINITION, Settings
from services.identity_sync.ldap import LdapSettings
from shared.service import running_service
from tests.integration.identity_sync.slapd import ADMIN_DN, ADMIN_PASSWORD, SUFFIX, Slapd, seed

API = "/api/identity"
USERS = {"ada": "Ada Lovelace", "bo": "Bo Diddley", "cy": "Cy Twombly", "di": "Di Ana"}
GROUPS = {"engineering": ["ada", "cn=web"], "web": ["bo", "cy"]}


@pytest.fixture
def slapd(tmp_path):
    server = Slapd(tmp_path / "slapd").start()
    with server.connect() as conn:
        seed(conn, USERS, GROUPS)
    yield server
    server.stop()


def ldap_settings(url: str, **overrides) -> LdapSettings:
    values = {
        "url": url,
        "bind_dn": ADMIN_DN,
        "bind_password": ADMIN_PASSWORD,
        "user_base_dn": f"ou=people,{SUFFIX}",
        "group_base_dn": f"ou=groups,{SUFFIX}",
        "page_size": 2,  # four users: the search takes several pages
    }
    return LdapSettings(**{**values, **overrides})


@pytest_asyncio.fixture
async def identity_with_ldap(make_settings, slapd):
    async with running_service(DEFINITION, make_settings(Settings, ldap=ldap_settings(slapd.url))) as service:
        yield service


async def sync(http, identity, status=200):
    async with http.post(f"{identity.url}{API}/ldap/sync") as r:
        assert r.status == status, await r.text()
        return await r.json()


async def test_directory_users_and_nested_groups_are_synced(identity_with_ldap, http, caplog):
    identity = identity_with_ldap
    caplog.set_level(logging.DEBUG)
    run = await sync(http, identity)
    assert (run["created"], run["issues"], run["source"]) == (6, [], "ldap:ldap")
    async with http.get(f"{identity.url}{API}/users", params={"source": "ldap:ldap"}) as r:
        users = {u["username"]: u for u in (await r.json())["items"]}
    assert set(users) == set(USERS)
    assert users["ada"]["display_name"] == "Ada Lovelace" and users["ada"]["emails"] == ["ada@example.org"]
    assert users["ada"]["external_id"], "entryUUID is the stable external id"
    async with http.get(f"{identity.url}{API}/groups", params={"name": "web"}) as r:
        web = (await r.json())["items"][0]
    async with http.get(f"{identity.url}{API}/groups/{web['parent']}") as r:
        assert (await r.json())["name"] == "engineering"
    async with http.get(f"{identity.url}{API}/groups/{web['id']}/members") as r:
        assert {u["username"] for u in (await r.json())["items"]} == {"bo", "cy"}
    assert (await sync(http, identity))["unchanged"] == 6

    async with identity.deps.pool.acquire() as conn:
        payloads = b"".join(bytes(r["payload"]) for r in await conn.fetch("SELECT payload FROM outbox"))
        runs = await conn.fetchval("SELECT json_agg(sync_runs)::text FROM sync_runs")
    assert ADMIN_PASSWORD.encode() not in payloads and ADMIN_PASSWORD not in runs
    assert ADMIN_PASSWORD not in caplog.text


async def test_users_who_leave_the_directory_are_deactivated(identity_with_ldap, slapd, http):
    identity = identity_with_ldap
    await sync(http, identity)
    with slapd.connect() as conn:
        conn.modify(f"cn=web,ou=groups,{SUFFIX}", {"member": [("MODIFY_DELETE", [f"uid=cy,ou=people,{SUFFIX}"])]})
        conn.delete(f"uid=cy,ou=people,{SUFFIX}")
    run = await sync(http, identity)
    assert (run["deactivated"], run["created"]) == (1, 0)
    async with http.get(f"{identity.url}{API}/users", params={"username": "cy"}) as r:
        assert (await r.json())["items"][0]["active"] is False


async def test_lookups_refuse_ldap_filter_characters(identity_with_ldap, http):
    identity = identity_with_ldap
    async with http.get(f"{identity.url}{API}/ldap/users", params={"username": "ada"}) as r:
        assert [u["username"] for u in (await r.json())["items"]] == ["ada"]
    for injected in ("*", "ada)(uid=*", "*)(|(objectClass=*", "a\\2a"):
        async with http.get(f"{identity.url}{API}/ldap/users", params={"username": injected}) as r:
            problem = await r.json()
            assert r.status == 400 and problem["errors"][0]["field"] == "query.username", problem


async def test_an_unreachable_directory_is_a_503_and_no_ldap_is_a_404(make_settings, http, slapd):
    settings = make_settings(Settings, ldap=ldap_settings("ldap://127.0.0.1:9", timeout_seconds=2))
    async with running_service(DEFINITION, settings) as identity:
        problem = await sync(http, identity, status=503)
        assert ADMIN_PASSWORD not in str(problem)
    async with running_service(DEFINITION, make_settings(Settings)) as identity:
        await sync(http, identity, status=404)
