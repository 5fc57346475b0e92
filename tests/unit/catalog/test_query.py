"""The catalog query language without a database: search rows as Backstage's `buildEntitySearch` writes them,
`filter` and `fields` parsing as its request parsers do, projection, and in-memory filter evaluation."""

from __future__ import annotations

import gc

import pytest

from services.catalog.query import (
    AllOf,
    AnyOf,
    KeyValues,
    SearchRow,
    build_search_rows,
    matches,
    parse_fields_param,
    parse_filter_params,
    pinned_kind,
    project_fields,
)
from shared.errors import InputError
from tests.helpers import BACKSTAGE_EXAMPLES, backstage_example_entities

DATASET = BACKSTAGE_EXAMPLES


def petstore() -> dict:
    return {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {
            "name": "Petstore",
            "uid": "0b7c0f8e-uid",
            "etag": "etag-1",
            "description": "The Petstore",
            "annotations": {"backstage.io/techdocs-ref": "dir:.", "github.com/project-slug": "Acme/Petstore"},
            "labels": {"tier": "Gold"},
            "tags": ["Java", "java", "grpc"],
            "links": [{"url": "https://petstore.example.com", "title": "Site"}],
        },
        "spec": {
            "type": "service",
            "lifecycle": "production",
            "owner": "team-a",
            "replicas": 3,
            "ratio": 1.0,
            "tiny": 1e-7,
            "public": True,
            "deprecatedAt": None,
            "ports": [[8080, "http"]],
        },
        "relations": [
            {"type": "ownedBy", "targetRef": "group:default/Team-A"},
            {"type": "providesApi", "targetRef": "api:default/petstore"},
            {"type": "providesApi", "targetRef": "api:default/streetlights"},
        ],
        "status": {"items": [{"type": "x", "level": "error"}]},
    }


def pairs(rows: list[SearchRow]) -> set[tuple[str, str | None]]:
    return {(row.key, row.value) for row in rows}


def test_building_search_rows_leaves_no_reference_cycle():
    # A bulk load builds rows for every entity: garbage in a cycle would wait for the collector, not go at once.
    entity = petstore()
    gc.collect()
    gc.disable()
    try:
        assert build_search_rows(entity)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_search_rows_index_scalars_with_lower_cased_dotted_keys_and_values():
    """Nested scalars become `path=value` rows, both sides lower-cased, the written value kept."""
    rows = build_search_rows(petstore())
    assert {
        ("apiversion", "backstage.io/v1alpha1"),
        ("kind", "component"),
        ("metadata.name", "petstore"),
        ("metadata.description", "the petstore"),
        ("metadata.annotations.backstage.io/techdocs-ref", "dir:."),
        ("metadata.annotations.github.com/project-slug", "acme/petstore"),
        ("metadata.labels.tier", "gold"),
        ("metadata.links.url", "https://petstore.example.com"),
        ("spec.type", "service"),
        ("spec.owner", "team-a"),
    } <= pairs(rows)
    assert SearchRow("kind", "component", "Component") in rows
    assert SearchRow("metadata.name", "petstore", "Petstore") in rows


def test_search_rows_stringify_booleans_numbers_and_nulls_as_javascript_does():
    """Numbers and booleans index as JavaScript's `String()` writes them; null is a row with no value."""
    rows = pairs(build_search_rows(petstore()))
    assert {
        ("spec.replicas", "3"),
        ("spec.ratio", "1"),
        ("spec.tiny", "1e-7"),
        ("spec.public", "true"),
        ("spec.deprecatedat", None),
        ("spec.ports", "8080"),
        ("spec.ports", "http"),
        ("spec.ports.http", "true"),
    } <= rows
    assert ("spec.ports.8080", "true") not in rows


def test_search_rows_index_string_arrays_as_values_and_as_true_keys_without_duplicates():
    """`tags: [Java, java, grpc]` gives `metadata.tags=java|grpc` and `metadata.tags.java=true` once each."""
    rows = build_search_rows(petstore())
    tags = [row for row in rows if row.key.startswith("metadata.tags")]
    assert tags == [
        SearchRow("metadata.tags", "java", "Java"),
        SearchRow("metadata.tags.java", "true", "true"),
        SearchRow("metadata.tags", "grpc", "grpc"),
        SearchRow("metadata.tags.grpc", "true", "true"),
    ]
    assert len(pairs(rows)) == len(rows)


def test_search_rows_index_relations_and_skip_special_keys():
    """Relations index as `relations.<type>=<targetRef>`; status, etag and attachments are not indexed."""
    entity = petstore() | {"attachments": [{"a": 1}]}
    rows = pairs(build_search_rows(entity))
    assert {
        ("relations.ownedby", "group:default/team-a"),
        ("relations.providesapi", "api:default/petstore"),
        ("relations.providesapi", "api:default/streetlights"),
        ("metadata.uid", "0b7c0f8e-uid"),
    } <= rows
    assert not [key for key, _ in rows if key.startswith(("status", "attachments", "metadata.etag", "relations.type"))]


