"""Backstage's `GET /entities/by-name/{kind}/{namespace}/{name}/ancestry`: which Location entities led to an
entity, up to the registered location.

Backstage records each emitted entity's parent in `refresh_state_references`. Here the same fact follows from
stored data: an entity's parent is a Location entity of the same registered location whose target (resolved
against the Location's own file or URL, globs included) is the file or URL the entity was read from
(`location_key`). What the registered target itself emits has, as in Backstage, the registered location's
`location:default/generated-<sha1 of type:target>` entity as parent (Backstage's `locationSpecToLocationEntity`),
which is stored with the location's entities and has no parent. Entities written through the Entity API are roots.
"""

from __future__ import annotations

import fnmatch
import posixpath
from urllib.parse import urljoin

import asyncpg
import msgspec

from services.catalog import store
from services.catalog.entity_ref import parse_entity_ref
from services.catalog.model import Ancestry, AncestryItem, ByNameQuery, StoredEntity
from services.catalog.scopes import ScopeSelector
from shared.errors import NotFoundError


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
        locations = await store.location_entities(conn, root.location_id) if root.location_id else []
        by_ref = {entity.ref: entity for entity in locations}
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
    items = [AncestryItem(msgspec.json.decode(json), parents) for json, (_, parents) in zip(served, chain, strict=True)]
    return Ancestry(rootEntityRef=root_ref, items=items)
