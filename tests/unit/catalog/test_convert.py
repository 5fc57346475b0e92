"""Backstage ↔ native conversion is lossless on every entity of Backstage's example catalog."""

from __future__ import annotations

import msgspec

from services.catalog.convert import NativeEntity, to_backstage, to_native
from services.catalog.model import SCOPE_ANNOTATION
from tests.helpers import backstage_example_entities


def round_trip(entity: dict, scope: str) -> tuple[dict, dict]:
    native = to_native(entity, scope)
    return native, to_backstage(msgspec.convert(native, NativeEntity))


def test_example_entities_round_trip_without_loss():
    entities = backstage_example_entities()
    assert len(entities) == 78
    for entity in entities:
        native, back = round_trip(entity, "account")
        assert back == entity, native
        assert native["ref"].endswith("@account")

        native, back = round_trip(entity, "account.acme.shop")
        annotations = dict(back["metadata"].pop("annotations"))
        assert annotations.pop(SCOPE_ANNOTATION) == "account.acme.shop"
        if annotations:
            back["metadata"]["annotations"] = annotations
        assert back == entity


def test_native_form_lifts_common_fields():
    entity = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Component",
        "metadata": {"name": "checkout", "title": "Checkout", "tags": ["java"]},
        "spec": {"type": "service", "lifecycle": "production", "owner": "team-a", "system": "shop"},
    }
    assert to_native(entity, "account.acme") == {
        "apiVersion": "seed-idp.dev/v1",
        "kind": "Component",
        "scope": "account.acme",
        "ref": "component:default/checkout@account.acme",
        "identifier": "checkout",
        "title": "Checkout",
        "type": "service",
        "lifecycle": "production",
        "owner": "team-a",
        "metadata": {"tags": ["java"]},
        "spec": {"system": "shop"},
        "source": {"apiVersion": "backstage.io/v1alpha1"},
    }
