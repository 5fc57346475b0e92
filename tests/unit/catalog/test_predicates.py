"""Backstage's predicate filters parse into the filter tree, match as Backstage matches, and bad ones name the path."""

from __future__ import annotations

import pytest

from services.catalog.predicates import NOTHING, HasPrefix, Not, matches, parse_predicate
from services.catalog.query import AllOf, AnyOf, KeyValues, build_search_rows
from shared.errors import InputError

ENTITY = {
    "apiVersion": "backstage.io/v1alpha1",
    "kind": "Component",
    "metadata": {"name": "petstore", "namespace": "default", "tags": ["java", "Web"], "annotations": {"a.io/x": "1"}},
    "spec": {"type": "service", "lifecycle": "production", "owner": "team-a", "port": 8080, "public": True},
    "relations": [{"type": "ownedBy", "targetRef": "group:default/team-a"}],
}
ROWS = build_search_rows(ENTITY)


def test_parse_shapes():
    assert parse_predicate({"kind": "Component"}) == KeyValues("kind", ("component",))
    assert parse_predicate({"kind": "component", "spec.type": {"$in": ["service", 7]}}) == AllOf(
        (KeyValues("kind", ("component",)), KeyValues("spec.type", ("service", "7")))
    )
    assert parse_predicate({"$not": {"spec.owner": {"$exists": False}}}) == Not(Not(KeyValues("spec.owner")))
    assert parse_predicate({"metadata.name": {"$hasPrefix": "Pet"}}) == HasPrefix("metadata.name", "pet")
    assert parse_predicate({"$all": []}) == NOTHING and parse_predicate({"$any": []}) == NOTHING
    assert parse_predicate({}) == AllOf(())
    assert parse_predicate({"relations": {"$contains": {"type": "ownedBy"}}}) == KeyValues("relations.ownedby")
    assert parse_predicate({"$any": [{"kind": "api"}, {"kind": "user"}]}) == AnyOf(
        (KeyValues("kind", ("api",)), KeyValues("kind", ("user",)))
    )


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        ({"kind": "COMPONENT"}, True),
        ({"spec.port": 8080}, True),
        ({"spec.public": True}, True),
        ({"spec.public": False}, False),
        ({"metadata.tags": {"$contains": "web"}}, True),
        ({"metadata.tags": {"$contains": "go"}}, False),
        ({"relations": {"$contains": {"type": "ownedBy", "targetRef": "group:default/team-a"}}}, True),
        ({"relations": {"$contains": {"type": "ownedBy", "targetRef": {"$in": ["group:default/b"]}}}}, False),
        ({"metadata.name": {"$hasPrefix": "PET"}}, True),
        ({"metadata.annotations.a.io/x": {"$exists": True}}, True),
        ({"spec.system": {"$exists": False}}, True),
        ({"$not": {"kind": "component"}}, False),
        ({"$all": [{"kind": "component"}, {"spec.type": {"$in": ["website", "service"]}}]}, True),
        ({"$any": [{"kind": "api"}, {"spec.lifecycle": "experimental"}]}, False),
        ({"$all": []}, False),
        ({"spec.type": {"$in": []}}, False),
        ({}, True),
    ],
)
def test_matches_like_backstage(predicate, expected):
    assert matches(parse_predicate(predicate), ROWS) is expected


@pytest.mark.parametrize(
    ("predicate", "field"),
    [
        ("component", "$.query"),
        ({"$all": {"kind": "x"}}, "$.query.$all"),
        ({"$any": [{"kind": "x"}, 3]}, "$.query.$any[1]"),
        ({"kind": "x", "$not": {}}, "$.query"),
        ({"spec.type": {"$regex": "s.*"}}, "$.query.spec.type.$regex"),
        ({"spec.type": {"$exists": "yes"}}, "$.query.spec.type.$exists"),
        ({"spec.type": {"$in": [{"a": 1}]}}, "$.query.spec.type.$in"),
        ({"spec.type": ["a"]}, "$.query.spec.type"),
        ({"spec": {"$contains": {"type": "x"}}}, "$.query.spec.$contains"),
        ({"$oops": 1}, "$.query.$oops"),
    ],
)
def test_bad_predicates_name_the_path(predicate, field):
    with pytest.raises(InputError) as caught:
        parse_predicate(predicate)
    assert caught.value.errors[0].field == field


def test_deep_predicates_are_refused():
    predicate: dict = {"kind": "x"}
    for _ in range(40):
        predicate = {"$not": predicate}
    with pytest.raises(InputError, match="too large"):
        parse_predicate(predicate)
