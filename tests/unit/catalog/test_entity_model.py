"""Backstage's entity rules, without I/O: refs, validation and relation generation, checked against the
real Backstage example catalog in ../shared/datasets (78 entities)."""

from __future__ import annotations

import collections
import json

import pytest

from services.catalog.entity_ref import EntityRef, EntityRefError, parse_entity_ref, ref_of
from services.catalog.relations import Reference, references_of, resolve
from services.catalog.validation import default_namespace, validate_entity
from tests.helpers import BACKSTAGE_EXAMPLES, backstage_example_entities

DATASET = BACKSTAGE_EXAMPLES


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("component:default/petstore", EntityRef("component", "default", "petstore")),
        ("Component:Petstore", EntityRef("Component", "default", "Petstore")),
        ("group:ops/team-a", EntityRef("group", "ops", "team-a")),
        ("a:b:c/d", EntityRef("a", "b:c", "d")),
        ("ns/name:with-colon", EntityRef("group", "ns", "name:with-colon")),
        ("team-a", EntityRef("group", "default", "team-a")),
        ({"kind": "User", "name": "jane"}, EntityRef("User", "default", "jane")),
    ],
)
def test_refs_parse_like_backstage(ref, expected):
    assert parse_entity_ref(ref, default_kind="group") == expected


def test_canonical_ref_is_lower_case():
    assert str(parse_entity_ref("Component:Default/PetStore")) == "component:default/petstore"


@pytest.mark.parametrize("ref", [":name", "kind:/name", "kind:ns/", "", "/name"])
def test_malformed_refs_are_rejected(ref):
    with pytest.raises(EntityRefError, match="was not on the form"):
        parse_entity_ref(ref, default_kind="group")


def test_a_ref_without_kind_needs_a_default_kind():
    with pytest.raises(EntityRefError, match="missing or empty kind"):
        parse_entity_ref("default/petstore")


def test_the_example_catalog_is_valid_and_counted_as_backstage_counts_it():
    entities = backstage_example_entities()
    problems = {str(ref_of(e)): validate_entity(e) for e in entities}
    assert {ref: errors for ref, errors in problems.items() if errors} == {}
    counts = collections.Counter(e["kind"] for e in entities)
    assert counts == json.loads((DATASET / "expected-counts.json").read_text())


def pair(source: str, type: str, target: str) -> tuple[str, str, str]:
    return (source, type, target)


def relations_of(entity: dict, scope: str = "account") -> tuple[list[tuple[str, str, str]], list]:
    """(source, type, target) of the relations an entity at `scope` emits, no other scope having its targets."""
    references, errors = references_of(entity)
    relations = resolve(str(ref_of(entity)), scope, references, {})
    return [(r.source, r.type, r.target) for r in relations], errors


def test_relations_of_a_component_come_in_pairs_with_backstage_defaults():
    entity = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "artist-lookup", "namespace": "music"},
        "spec": {
            "type": "service",
            "lifecycle": "experimental",
            "owner": "team-a",
            "system": "portal",
            "dependsOn": ["resource:artists-db"],
            "providesApis": ["default/lookup-api"],
        },
    }
    relations, errors = relations_of(entity)
    me = "component:music/artist-lookup"
    assert errors == []
    assert relations == [
        pair(me, "ownedBy", "group:music/team-a"),
        pair("group:music/team-a", "ownerOf", me),
        pair(me, "providesApi", "api:default/lookup-api"),
        pair("api:default/lookup-api", "apiProvidedBy", me),
        pair(me, "dependsOn", "resource:music/artists-db"),
        pair("resource:music/artists-db", "dependencyOf", me),
        pair(me, "partOf", "system:music/portal"),
        pair("system:music/portal", "hasPart", me),
    ]


def test_depends_on_without_a_kind_is_an_error_naming_the_field():
    entity = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "x"},
        "spec": {"type": "service", "lifecycle": "production", "owner": "g", "dependsOn": ["ok:a", "b"]},
    }
    relations, errors = relations_of(entity)
    assert [e.field for e in errors] == ["$.spec.dependsOn[1]"]
    assert pair("component:default/x", "dependsOn", "ok:default/a") in relations


def test_group_hierarchy_and_membership_relations_of_the_example_org():
    entities = backstage_example_entities()
    relations = {r for e in entities for r in relations_of(e)[0]}
    assert pair("group:default/team-a", "childOf", "group:default/backstage") in relations
    assert pair("group:default/backstage", "parentOf", "group:default/team-a") in relations
    assert pair("user:default/breanna.davison", "memberOf", "group:default/team-a") in relations
    assert pair("group:default/team-a", "hasMember", "user:default/breanna.davison") in relations


