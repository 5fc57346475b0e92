"""Where relation targets live: resolving an entity's references to scopes when it is written, and again for
the entities whose references a new or deleted target changes (design.md §5: visible from below).

A reference without a scope resolves at the nearest scope at or above its entity's that has the target, so
resolution depends on other entities: when a target appears at a nearer scope (it shadows the farther one) or
goes away, the references to it are resolved again and both ends of what moved are stitched again. Each entity
whose relations moved so gets a `catalog.entity.updated` event with its served `relations` before and after,
though its document did not change.
"""

from __future__ import annotations

from collections import defaultdict

import asyncpg

from services.catalog import store
from services.catalog.kinds import Kinds
from services.catalog.model import StoredEntity, entity_event, served_relations_of
from services.catalog.relations import Reference, Relation, references_of, resolve, unscoped_targets
from shared.events import Actor, Event
from shared.scopes import ancestors

Stale = set[tuple[str, str]]
"""(scope, ref) of entities whose served form must be stitched again."""
Held = set[tuple[str, str]]
"""(scope, ref) of the entities a transaction created and holds aside until they are stitched
(`store.hold_new_entities`): they exist for resolution, though not yet in `entities`."""


def served_relations(entity: StoredEntity, kinds: Kinds) -> list[Reference]:
    """The references of the document as served: ingested properties may set `spec.owner` and the like."""
    document = entity.served_document
    return references_of(document, kinds.relation_rules(document))[0]


def _ends(relations: set[Relation] | list[Relation]) -> Stale:
    return {(r.scope, r.source) for r in relations} | {(r.target_scope, r.target) for r in relations}


async def resolved(
    conn: asyncpg.Connection,
    scope: str,
    entities: list[tuple[str, str, list[Reference]]],
    held: Held | None = None,
) -> dict[str, list[Relation]]:
    """The relations of each (uid, ref, references) of entities at `scope`, targets placed at their scopes, the
    `held` entities counted as existing."""
    scopes = ancestors(scope)
    if len(scopes) == 1:  # at `account` there is nothing above: every unscoped target resolves there
        return {uid: resolve(ref, scope, references, {}) for uid, ref, references in entities}
    wanted = set().union(*(unscoped_targets(references) for _, _, references in entities))
    nearest = await store.nearest_scopes(conn, scopes, sorted(wanted)) if wanted else {}
    for ref in wanted if held else ():
        deepest_held = next((s for s in reversed(scopes) if (s, ref) in held), None)
        if deepest_held is not None and len(deepest_held) > len(nearest.get(ref, "")):
            nearest[ref] = deepest_held
    return {uid: resolve(ref, scope, references, nearest) for uid, ref, references in entities}


async def write_relations(
    conn: asyncpg.Connection,
    scope: str,
    entities: list[tuple[str, str, list[Reference]]],
    held: Held | None = None,
) -> Stale:
    """Store the resolved relations of entities at `scope`; returns the ends of the new relations."""
    relations = await resolved(conn, scope, entities, held)
    await store.replace_relations(conn, relations)
    return _ends([r for emitted in relations.values() for r in emitted])


async def rewire_referrers(
    conn: asyncpg.Connection,
    actor: Actor,
    scope: str,
    created: list[str],
    deleted: list[str],
    kinds: Kinds,
    held: Held | None = None,
) -> tuple[Stale, list[Event]]:
    """Resolve again the references that entities created or deleted at `scope` may move; returns both ends of
    the relations that moved, and an update event for each entity whose relations moved."""
    if not created and not deleted:
        return set(), []
    uids = await store.referrers(conn, scope, created, deleted)
    if not uids:
        return set(), []
    current = await store.emitted_relations(conn, uids)
    by_scope: dict[str, list[StoredEntity]] = defaultdict(list)
    for entity in await store.entities_by_uid(conn, uids, held=held is not None):
        by_scope[entity.scope].append(entity)
    moved: dict[str, list[Relation]] = {}
    for entity_scope, entities in by_scope.items():
        references = [(entity.uid, entity.ref, served_relations(entity, kinds)) for entity in entities]
        for uid, relations in (await resolved(conn, entity_scope, references, held)).items():
            if set(relations) != current[uid]:
                moved[uid] = relations
    if not moved:
        return set(), []
    referrers = [entity for entities in by_scope.values() for entity in entities if entity.uid in moved]
    before = await _served_relations(conn, referrers)
    await store.replace_relations(conn, moved)
    after = await _served_relations(conn, referrers)
    events = [
        entity_event(
            "updated",
            actor,
            entity,
            {
                "changes": {"relations": {"before": before[entity.uid], "after": after[entity.uid]}},
                "generation": entity.generation,
            },
        )
        for entity in referrers
    ]
    moved_ends = {r for uid in moved for r in current[uid]} | {r for relations in moved.values() for r in relations}
    return _ends(moved_ends), events


async def _served_relations(conn: asyncpg.Connection, entities: list[StoredEntity]) -> dict[str, list[dict[str, str]]]:
    """The `relations` array each entity is served with, whoever emitted the relations, by uid."""
    served = {}
    for scope in {entity.scope for entity in entities}:
        at_scope = [entity for entity in entities if entity.scope == scope]
        relations = await store.relations_from(conn, scope, [entity.ref for entity in at_scope])
        served |= {entity.uid: served_relations_of(entity, relations) for entity in at_scope}
    return served