def test_search_rows_give_a_missing_namespace_both_null_and_default():
    """A missing namespace is searchable as null and as `default`; a set one only as itself."""
    rows = pairs(build_search_rows(petstore()))
    assert {("metadata.namespace", None), ("metadata.namespace", "default")} <= rows
    entity = petstore()
    entity["metadata"]["namespace"] = "Ops"
    namespaces = {row.value for row in build_search_rows(entity) if row.key == "metadata.namespace"}
    assert namespaces == {"ops"}


def test_search_rows_drop_long_keys_and_blank_long_values():
    """Keys over 200 characters are not indexed; values over 200 keep the key with a null value."""
    entity = petstore()
    entity["spec"]["k" * 196] = "short"
    entity["spec"]["long"] = "v" * 201
    entity["spec"]["edge"] = "v" * 200
    entity["spec"]["emoji"] = "\N{GRINNING FACE}" * 101
    rows = build_search_rows(entity)
    assert not [row for row in rows if row.key.startswith("spec.kkk")]
    assert SearchRow("spec.long", None, None) in rows
    assert SearchRow("spec.edge", "v" * 200, "v" * 200) in rows
    assert SearchRow("spec.emoji", None, None) in rows


def test_search_rows_reject_keys_that_differ_only_in_case():
    """`spec.foo` next to `spec.Foo` cannot be indexed case-insensitively and is refused."""
    entity = petstore()
    entity["spec"]["Owner"] = "team-b"
    with pytest.raises(InputError) as raised:
        build_search_rows(entity)
    assert "vary only in casing, 'spec.owner'" in raised.value.detail
    assert [error.field for error in raised.value.errors] == ["$.spec.owner"]


def test_filter_params_are_an_or_of_ands():
    """`filter=kind=component,spec.type=service&filter=kind=api` is (component and service) or api."""
    assert parse_filter_params(["kind=component,spec.type=service", "kind=api"]) == AnyOf(
        (
            AllOf((KeyValues("kind", ("component",)), KeyValues("spec.type", ("service",)))),
            AllOf((KeyValues("kind", ("api",)),)),
        )
    )


def test_filter_repeated_keys_in_one_param_or_their_values():
    """Inside one param a repeated key collects its values, which then match as alternatives."""
    assert parse_filter_params(["a=1,b=2,a=3"]) == AnyOf((AllOf((KeyValues("a", ("1", "3")), KeyValues("b", ("2",)))),))


def test_filter_keys_without_equals_are_exists_checks_and_empty_values_are_values():
    """`a` checks that the key exists, `a=` matches the empty string, and `a,a=x` is just `a=x`."""
    assert parse_filter_params(["spec.owner,metadata.description="]) == AnyOf(
        (AllOf((KeyValues("spec.owner"), KeyValues("metadata.description", ("",)))),)
    )
    assert parse_filter_params(["kind,kind=api"]) == AnyOf((AllOf((KeyValues("kind", ("api",)),)),))


def test_filter_is_trimmed_lower_cased_and_splits_on_the_first_equals_only():
    """Whitespace around statements, keys and values goes; case goes; later `=` stay in the value."""
    parsed = parse_filter_params([" Kind = Component , metadata.annotations.backstage.io/techdocs-ref=url:A=B "])
    assert parsed == AnyOf(
        (
            AllOf(
                (
                    KeyValues("kind", ("component",)),
                    KeyValues("metadata.annotations.backstage.io/techdocs-ref", ("url:a=b",)),
                )
            ),
        )
    )


def test_filter_without_statements_is_no_filter():
    """No params, empty params and bare commas mean no filtering; empty params among others are dropped."""
    assert parse_filter_params([]) is None
    assert parse_filter_params(["", " , ,"]) is None
    assert parse_filter_params(["", "kind=api"]) == AnyOf((AllOf((KeyValues("kind", ("api",)),)),))


@pytest.mark.parametrize("statement", ["=a", "=", " = x", "kind=api,=component"])
def test_filter_statements_without_a_key_are_rejected_naming_query_filter(statement):
    """A statement with nothing before its `=` is an input error on `query.filter`."""
    with pytest.raises(InputError) as raised:
        parse_filter_params(["kind=api", statement])
    assert [error.field for error in raised.value.errors] == ["query.filter"]
    assert "is not a valid statement" in raised.value.errors[0].message


