"""The check language: validation naming the path at fault, every operator, unknown results."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import pytest

from services.scorecard.rules import (
    FAIL,
    PASS,
    UNKNOWN,
    Context,
    Rule,
    Unreadable,
    compile_rule,
    compile_safe_regex,
    resolve,
)
from shared.errors import InputError

ENTITY = {
    "kind": "Component",
    "metadata": {
        "name": "petstore",
        "tags": ["java", "payments"],
        "annotations": {"backstage.io/techdocs-ref": "dir:.", "pagerduty.com/service-id": "P123"},
        "links": [{"url": "https://a", "title": "Runbook"}, {"url": "https://b"}],
    },
    "spec": {
        "type": "service",
        "lifecycle": "production",
        "owner": "team-a",
        "coverage": "81.5",
        "lastReviewed": "2026-01-10",
        "version": "v1.4.0-rc.1",
    },
    "relations": [
        {"type": "ownedBy", "targetRef": "group:default/team-a"},
        {"type": "dependsOn", "targetRef": "component:default/legacy"},
        {"type": "dependsOn", "targetRef": "component:default/ghost"},
        {"type": "providesApi", "targetRef": "api:default/petstore-api"},
    ],
}
RELATED = {
    "group:default/team-a": {"kind": "Group", "metadata": {"name": "team-a"}, "spec": {"type": "team"}},
    "component:default/legacy": {
        "kind": "Component",
        "metadata": {"name": "legacy"},
        "spec": {"lifecycle": "deprecated"},
    },
    "api:default/petstore-api": {
        "kind": "API",
        "metadata": {"name": "petstore-api"},
        "spec": {"definition": "openapi: 3"},
    },
}


def rule(raw: dict[str, Any]) -> Rule:
    return msgspec.convert(raw, Rule)


def run(raw: dict[str, Any], **context: Any):
    ctx = Context(ENTITY, related=RELATED.get, **context)
    return compile_rule(rule(raw)).evaluate(ctx)


@pytest.mark.parametrize(
    ("raw", "status", "found"),
    [
        ({"op": "exists", "path": "spec.owner"}, PASS, "team-a"),
        ({"op": "exists", "path": "spec.system"}, FAIL, None),
        ({"op": "exists", "path": "metadata.annotations.backstage.io/techdocs-ref"}, PASS, "dir:."),
        ({"op": "equals", "path": "spec.lifecycle", "value": "production"}, PASS, "production"),
        ({"op": "equals", "path": "spec.lifecycle", "value": "experimental"}, FAIL, "production"),
        ({"op": "not-equals", "path": "spec.lifecycle", "value": "deprecated"}, PASS, "production"),
        ({"op": "in", "path": "spec.type", "values": ["service", "website"]}, PASS, "service"),
        ({"op": "contains", "path": "metadata.tags", "value": "java"}, PASS, ["java", "payments"]),
        ({"op": "contains", "path": "metadata.name", "value": "store"}, PASS, "petstore"),
        ({"op": "matches", "path": "metadata.name", "pattern": "^pet"}, PASS, "petstore"),
        ({"op": "starts-with", "path": "metadata.annotations.pagerduty.com/service-id", "prefix": "Q"}, FAIL, "P123"),
        ({"op": "gte", "path": "spec.coverage", "value": 80}, PASS, "81.5"),
        ({"op": "lt", "path": "spec.coverage", "value": 80}, FAIL, "81.5"),
        ({"op": "gt", "path": "spec.lastReviewed", "value": "2025-12-31"}, PASS, "2026-01-10"),
        ({"op": "gte", "path": "spec.lastReviewed", "value": "now-30d"}, FAIL, "2026-01-10"),
        ({"op": "gte", "path": "spec.version", "value": "1.4.0"}, FAIL, "v1.4.0-rc.1"),
        ({"op": "gte", "path": "spec.version", "value": "1.3.9", "compare_as": "semver"}, PASS, "v1.4.0-rc.1"),
        ({"op": "count", "path": "metadata.tags", "min": 3}, FAIL, 2),
        ({"op": "count", "path": "spec.nothing", "max": 0}, PASS, 0),
        (
            {"op": "all-items", "path": "metadata.links", "rule": {"op": "exists", "path": "title"}},
            FAIL,
            {"url": "https://b"},
        ),
        (
            {"op": "any-items", "path": "metadata.links", "rule": {"op": "exists", "path": "title"}},
            PASS,
            {"url": "https://a", "title": "Runbook"},
        ),
        (
            {"op": "any-items", "path": "metadata.tags", "rule": {"op": "equals", "path": "", "value": "go"}},
            FAIL,
            ["java", "payments"],
        ),
        ({"op": "not", "rule": {"op": "equals", "path": "spec.lifecycle", "value": "deprecated"}}, PASS, "production"),
        (
            {"op": "all", "rules": [{"op": "exists", "path": "spec.owner"}, {"op": "exists", "path": "spec.system"}]},
            FAIL,
            None,
        ),
        (
            {"op": "any", "rules": [{"op": "exists", "path": "spec.system"}, {"op": "exists", "path": "spec.owner"}]},
            PASS,
            "team-a",
        ),
    ],
)
def test_field_operators(raw, status, found):
    assert run(raw)[:2] == (status, found)


def test_relation_rules():
    owner_is_group = {"op": "relation", "type": "ownedBy", "where": {"op": "equals", "path": "kind", "value": "Group"}}
    assert run(owner_is_group)[:2] == (PASS, ["group:default/team-a"])
    no_deprecated = {
        "op": "relation",
        "type": "dependsOn",
        "where": {"op": "equals", "path": "spec.lifecycle", "value": "deprecated"},
        "max": 0,
    }
    assert run(no_deprecated)[:2] == (FAIL, ["component:default/legacy"])
    api_with_definition = {
        "op": "relation",
        "type": "providesApi",
        "where": {"op": "exists", "path": "spec.definition"},
    }
    assert run(api_with_definition).status == PASS
    # A dangling target (component:default/ghost) is not an existing entity.
    assert run({"op": "relation", "type": "dependsOn", "min": 2})[:2] == (FAIL, ["component:default/legacy"])


def test_event_windows_count_recent_events_only():
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    times = {("workflow.run.succeeded", None): [now - dt.timedelta(days=d) for d in (2, 40)]}
    ctx = {"event_times": lambda type_, path: times.get((type_, path), []), "now": now}
    assert run({"op": "events", "type": "workflow.run.succeeded", "within_days": 30}, **ctx)[:2] == (PASS, 1)
    assert run({"op": "events", "type": "workflow.run.succeeded", "within_days": 1}, **ctx)[:2] == (FAIL, 0)
    changes = {"op": "events", "type": "catalog.entity.updated", "field": "spec.owner", "within_days": 90, "max": 2}
    assert run(changes, **ctx).status == PASS


class Files(dict):
    """Files read before evaluation; every other path was found missing."""

    def get(self, path, default=None):
        return super().get(path, Unreadable(f"{path} not found", missing=True))


def test_file_rules_parse_and_report_unknown_with_a_reason():
    files = Files(
        {
            "Dockerfile": b"FROM python:3.11\nRUN pip install x\nFROM node:latest\n",
            "package.json": b'{"engines": {"node": ">=18.2"}}',
            "pyproject.toml": b'[project]\nrequires-python = ">=3.11"\n',
            "broken.yaml": b"a: [1, 2\n",
            "secret": Unreadable("outside the allowed roots"),
        }
    )
    latest = {"op": "not", "rule": {"op": "matches", "path": "", "pattern": "^FROM\\s+\\S+:latest"}}
    assert run({"op": "file", "path": "Dockerfile", "rule": latest}, files=files).status == FAIL
    node = {"op": "gte", "path": "engines.node", "value": "18", "compare_as": "semver"}
    assert run({"op": "file", "path": "package.json", "format": "json", "rule": node}, files=files)[:2] == (
        PASS,
        ">=18.2",
    )
    python = {"op": "starts-with", "path": "project.requires-python", "prefix": ">=3"}
    assert run({"op": "file", "path": "pyproject.toml", "format": "toml", "rule": python}, files=files).status == PASS
    assert run({"op": "file", "path": "README.md"}, files=files).status == FAIL
    missing = run({"op": "file", "path": "README.md", "rule": latest}, files=files)
    assert missing.status == UNKNOWN and "not found" in missing.reason
    broken = run(
        {"op": "file", "path": "broken.yaml", "format": "yaml", "rule": {"op": "exists", "path": "a"}}, files=files
    )
    assert broken.status == UNKNOWN and "not valid yaml" in broken.reason
    assert run({"op": "file", "path": "secret"}, files=files).reason == "outside the allowed roots"
    assert run({"op": "file", "path": "Dockerfile"}).status == UNKNOWN


def test_unknown_propagates_through_combinators():
    files = Files({})
    unknown = {"op": "file", "path": "x", "rule": {"op": "exists", "path": "a"}}
    assert run({"op": "all", "rules": [unknown, {"op": "exists", "path": "spec.owner"}]}, files=files).status == UNKNOWN
    assert run({"op": "any", "rules": [unknown, {"op": "exists", "path": "spec.owner"}]}, files=files).status == PASS
    assert run({"op": "not", "rule": unknown}, files=files).status == UNKNOWN


def test_a_very_long_line_is_unknown_for_a_regex():
    entity = {"spec": {"blob": "a" * 10_000}}
    outcome = compile_rule(rule({"op": "matches", "path": "spec.blob", "pattern": "b"})).evaluate(Context(entity))
    assert outcome.status == UNKNOWN and "longer than" in outcome.reason


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("^(a+)+$", "nested quantifiers"),
        ("(x*y?)*", "nested quantifiers"),
        ("((ab)*c)+", "nested quantifiers"),
        ("(a)\\1", "backreferences"),
        ("^(a|a?)+$", "distinct characters"),
        ("^(a.|.b)+$", "distinct characters"),
        ("v(\\.\\d+){0,9}", "nested quantifiers"),
        ("a*b*c*d*e*", "more than 4"),
        ("[", "not a valid regular expression"),
    ],
)
def test_dangerous_or_invalid_regexes_are_rejected(pattern, problem):
    with pytest.raises(InputError, match=problem) as caught:
        compile_safe_regex(pattern, "$.rule.pattern")
    assert caught.value.errors[0].field == "$.rule.pattern"


def test_ordinary_regexes_are_accepted():
    for pattern in (
        "^FROM\\s+\\S+:latest",
        "(foo|bar)+baz",
        "^(ab|ac)+$",
        "^(\\w|\\d)+$",
        "^[a-z0-9-]{1,63}$",
        "v\\d{1,9}(\\.\\d{1,9}){0,2}",
    ):
        compile_safe_regex(pattern, "$")


def test_invalid_rules_name_the_path_at_fault():
    with pytest.raises(msgspec.ValidationError, match=r"\$\.rules\[1\]"):
        rule({"op": "all", "rules": [{"op": "exists", "path": "a"}, {"op": "equalz", "path": "b"}]})
    with pytest.raises(InputError) as caught:
        compile_rule(rule({"op": "any", "rules": [{"op": "gt", "path": "a", "value": "soon"}]}), "$.checks[0].rule")
    assert caught.value.errors[0].field == "$.checks[0].rule.rules[0].value"
    with pytest.raises(InputError, match="min is greater"):
        compile_rule(rule({"op": "count", "path": "a", "min": 3, "max": 1}))
    with pytest.raises(InputError, match="without \\.\\."):
        compile_rule(rule({"op": "file", "path": "../etc/passwd"}))


def test_reads_say_which_changes_matter():
    reads = compile_rule(
        rule({"op": "all-items", "path": "metadata.links", "rule": {"op": "exists", "path": "title"}})
    ).reads
    assert reads.entity_paths == {"metadata.links", "metadata.links.title"}
    assert reads.touched_by({"metadata.links"}) and not reads.touched_by({"spec.owner"})
    assert compile_rule(rule({"op": "relation", "type": "ownedBy"})).reads.touched_by({"spec.owner"})
    owned = compile_rule(rule({"op": "relation", "type": "ownedBy"})).reads
    assert not owned.touched_by({"spec.lifecycle"}, relations_changed=False)
    data = compile_rule(rule({"op": "gte", "path": "coverage", "value": 80, "source": "data"})).reads
    assert data.data_keys == {"coverage"} and not data.entity_paths


def test_resolve_walks_keys_with_dots_and_list_indexes():
    assert resolve(ENTITY, "metadata.annotations.pagerduty.com/service-id".split(".")) == "P123"
    assert resolve(ENTITY, ["metadata", "links", "1", "url"]) == "https://b"
    assert resolve(ENTITY, ["metadata", "links", "9"]) is None


def test_relation_rules_say_which_target_changes_matter():
    deprecated = compile_rule(
        rule({"op": "relation", "type": "dependsOn", "where": {"op": "equals", "path": "spec.lifecycle", "value": "x"}})
    ).reads
    assert deprecated.touched_through_relations({"spec.lifecycle"})
    assert not deprecated.touched_through_relations({"metadata.description"})
    assert deprecated.touched_through_relations(None)
    existing = compile_rule(rule({"op": "relation", "type": "ownedBy"})).reads
    assert not existing.touched_through_relations({"spec.lifecycle"}) and existing.touched_through_relations(None)
    assert not compile_rule(rule({"op": "exists", "path": "a"})).reads.touched_through_relations(None)


def test_relation_rules_tell_whether_a_targets_change_can_change_their_outcome():
    """Entities pointing at a changed target are evaluated again only when a `where` may judge it differently."""
    deprecated = {"op": "equals", "path": "spec.lifecycle", "value": "deprecated"}
    plain = compile_rule(rule({"op": "relation", "type": "dependsOn", "where": deprecated, "max": 0})).reads
    production, experimental, retired = (
        {"spec": {"lifecycle": v}} for v in ("production", "experimental", "deprecated")
    )
    assert plain.judges_alike(production, experimental)
    assert not plain.judges_alike(production, retired)
    assert compile_rule(rule({"op": "relation", "type": "ownedBy"})).reads.judges_alike(production, retired)
    nested = {"op": "relation", "type": "dependsOn", "where": {"op": "relation", "type": "ownedBy"}}
    assert not compile_rule(rule(nested)).reads.judges_alike(production, production)
