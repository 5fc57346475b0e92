"""Backstage's `GET /entities/by-name/{kind}/{namespace}/{name}/ancestry`: which Location entities led to an
entity, up to the registered location.

Backstage records each emitted entity's parent in `refresh_state_references`. Here the same fact follows from
stored data: an entity's parent is a Location entity of the same registered location whose target (resolved
against the Location's own file or URL, globs included) is the file or URL the entity was read from
(`location_key`). Entities read straight from the registered target, or written through the Entity API, are
roots: Backstage's synthetic `location:default/generated-…` entity for the registered location has no
counterpart here, as a registered location is not an entity.
"""

from __future__ import annotations

import fnmatch
import posixpath
from urllib.parse import urljoin

import asyncpg
import msgspec

from services.catalog import store
from services.catalog.entity_ref import parse_entity_ref
from services.catalog.model import Ancestry, AncestryItem, StoredEntity
from shared.errors import NotFoundError
from shared.scopes import check_scope


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


async def ancestry(pool: asyncpg.Pool, scope: str, kind: str, namespace: str, name: str) -> Ancestry:
    root_ref = str(parse_entity_ref({"kind": kind, "namespace": namespace, "name": name}))
    async with pool.acquire() as conn:
        root = await store.get_by_ref(conn, check_scope(scope), root_ref)
        if root is None:
            raise NotFoundError(f"no entity {root_ref} at scope {scope}")
        locations = await store.location_entities(conn, root.location_id) if root.location_id else []
        by_ref = {location.ref: location for location in locations}
        chain: list[tuple[StoredEntity, list[str]]] = []
        pending, seen = [root], {root.ref}
        while pending:
            entity = pending.pop(0)
            parents = parents_of(entity, locations)
            chain.append((entity, parents))
            for ref in parents:
                if ref not in seen:
                    seen.add(ref)
                    pending.append(by_ref[ref])
        served = await store.served_in_order(conn, [entity.uid for entity, _ in chain])
    return Ancestry(
        rootEntityRef=root_ref,
        items=[
            AncestryItem(msgspec.json.decode(json), parents) for json, (_, parents) in zip(served, chain, strict=True)
        ],
    )
