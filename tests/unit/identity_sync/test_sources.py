"""CSV and Backstage YAML become snapshots; bad rows are reported, not fatal."""

from __future__ import annotations

from services.identity_sync.sources import parse_backstage, parse_csv
from tests.helpers import BACKSTAGE_EXAMPLES


def test_csv_rows_become_users_and_the_groups_they_list():
    snapshot = parse_csv(
        "username,display_name,emails,groups,active\n"
        "ada,Ada,ada@x.org;a@y.org,eng;ops,true\n"
        "bo,,,eng,false\n"
        "bad name,,,,\n"
        "cy,,not-an-email,,\n"
    )
    assert [(u.username, u.emails, u.active) for u in snapshot.users] == [
        ("ada", ["ada@x.org", "a@y.org"], True),
        ("bo", [], False),
    ]
    assert {g.name: g.members for g in snapshot.groups} == {"eng": ["ada", "bo"], "ops": ["ada"]}
    assert [i.item for i in snapshot.issues] == ["line 4", "line 5"]


def test_csv_without_a_username_column_is_one_issue():
    assert [i.item for i in parse_csv("name\nada\n").issues] == ["header"]
    assert "colour" in parse_csv("username,colour\nada,red\n").issues[0].message


def test_backstage_users_and_groups_with_nesting_and_memberships():
    text = (BACKSTAGE_EXAMPLES / "catalog-model-examples" / "acme" / "team-a-group.yaml").read_text()
    text += (BACKSTAGE_EXAMPLES / "catalog-model-examples" / "acme" / "org.yaml").read_text()
    snapshot = parse_backstage(text)
    assert not snapshot.issues
    groups = {g.name: g for g in snapshot.groups}
    assert groups["team-a"].parent == "backstage"
    assert "breanna.davison" in groups["team-a"].members
    assert groups["acme-corp"].display_name == "ACME Corp"
    assert {u.username for u in snapshot.users} >= {"breanna.davison", "janelle.dawe", "guest"}


def test_backstage_yaml_errors_are_reported():
    assert parse_backstage("kind: [unclosed").issues[0].item == "yaml"
