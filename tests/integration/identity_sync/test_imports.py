"""Bulk imports from CSV and Backstage YAML, with each disappearance strategy."""

from __future__ import annotations

from tests.helpers import BACKSTAGE_EXAMPLES
from tests.integration.identity_sync.conftest import outbox_types

API = "/api/identity"
CSV = "username,display_name,emails,groups\nada,Ada,ada@x.org,eng\nbo,Bo,,eng;ops\ncy,,,ops\n"


async def import_csv(http, identity, text, **params):
    async with http.post(
        f"{identity.url}{API}/imports/csv", data=text.encode(), params=params, headers={"Content-Type": "text/csv"}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def users(http, identity, **params):
    async with http.get(f"{identity.url}{API}/users", params=params) as r:
        return {u["username"]: u for u in (await r.json())["items"]}


async def test_csv_import_creates_updates_and_reports(identity, http):
    run = await import_csv(http, identity, CSV + "bad name,,,\n")
    assert (run["created"], run["updated"], run["unchanged"]) == (5, 0, 0), run  # 3 users, 2 groups
    assert [i["item"] for i in run["issues"]] == ["line 5"]
    again = await import_csv(http, identity, CSV.replace("Ada,", "Ada L.,"))
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 1, 4)
    found = await users(http, identity)
    assert found["ada"]["display_name"] == "Ada L." and found["ada"]["source"] == "csv:default"
    async with http.get(f"{identity.url}{API}/sync-runs") as r:
        assert [x["id"] for x in (await r.json())["items"]] == [again["id"], run["id"]]
    assert (await outbox_types(identity)).count("identity.sync_run.completed") == 2


async def test_disappeared_users_are_kept_deactivated_or_deleted(identity, http):
    await import_csv(http, identity, CSV, source="hr")
    assert (await import_csv(http, identity, "username\nada\nbo\n", source="hr"))["deactivated"] == 0
    run = await import_csv(http, identity, "username\nada\n", source="hr", strategy="deactivate")
    assert run["deactivated"] == 2
    found = await users(http, identity)
    assert (found["bo"]["active"], found["cy"]["active"], found["ada"]["active"]) == (False, False, True)
    run = await import_csv(http, identity, "username\nada\n", source="hr", strategy="delete")
    assert run["deleted"] == 4  # bo, cy and the groups eng and ops
    assert set(await users(http, identity)) == {"ada"}


async def test_another_sources_principals_are_left_alone(identity, http):
    async with http.post(f"{identity.url}{API}/users", json={"username": "manual"}) as r:
        assert r.status == 201
    await import_csv(http, identity, CSV, source="a")
    run = await import_csv(http, identity, "username\nzed\n", source="b", strategy="delete")
    assert run["deleted"] == 0 and {"manual", "ada", "zed"} <= set(await users(http, identity))


async def test_backstage_yaml_import_nests_groups(identity, http):
    acme = BACKSTAGE_EXAMPLES / "catalog-model-examples" / "acme"
    text = "\n---\n".join(p.read_text() for p in sorted(acme.glob("*.yaml")))
    async with http.post(
        f"{identity.url}{API}/imports/backstage", data=text.encode(), headers={"Content-Type": "application/yaml"}
    ) as r:
        run = await r.json()
        assert r.status == 200, run
    # The examples define the user `guest` twice.
    assert [i["item"] for i in run["issues"]] == ["user guest"] and run["created"] > 20
    async with http.get(f"{identity.url}{API}/groups", params={"name": "team-a"}) as r:
        team_a = (await r.json())["items"][0]
    async with http.get(f"{identity.url}{API}/groups/{team_a['parent']}") as r:
        assert (await r.json())["name"] == "backstage"
    async with http.get(f"{identity.url}{API}/groups/{team_a['id']}/members") as r:
        assert "breanna.davison" in {u["username"] for u in (await r.json())["items"]}


async def test_bad_import_parameters_are_problems(identity, http):
    async with http.post(f"{identity.url}{API}/imports/csv", data=b"username\n", params={"strategy": "burn"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "query.strategy"
    async with http.post(f"{identity.url}{API}/imports/csv", data=b"\xff\xfe", params={}) as r:
        assert r.status == 400
