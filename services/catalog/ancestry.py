"""Backstage's `GET /entities/by-name/{kind}/{namespace}/{name}/ancestry`: which Location entities led to an
entity, up to the registered location.

Backstage records each emitted entity's parent in `refresh_state_references`. Here the same fact follows from
stored data: an entity's parent is a Location entity of the same registered location whose target (resolved
against the Location's own file or URL, globs included) is the file or URL the entity was read from
(`location_key`). What the registered target itself emits has, as in Backstage, the registered location's
`location:default/generated-<sha1 of type:target>` entity as parent (Backstage's `locationSpecToLocationEntity`),
whose own parent list is empty. That entity is built from the location row when an ancestry is asked for; it is
not stored, so entity lists do not show it as Backstage's do. Entities written through the Entity API are roots.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import uuid
from typing import Any
from urllib.parse import urljoin

import asyncpg
import msgspec

from services.catalog import store
from services.catalog.entity_ref import parse_entity_ref, ref_of
from services.catalog.model import Ancestry, AncestryItem, ByNameQuery, StoredEntity, document_etag, stitch
from services.catalog.reader import LOCATION_ANNOTATION, ORIGIN_LOCATION_ANNOTATION
from services.catalog.scopes import ScopeSelector
from shared.errors import NotFoundError

_GENERATED_UIDS = uuid.UUID("5d6c1d8e-8f47-4c59-9a43-2b8f0b8f6a11")
"""Namespace of the generated Location entities' uids (uuid5 of the location id): stable across reads."""


def registered_location_entity(location_id: str, scope: str, type_: str, target: str) -> dict[str, Any]:
    """The Location entity Backstage generates for a registered location, as served."""
    key = f"{type_}:{target}"
    document = {
        "apiVersion": "backstage.io/v1alpha1",
        "kind": "Location",
        "metadata": {
            "name": f"generated-{hashlib.sha1(key.encode()).hexdigest()}",
            "namespace": "default",
            "annotations": {LOCATION_ANNOTATION: key, ORIGIN_LOCATION_ANNOTATION: key},
        },
        "spec": {"type": type_, "target": target},
    }
    uid = str(uuid.uuid5(_GENERATED_UIDS, location_id))
    return stitch(StoredEntity(uid, scope, str(ref_of(document)), document, document_etag(document), 1), [])


def _target_keys(location: StoredEntity) -> list[str]:
    """The location keys (`file:<path>` or `url:<url>`, possibly globs) a Location entity's targets name."""
    spec = location.served_document.get("spec") or {}
    own_type, _, own_target = (location.location_key or "").partition(":")
    target_type = str(spec.get("type") or own_type)
    targets = [spec.get("target"), *(spec.get("targets") or [])]
    keys = []
    for target in (t for t in targets if isinstance(t, str) and t):
        if target_type == "url":
            keys.append(f"url:{urljoin(own_target, target) if own_type == 'url' else target}")
        elif target_type == "file" and own_type == "file":
            keys.append(f"file:{posixpath.normpath(posixpath.join(posixpath.dirname(own_target), target))}")
    return keys


def parents_of(entity: StoredEntity, locations: list[StoredEntity]) -> list[str]:
    """Refs of the Location entities among `locations` whose targets emitted `entity`."""
    if entity.location_key is None:
        return []
    return sorted(
        location.ref
        for location in locations
        if location.ref != entity.ref
        and any(fnmatch.fnmatchcase(entity.location_key, key) for key in _target_keys(location))
    )


async def ancestry(pool: asyncpg.Pool, query: ByNameQuery, kind: str, namespace: str, name: str) -> Ancestry:
    root_ref = str(parse_entity_ref({"kind": kind, "namespace": namespace, "name": name}))
    scopes = ScopeSelector.of(query.scope, parents=query.includeParents).exact_scopes()
    async with pool.acquire() as conn:
        root = await store.get_nearest(conn, scopes, root_ref)
        if root is None:
            raise NotFoundError(f"no entity {root_ref} at scope {query.scope}")
        location = await store.get_location(conn, root.location_id) if root.location_id else None
        locations = await store.location_entities(conn, root.location_id) if location else []
        generated = (
            registered_location_entity(location["id"], location["scope"], location["type"], location["target"])
            if location
            else None
        )
        by_ref = {entity.ref: entity for entity in locations}
        chain: list[tuple[StoredEntity, list[str]]] = []
        pending, seen = [root], {root.ref}
        while pending:
            entity = pending.pop(0)
            parents = parents_of(entity, locations)
            chain.append((entity, parents or ([str(ref_of(generated))] if generated else [])))
            for ref in parents:
                if ref not in seen:
                    seen.add(ref)
                    pending.append(by_ref[ref])
        served = await store.served_in_order(conn, [entity.uid for entity, _ in chain])
    items = [AncestryItem(msgspec.json.decode(json), parents) for json, (_, parents) in zip(served, chain, strict=True)]
    if generated:
        items.append(AncestryItem(generated, []))
    return Ancestry(rootEntityRef=root_ref, items=items)