def test_fields_params_merge_split_and_trim():
    """Repeated and comma-separated `fields` merge into one ordered tuple; nothing named means None."""
    assert parse_fields_param(["metadata.name, spec.owner", "kind,", "kind"]) == ("metadata.name", "spec.owner", "kind")
    assert parse_fields_param([]) is None
    assert parse_fields_param(["", ","]) is None


def test_fields_with_array_indexing_are_rejected_naming_query_fields():
    """`metadata.tags[0]` is refused as Backstage refuses it."""
    with pytest.raises(InputError) as raised:
        parse_fields_param(["kind", "metadata.tags[0]"])
    assert [error.field for error in raised.value.errors] == ["query.fields"]


def test_projection_rebuilds_the_nested_structure_of_the_named_paths():
    """`metadata.name,spec.owner` keeps just those leaves, nested as in the entity."""
    entity = petstore()
    assert project_fields(entity, ("metadata.name", "spec.owner")) == {
        "metadata": {"name": "Petstore"},
        "spec": {"owner": "team-a"},
    }
    assert project_fields(entity, ("kind", "metadata.tags")) == {
        "kind": "Component",
        "metadata": {"tags": ["Java", "java", "grpc"]},
    }


def test_projection_omits_missing_paths_and_keeps_nulls():
    """Paths that do not resolve are left out; a null value is still a value."""
    entity = petstore()
    assert project_fields(entity, ("metadata.title", "nope.deeper", "spec.deprecatedAt")) == {
        "spec": {"deprecatedAt": None}
    }
    assert project_fields(entity, ("metadata.tags.0",)) == {}


def test_projection_finds_keys_that_contain_dots():
    """`metadata.annotations.backstage.io/techdocs-ref` selects that one annotation."""
    entity = petstore()
    assert project_fields(entity, ("metadata.annotations.backstage.io/techdocs-ref",)) == {
        "metadata": {"annotations": {"backstage.io/techdocs-ref": "dir:."}}
    }


def test_projection_of_a_path_and_its_parent_is_the_parent_and_leaves_the_entity_alone():
    """Selecting `metadata` and `metadata.name` returns all of metadata without touching the entity."""
    entity = petstore()
    projected = project_fields(entity, ("metadata.name", "metadata"))
    assert projected == {"metadata": entity["metadata"]}
    assert entity == petstore()


def test_matches_evaluates_filters_over_search_rows():
    """Values match any listed value, exists checks any row with the key, and the tree nests as parsed."""
    component = build_search_rows(petstore())
    api = build_search_rows({"kind": "API", "metadata": {"name": "petstore", "namespace": "ops"}, "spec": {}})

    def check(*params: str) -> list[bool]:
        parsed = parse_filter_params(list(params))
        assert parsed is not None
        return [matches(parsed, rows) for rows in (component, api)]

    assert check("kind=component,spec.type=service", "kind=api") == [True, True]
    assert check("kind=Component,spec.type=website") == [False, False]
    assert check("metadata.namespace=default") == [True, False]
    assert check("metadata.tags.java,metadata.tags.grpc") == [True, False]
    assert check("metadata.tags=rust,metadata.tags=GRPC") == [True, False]
    assert check("spec.deprecatedAt") == [True, False]
    assert check("relations.ownedBy=group:default/team-a") == [True, False]
    assert check("spec.owner") == [True, False]
    assert check("metadata.name=petstore,kind=api,kind=component") == [True, True]


def test_matches_counts_the_example_catalog_like_backstage():
    """Filtering the real Backstage example catalog by kind gives its published counts."""
    catalog = [build_search_rows(entity) for entity in backstage_example_entities()]

    def count(*params: str) -> int:
        parsed = parse_filter_params(list(params))
        assert parsed is not None
        return sum(matches(parsed, rows) for rows in catalog)

    assert count("kind=component") == 13
    assert count("kind=user", "kind=GROUP") == 25
    assert count("kind=component,spec.type=service") == 10
    assert count("kind=component,spec.type=website,spec.type=library") == 3
    assert count("metadata.tags.java") == 4
    assert count("metadata.namespace=default") == len(catalog) - 1  # one example user lives in `development`


def test_pinned_kind_is_the_one_kind_every_match_has():
    assert pinned_kind(parse_filter_params(["kind=Component,spec.type=service"])) == "component"
    assert pinned_kind(parse_filter_params(["kind=component", "kind=component,spec.type=website"])) == "component"
    assert pinned_kind(parse_filter_params(["kind=component", "kind=api"])) is None
    assert pinned_kind(parse_filter_params(["kind=component,kind=api"])) is None
    assert pinned_kind(parse_filter_params(["kind=component", "spec.type=service"])) is None
    assert pinned_kind(parse_filter_params(["kind"])) is None
    assert pinned_kind(None) is None