def test_dangling_owner_references_are_kept_and_identifiable():
    entities = backstage_example_entities()
    known = {str(ref_of(e)) for e in entities}
    owned_by = {r for e in entities for r in references_of(e)[0] if r.type == "ownedBy"}
    dangling = {r.target for r in owned_by if r.target not in known}
    assert "group:default/guest" in dangling  # `owner: guest` defaults to a Group; only a User guest exists
    assert "user:default/guest" not in dangling
    assert all(errors == [] for _, errors in map(references_of, entities))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metadata": {"name": "Bad Name!"}}, "$.metadata.name"),
        ({"metadata": {"name": "x" * 64}}, "$.metadata.name"),
        ({"metadata": {"name": "ok", "namespace": "Upper"}}, "$.metadata.namespace"),
        ({"metadata": {"name": "ok", "tags": ["Java"]}}, "$.metadata.tags[0]"),
        ({"metadata": {"name": "ok", "labels": {"team": "a b"}}}, "$.metadata.labels.team"),
        ({"metadata": {"name": "ok", "annotations": {"bad key!": "v"}}}, "$.metadata.annotations.bad key!"),
        ({"metadata": {"name": "ok", "links": [{"url": "not a url"}]}}, "$.metadata.links[0].url"),
        ({"metadata": {"name": "ok", "links": [{"url": "https://x.io", "title": " "}]}}, "$.metadata.links[0].title"),
        ({"kind": "Comp onent"}, "$.kind"),
        ({"apiVersion": "a/b/c"}, "$.apiVersion"),
        ({"relationz": []}, "$.relationz"),
        ({"spec": {"type": "service", "owner": "g"}}, "$.spec.lifecycle"),
        ({"spec": {"type": "service", "lifecycle": "production", "owner": ["g"]}}, "$.spec.owner"),
        ({"spec": {"type": "service", "lifecycle": "production", "owner": "g", "dependsOn": "x"}}, "$.spec.dependsOn"),
        ({"spec": "nope"}, "$.spec"),
    ],
)
def test_invalid_entities_name_the_field_at_fault(change, field):
    entity = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "ok"},
        "spec": {"type": "service", "lifecycle": "production", "owner": "g"},
        **change,
    }
    fields = [e.field for e in validate_entity(entity)]
    assert field in fields, fields


def test_missing_namespace_defaults_to_default():
    entity = default_namespace({"apiVersion": "v1", "kind": "User", "metadata": {"name": "jane"}})
    assert entity["metadata"]["namespace"] == "default"
    assert validate_entity({"kind": "User"})[0].field == "$.apiVersion"


@pytest.mark.parametrize(
    ("spec", "errors"),
    [
        ({"type": "openapi"}, ["$.spec.definition"]),
        ({"type": "mcp-server", "remotes": [{"type": "streamable-http", "url": "http://x"}]}, []),
        ({"type": "openapi", "definition": {"$text": "./openapi.yaml"}}, []),
        ({"type": "openapi", "definition": {"$text": "a", "$json": "b"}}, ["$.spec.definition"]),
        ({"type": "openapi", "definition": 42}, ["$.spec.definition"]),
        ({"type": "openapi", "definition": "openapi: 3.0.0"}, []),
    ],
)
def test_api_definition_rules(spec, errors):
    entity = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "API",
        "metadata": {"name": "api"},
        "spec": {"lifecycle": "production", "owner": "g", **spec},
    }
    assert [e.field for e in validate_entity(entity)] == errors


def test_a_scoped_ref_in_spec_names_the_target_scope_and_a_bad_scope_is_an_error_naming_the_field():
    entity = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "x"},
        "spec": {
            "type": "service",
            "lifecycle": "production",
            "owner": "group:default/platform@account.acme",
            "dependsOn": ["resource:db@account.nope.too.deep"],
        },
    }
    references, errors = references_of(entity)
    assert references == [Reference("ownedBy", "group:default/platform", "ownerOf", "account.acme")]
    assert [e.field for e in errors] == ["$.spec.dependsOn[0]"]


def test_an_unscoped_target_resolves_at_the_nearest_scope_that_has_it_else_dangles_at_the_entity_scope():
    references = [
        Reference("ownedBy", "group:default/a", "ownerOf"),
        Reference("partOf", "system:default/s", "hasPart"),
    ]
    relations = resolve("component:default/x", "account.acme.shop", references, {"group:default/a": "account.acme"})
    assert [(r.scope, r.source, r.type, r.target_scope, r.target) for r in relations] == [
        ("account.acme.shop", "component:default/x", "ownedBy", "account.acme", "group:default/a"),
        ("account.acme", "group:default/a", "ownerOf", "account.acme.shop", "component:default/x"),
        ("account.acme.shop", "component:default/x", "partOf", "account.acme.shop", "system:default/s"),
        ("account.acme.shop", "system:default/s", "hasPart", "account.acme.shop", "component:default/x"),
    ]
