"""Stitching: the entity as reads serve it, rebuilt in the writing transaction for every entity a write touches.

Backstage stitches asynchronously into `final_entities` after processing. Here a set of refs is stitched at once,
inside the transaction that changed them (one query for the entities, one for the relations out of them, then
set-based writes of the served JSON, search rows, filter tokens and full-text document), so a committed write is
queryable at once and a bulk load stitches each entity once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterable

import asyncpg

from services.catalog import store
from services.catalog.model import StoredEntity, stitched
from services.catalog.relations import Relation
from services.catalog.resolution import Held
from shared.db import transaction
from shared.garbage_collection import full_collections_deferred

STITCH_BATCH = 2000
"""Entities stitched per round trip: large enough for set-based writes, small enough to bound memory."""
MERGE_ALONGSIDE = 500
"""A bulk write that stitches at least this many entities merges index entries from another connection meanwhile."""


async def restitch_bulk(
    pool: asyncpg.Pool, conn: asyncpg.Connection, stale: Iterable[tuple[str, str]], held: Held | None = None
) -> None:
    """`restitch` for a transaction that called `store.defer_index_merges` before its writes: with many entities,
    another pooled connection merges the GIN pending lists meanwhile (`store.merging_pending_entries`); what is
    left is merged before the transaction commits, so readers never scan a long pending list. Runs without the
    garbage collector's full collections (`full_collections_deferred`)."""
    stale = set(stale)
    with full_collections_deferred():
        async with store.merging_pending_entries(pool) if len(stale) >= MERGE_ALONGSIDE else contextlib.nullcontext():
            await restitch(conn, stale, held)
    await store.merge_pending_entries(conn)


async def restitch(conn: asyncpg.Connection, stale: Iterable[tuple[str, str]], held: Held | None = None) -> None:
    """Rebuild what is served for the entities among `stale` (scope, ref); missing ones are skipped. Those in
    `held` are stored with it (`store.insert_held`), the others' served form is updated.

    Chunk by chunk; a chunk's stitching (Python) runs in a thread while the previous chunk is written
    (PostgreSQL), so both sides work at once."""
    groups: dict[tuple[str, bool], set[str]] = defaultdict(set)
    for scope, ref in stale:
        groups[(scope, held is not None and (scope, ref) in held)].add(ref)
    chunks = [
        (scope, is_held, ordered[start : start + STITCH_BATCH])
        for (scope, is_held), refs in sorted(groups.items())
        for ordered in [sorted(refs)]
        for start in range(0, len(ordered), STITCH_BATCH)
    ]
    writing: tuple[store.StitchedWrite, bool] | None = None
    for scope, is_held, chunk in chunks:
        inputs = await _inputs(conn, scope, chunk, is_held)
        if writing is None:  # nothing to write yet: stitch here (a single write never needs a thread)
            writing = _stitch_all(*inputs), is_held
            continue
        stitching = asyncio.ensure_future(asyncio.to_thread(_stitch_all, *inputs))
        try:
            await _write(conn, *writing)
        finally:
            writing = await stitching, is_held
    if writing is not None and writing[0].uids:
        await _write(conn, *writing)


async def _write(conn: asyncpg.Connection, write: store.StitchedWrite, held: bool) -> None:
    await (store.insert_held if held else store.write_stitched)(conn, write)


async def _inputs(
    conn: asyncpg.Connection, scope: str, refs: list[str], held: bool
) -> tuple[list[StoredEntity], dict[str, list[Relation]]]:
    entities = await store.get_many(conn, scope, refs, held=held)
    relations: dict[str, list[Relation]] = defaultdict(list)
    if entities:
        for relation in await store.relations_from(conn, scope, entities):
            relations[relation.source].append(relation)
    return list(entities.values()), relations


def _stitch_all(entities: list[StoredEntity], relations: dict[str, list[Relation]]) -> store.StitchedWrite:
    return store.stitched_write([stitched(entity, relations.get(entity.ref, [])) for entity in entities])


async def stitch_unstitched(pool: asyncpg.Pool) -> None:
    """Stitch entities stored before the catalog kept their served JSON (once, after migration 0006)."""
    async with transaction(pool) as conn:
        await restitch(conn, await store.unstitched(conn))
