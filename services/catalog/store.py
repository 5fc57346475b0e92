"""Every SQL statement of the catalog. Functions take a connection; callers own transactions."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import asyncpg
import msgspec

from services.catalog.identity_mirror import IDENTITY_ID_ANNOTATION
from services.catalog.model import SearchHit, ServedEntity, StitchedEntity, StoredEntity
from services.catalog.predicates import HasPrefix, Not, Predicate
from services.catalog.query import (
    AllOf,
    AnyOf,
    Filter,
    KeyValues,
    SearchRow,
    full_text_indexed,
    pinned_kind,
    prefix_tsquery,
    search_words,
)
from services.catalog.relations import Relation
from services.catalog.scopes import ScopeSelector
from services.catalog.visibility import RESTRICTED_TAGS, identity_ids
from shared.authz import EVERYTHING, Visibility, visibility_condition
from shared.db import like_escape

log = logging.getLogger(__name__)
_COLUMNS = (
    "uid::text AS uid, scope, ref, document, etag, generation, location_id::text AS location_id, location_key, "
    "orphan, properties"
)


def _entity(row: asyncpg.Record | None) -> StoredEntity | None:
    return StoredEntity(**dict(row)) if row else None


async def get_by_ref(conn: asyncpg.Connection, scope: str, ref: str, *, lock: bool = False) -> StoredEntity | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM entities WHERE scope = $1 AND ref = $2{suffix}", scope, ref)
    return _entity(row)


async def get_nearest(conn: asyncpg.Connection, scopes: list[str], ref: str) -> StoredEntity | None:
    """The entity with `ref` at the deepest of `scopes` (a scope and its ancestors) that has it."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM entities WHERE scope = ANY($1::text[]) AND ref = $2 "
        "ORDER BY length(scope) DESC LIMIT 1",
        scopes,
        ref,
    )
    return _entity(row)


async def get_by_uid(conn: asyncpg.Connection, uid: str, *, lock: bool = False) -> StoredEntity | None:
    try:
        uuid.UUID(uid)
    except ValueError:
        return None
    suffix = " FOR UPDATE" if lock else ""
    return _entity(await conn.fetchrow(f"SELECT {_COLUMNS} FROM entities WHERE uid = $1{suffix}", uid))


async def get_many(
    conn: asyncpg.Connection, scope: str, refs: list[str], *, lock: bool = False, held: bool = False
) -> dict[str, StoredEntity]:
    """The entities with these refs at `scope`; the held ones (`hold_new_entities`) instead when `held`."""
    suffix = " FOR UPDATE" if lock else ""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {'held_entities' if held else 'entities'} "
        f"WHERE scope = $1 AND ref = ANY($2::text[]){suffix}",
        scope,
        refs,
    )
    return {row["ref"]: StoredEntity(**dict(row)) for row in rows}


_json_text = msgspec.json.Encoder()


def _json_texts(values: Iterable[Any]) -> list[str]:
    # jsonb travels as text and is cast in SQL: in a jsonb[] argument asyncpg would read a list as a dimension.
    return [_json_text.encode(v).decode() for v in values]


_ENTITY_COLUMNS = (
    "uid, scope, ref, kind, namespace, name, document, etag, generation, location_id, location_key, orphan, properties"
)
"""What `insert_entities` writes: every column of `entities` but the served form and the timestamps."""


async def hold_new_entities(conn: asyncpg.Connection) -> None:
    """For the rest of this transaction, `insert_entities(..., held=True)` keeps new entities in a temporary
    table until `insert_held` stores them with their served form: a row inserted and then updated with it has
    every index of `entities` written twice (the update cannot be HOT), which was half of PostgreSQL's work in a
    bulk load."""
    await conn.execute(
        """CREATE TEMPORARY TABLE IF NOT EXISTS held_entities (
               uid uuid PRIMARY KEY, scope text NOT NULL, ref text NOT NULL, kind text NOT NULL,
               namespace text NOT NULL, name text NOT NULL, document jsonb NOT NULL, etag text NOT NULL,
               generation int NOT NULL, location_id uuid, location_key text, orphan boolean NOT NULL,
               properties jsonb NOT NULL, UNIQUE (scope, ref)
           ) ON COMMIT DELETE ROWS"""
    )


async def insert_entities(conn: asyncpg.Connection, entities: list[StoredEntity], *, held: bool = False) -> None:
    """Insert new entities in one statement; their served form is written by `write_stitched`, or with the whole
    row by `insert_held` when `held` (after `hold_new_entities`)."""
    refs = [entity_ref_parts(e.ref) for e in entities]
    await conn.execute(
        f"""INSERT INTO {"held_entities" if held else "entities"} ({_ENTITY_COLUMNS})
           SELECT uid, scope, ref, kind, namespace, name, document::jsonb, etag, generation, location_id,
                  location_key, orphan, properties::jsonb
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[], $9::int[], $10::uuid[], $11::text[], $12::bool[], $13::text[])
                AS t(uid, scope, ref, kind, namespace, name, document, etag, generation, location_id, location_key,
                     orphan, properties)""",
        [e.uid for e in entities],
        [e.scope for e in entities],
        [e.ref for e in entities],
        [kind for kind, _, _ in refs],
        [namespace for _, namespace, _ in refs],
        [name for _, _, name in refs],
        _json_texts(e.document for e in entities),
        [e.etag for e in entities],
        [e.generation for e in entities],
        [e.location_id for e in entities],
        [e.location_key for e in entities],
        [e.orphan for e in entities],
        _json_texts(e.properties for e in entities),
    )


def entity_ref_parts(ref: str) -> tuple[str, str, str]:
    kind, _, rest = ref.partition(":")
    namespace, _, name = rest.partition("/")
    return kind, namespace, name


async def update_entities(conn: asyncpg.Connection, entities: list[StoredEntity]) -> None:
    """Store new versions of existing entities in one statement."""
    await conn.execute(
        """UPDATE entities e SET document = t.document::jsonb, etag = t.etag, generation = t.generation,
                                 location_id = t.location_id, location_key = t.location_key, orphan = t.orphan,
                                 properties = t.properties::jsonb, updated_at = now()
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::uuid[], $6::text[], $7::bool[],
                       $8::text[]) AS t(uid, document, etag, generation, location_id, location_key, orphan, properties)
           WHERE e.uid = t.uid""",
        [e.uid for e in entities],
        _json_texts(e.document for e in entities),
        [e.etag for e in entities],
        [e.generation for e in entities],
        [e.location_id for e in entities],
        [e.location_key for e in entities],
        [e.orphan for e in entities],
        _json_texts(e.properties for e in entities),
    )


async def delete_entities(conn: asyncpg.Connection, uids: list[str]) -> None:
    """Delete entities with the relations they emit and their search rows; favorites go by cascade."""
    await conn.execute("DELETE FROM relations WHERE originator = ANY($1::uuid[])", uids)
    await conn.execute("DELETE FROM search WHERE entity_uid = ANY($1::uuid[])", uids)
    await conn.execute("DELETE FROM entities WHERE uid = ANY($1::uuid[])", uids)


async def replace_relations(conn: asyncpg.Connection, emitted: dict[str, list[Relation]]) -> None:
    """Make `emitted[uid]` the relations each entity emits (deduplicated per entity by `relations.resolve`)."""
    await conn.execute("DELETE FROM relations WHERE originator = ANY($1::uuid[])", list(emitted))
    await conn.copy_records_to_table(
        "relations",
        records=[
            (uid, r.scope, r.source, r.type, r.target_scope, r.target)
            for uid, relations in emitted.items()
            for r in relations
        ],
        columns=["originator", "scope", "source_ref", "type", "target_scope", "target_ref"],
    )


_RELATION_COLUMNS = "scope, source_ref, type, target_scope, target_ref"
"""A relation's columns in `Relation`'s order: a row of them is the tuple (`Relation._make`)."""


async def relations_from(conn: asyncpg.Connection, scope: str, refs: Iterable[str]) -> list[Relation]:
    """Every relation whose source is one of `refs` at `scope`, once per entity that emits it: two can emit the
    same one (a Group's `spec.parent` and its parent's `spec.children`). Every caller makes a set of them, so the
    query leaves the duplicates to them rather than hashing every row to drop a few."""
    rows = await conn.fetch(
        f"SELECT {_RELATION_COLUMNS} FROM relations WHERE scope = $1 AND source_ref = ANY($2::text[])",
        scope,
        list(refs),
    )
    return list(map(Relation._make, rows))


async def emitted_relations(conn: asyncpg.Connection, originators: list[str]) -> dict[str, set[Relation]]:
    """The relations each of these entities emits, by uid."""
    rows = await conn.fetch(
        f"SELECT originator::text, {_RELATION_COLUMNS} FROM relations WHERE originator = ANY($1::uuid[])",
        originators,
    )
    emitted: dict[str, set[Relation]] = {uid: set() for uid in originators}
    for originator, *relation in rows:
        emitted[originator].add(Relation._make(relation))
    return emitted


async def emitted_targets(conn: asyncpg.Connection, originators: list[str]) -> set[tuple[str, str]]:
    """Both ends, as (scope, ref), of every relation these entities emit."""
    rows = await conn.fetch(
        "SELECT scope, source_ref, target_scope, target_ref FROM relations WHERE originator = ANY($1::uuid[])",
        originators,
    )
    return {(r["scope"], r["source_ref"]) for r in rows} | {(r["target_scope"], r["target_ref"]) for r in rows}


async def nearest_scopes(conn: asyncpg.Connection, scopes: list[str], refs: list[str]) -> dict[str, str]:
    """Per ref, the deepest of `scopes` (a scope and its ancestors) that has an entity with it."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (ref) ref, scope FROM entities WHERE scope = ANY($1::text[]) AND ref = ANY($2::text[]) "
        "ORDER BY ref, length(scope) DESC",
        scopes,
        refs,
    )
    return {row["ref"]: row["scope"] for row in rows}


# Repeated in every query that should use the partial index `relations_by_target` (migration 0020).
_MAY_RESOLVE_ELSEWHERE = "(scope <> 'account' OR target_scope <> 'account')"


async def referrers(conn: asyncpg.Connection, scope: str, created: list[str], deleted: list[str]) -> list[str]:
    """Uids of the entities at `scope` or below whose references to these refs may now resolve elsewhere:
    those pointing at another scope than `scope` for a ref created there, at `scope` for one deleted there."""
    rows = await conn.fetch(
        f"""SELECT DISTINCT originator::text AS uid FROM relations
            WHERE {_MAY_RESOLVE_ELSEWHERE} AND (scope = $1 OR starts_with(scope, $1 || '.'))
              AND ((target_ref = ANY($2::text[]) AND target_scope <> $1)
                   OR (target_ref = ANY($3::text[]) AND target_scope = $1))""",
        scope,
        created,
        deleted,
    )
    return [row["uid"] for row in rows]


async def entities_by_uid(conn: asyncpg.Connection, uids: list[str], *, held: bool = False) -> list[StoredEntity]:
    """The entities with these uids, the held ones (`hold_new_entities`) included when `held`."""
    query = f"SELECT {_COLUMNS} FROM entities WHERE uid = ANY($1::uuid[])"
    if held:
        query += f" UNION ALL SELECT {_COLUMNS} FROM held_entities WHERE uid = ANY($1::uuid[])"
    rows = await conn.fetch(query, uids)
    return [StoredEntity(**dict(r)) for r in rows]


TOKEN_SEPARATOR = "\x1f"
IDENTITY_ID_KEY = f"metadata.annotations.{IDENTITY_ID_ANNOTATION}"


def filter_token(key: str, value: str) -> str:
    """The token a filter on `key=value` matches (both lower-cased, as in the search rows)."""
    return key.lower() + TOKEN_SEPARATOR + value.lower()


def search_tokens(rows: list[SearchRow]) -> list[str]:
    """`key<US>value` for every indexed value and `key<US>` for every key: what filters match against. `rows` are
    distinct (key, value) pairs, as `build_search_rows` makes them."""
    tokens = [key + TOKEN_SEPARATOR for key in {key for key, _, _ in rows}]
    tokens += [key + TOKEN_SEPARATOR + value for key, value, _ in rows if value is not None]
    tokens.sort()
    return tokens


@dataclasses.dataclass(frozen=True, slots=True)
class StitchedWrite:
    """What `write_stitched` (or `insert_held`) sends for some stitched entities, built by `stitched_write` off the
    event loop, so that a bulk load prepares the next chunk while PostgreSQL writes this one."""

    uids: list[str]
    search_records: list[tuple[str, str, str | None, str | None]]
    final_entities: list[str]
    tokens: list[str]
    """Per entity, its filter tokens as a JSON array."""
    full_text: list[list[str]]
    """Per full-text weight (A to D), every entity's text."""

    def stitched_args(self) -> list[list[str]]:
        """The arrays `_STITCHED_INPUTS` names, in its order."""
        return [self.final_entities, self.tokens, *self.full_text]


def stitched_write(stitched: list[StitchedEntity]) -> StitchedWrite:
    return StitchedWrite(
        uids=[s.uid for s in stitched],
        search_records=[(s.uid, *row) for s in stitched for row in s.search_rows],
        final_entities=[s.final_entity for s in stitched],
        tokens=_json_texts(search_tokens(s.search_rows) for s in stitched),
        full_text=[[s.full_text[i] for s in stitched] for i in range(4)],
    )


_SEARCH_COLUMNS = ["entity_uid", "key", "value", "original_value"]


async def _replace_search_rows(conn: asyncpg.Connection, write: StitchedWrite) -> None:
    """Make the stitched entities' search rows `write.search_records`, touching only the rows that changed: a
    property or relation that changes one row of an entity's ~30 no longer rewrites (and re-indexes) them all."""
    stored = await conn.fetch(
        "SELECT entity_uid::text, key, value, original_value FROM search WHERE entity_uid = ANY($1::uuid[])",
        write.uids,
    )
    records = write.search_records
    if stored:
        current = set(map(tuple, stored))
        gone = current.difference(records)
        records = [record for record in records if record not in current]
        if gone:
            await conn.execute(
                """DELETE FROM search s USING unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
                                              AS g(entity_uid, key, value, original_value)
                   WHERE s.entity_uid = g.entity_uid AND s.key = g.key AND s.value IS NOT DISTINCT FROM g.value
                     AND s.original_value IS NOT DISTINCT FROM g.original_value""",
                *map(list, zip(*gone, strict=True)),
            )
    if records:
        await conn.copy_records_to_table("search", records=records, columns=_SEARCH_COLUMNS)


_STITCHED_COLUMNS = {
    "final_entity": "t.final_entity",
    "search_tokens": "ARRAY(SELECT jsonb_array_elements_text(t.tokens::jsonb))",
    "search_infix": "lower(t.a || ' ' || t.b)",
    "search_text": "setweight(to_tsvector('simple', t.a), 'A') || setweight(to_tsvector('simple', t.b), 'B') "
    "|| setweight(to_tsvector('simple', t.c), 'C') || setweight(to_tsvector('simple', t.d), 'D')",
}
"""The served form's columns of `entities`, each computed from `StitchedWrite.stitched_args` unnested as `t`."""
_STITCHED_INPUTS = "final_entity, tokens, a, b, c, d"


def _stitched_args(first: int) -> str:
    """The parameters of `_STITCHED_INPUTS`, numbered from `first`."""
    return ", ".join(f"${n}::text[]" for n in range(first, first + len(_STITCHED_INPUTS.split(", "))))


async def write_stitched(conn: asyncpg.Connection, write: StitchedWrite) -> None:
    """Store what stitching produced: the served JSON, the search rows, filter tokens and full-text document."""
    await _replace_search_rows(conn, write)
    await conn.execute(
        f"""UPDATE entities e SET {", ".join(f"{column} = {value}" for column, value in _STITCHED_COLUMNS.items())}
            FROM unnest($1::uuid[], {_stitched_args(2)}) AS t(uid, {_STITCHED_INPUTS})
            WHERE e.uid = t.uid""",
        write.uids,
        *write.stitched_args(),
    )


async def insert_held(conn: asyncpg.Connection, write: StitchedWrite) -> None:
    """Store held entities (`hold_new_entities`) with what stitching produced for them, each row written once."""
    await conn.copy_records_to_table("search", records=write.search_records, columns=_SEARCH_COLUMNS)
    await conn.execute(
        f"""INSERT INTO entities ({_ENTITY_COLUMNS}, {", ".join(_STITCHED_COLUMNS)})
            SELECT {", ".join(f"h.{column}" for column in _ENTITY_COLUMNS.split(", "))},
                   {", ".join(_STITCHED_COLUMNS.values())}
            FROM unnest($1::uuid[], {_stitched_args(2)}) AS t(uid, {_STITCHED_INPUTS})
                 JOIN held_entities h ON h.uid = t.uid""",
        write.uids,
        *write.stitched_args(),
    )


GIN_INDEXES = ("entities_search_tokens", "entities_search_text", "entities_search_infix")


async def defer_index_merges(conn: asyncpg.Connection) -> None:
    """For the rest of this transaction, entity writes only append to the GIN indexes' pending lists: merged every
    4 MB (the default), the merges were most of a bulk load's stitched-column writes. `merge_pending_entries`
    merges them once, before the transaction commits, so readers never scan a long pending list."""
    await conn.execute("SET LOCAL gin_pending_list_limit = '1GB'")


@dataclasses.dataclass
class MergeProgress:
    pages: int = 0
    """Pending-list pages merged so far by the other connection."""


@contextlib.asynccontextmanager
async def merging_pending_entries(pool: asyncpg.Pool, pause: float = 1.0) -> AsyncIterator[MergeProgress]:
    """While the block runs, merge the GIN indexes' pending lists from another pooled connection, round after round.

    A bulk write fills the lists from its own transaction (`defer_index_merges`); merging moves index entries
    physically, whoever's transaction wrote them, so another backend can do it on the core the writing backend
    leaves idle, instead of all of it after the writes. What is left when the block ends is merged by
    `merge_pending_entries` in the writing transaction. A failing merger is logged and the write goes on."""
    done = asyncio.Event()
    progress = MergeProgress()

    async def merge_until_done() -> None:
        try:
            async with pool.acquire() as conn:
                while not done.is_set():
                    async with conn.transaction():
                        progress.pages += await merge_pending_entries(conn)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), pause)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("merging GIN pending lists alongside a bulk write failed: %s", exc)

    merger = asyncio.create_task(merge_until_done())
    try:
        yield progress
    finally:
        done.set()
        await merger


async def merge_pending_entries(conn: asyncpg.Connection) -> int:
    """Merge the GIN indexes' pending lists into the indexes, sorting with up to 256 MB (in 4 MB rounds by default,
    `work_mem`, when writes overflow the list); returns the pending-list pages merged. Call it in a transaction."""
    await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    return await conn.fetchval(
        "SELECT sum(gin_clean_pending_list(index::regclass))::int FROM unnest($1::text[]) AS index", GIN_INDEXES
    )


async def unstitched(conn: asyncpg.Connection) -> set[tuple[str, str]]:
    """(scope, ref) of entities stored before stitched JSON was kept (migration 0006)."""
    rows = await conn.fetch("SELECT scope, ref FROM entities WHERE final_entity IS NULL")
    return {(r["scope"], r["ref"]) for r in rows}


def filter_sql(node: Filter, args: list[Any]) -> str:
    """SQL over `entities.search_tokens` (GIN-indexed) for a parsed Backstage filter tree."""
    if isinstance(node, AnyOf):
        return "(" + " OR ".join(filter_sql(item, args) for item in node.items) + ")"
    if isinstance(node, AllOf):
        return "(" + " AND ".join(filter_sql(item, args) for item in node.items) + ")"
    assert isinstance(node, KeyValues)
    prefix = node.key + TOKEN_SEPARATOR
    if node.values:
        args.append([prefix + value for value in node.values])
        return f"search_tokens && ${len(args)}::text[]"
    args.append([prefix])
    return f"search_tokens @> ${len(args)}::text[]"


async def list_entities(
    conn: asyncpg.Connection, scope: ScopeSelector, where: Filter | None, *, offset: int, limit: int | None
) -> list[str]:
    """The served JSON of matching entities, ordered by ref (then scope)."""
    args: list[Any] = []
    condition = scope_sql(scope, args) + (f" AND {filter_sql(where, args)}" if where is not None else "")
    paging = f" OFFSET {int(offset)}" + (f" LIMIT {int(limit)}" if limit is not None else "")
    uids = await conn.fetch(f"SELECT uid FROM entities WHERE {condition} ORDER BY ref, scope{paging}", *args)
    return await served_in_order(conn, [r["uid"] for r in uids])


def _like_fragment(term: str) -> str:
    return "%" + like_escape(term) + "%"


TRIGRAM_KEYS = frozenset({"metadata.name", "metadata.title", "spec.profile.displayname"})
"""Search keys whose values have a trigram index (migration 0030): the fields of Backstage's entity list search."""


def full_text_by_trigrams(term: str, keys: tuple[str, ...]) -> bool:
    """Whether the trigram index answers a `fullTextFilter`: it names only indexed keys, and the term has a word of
    three letters or more (without a trigram to look up, the index would hand back every row)."""
    return bool(keys) and TRIGRAM_KEYS.issuperset(keys) and any(len(word) >= 3 for word in search_words(term))


def _query_where(
    scope: ScopeSelector, where: Predicate | None, full_text: tuple[str, tuple[str, ...]] | None, args: list[Any]
) -> str:
    condition = scope_sql(scope, args)
    if where is not None:
        condition += f" AND {predicate_sql(where, args)}"
    if full_text is not None:
        term, keys = full_text
        if full_text_by_trigrams(term, keys):
            # Exactly the matching search rows, from the trigram index (migration 0030); the keys are written as
            # literals (all from TRIGRAM_KEYS) so the planner proves the index's predicate.
            args.append(_like_fragment(term.lower()))
            literals = ", ".join(f"'{key}'" for key in sorted(set(keys)))
            return (
                f"{condition} AND uid IN (SELECT entity_uid FROM search WHERE key IN ({literals}) "
                f"AND value LIKE ${len(args)})"
            )
        # Words of one or two letters start too many words to narrow anything down.
        words = [word for word in search_words(term) if len(word) > 2]
        narrowed = bool(words) and full_text_indexed(keys)
        if narrowed:
            # The GIN-indexed full-text document narrows the candidates to entities with words starting with the
            # term's words; the LIKE below then keeps Backstage's substring match on the chosen fields.
            args.append(prefix_tsquery(words))
            condition += f" AND search_text @@ to_tsquery('simple', ${len(args)})"
        args.append(_like_fragment(term.lower()))
        like = f"value LIKE ${len(args)}"
        if keys:
            args.append(list(keys))
            like += f" AND key = ANY(${len(args)}::text[])"
        if narrowed:
            # Checked per candidate through the entity's search rows (`OFFSET 0` keeps it a correlated subplan):
            # joined instead, the planner scanned every search row of the key (1.5 s at 100,000 entities).
            condition += f" AND EXISTS (SELECT 1 FROM search WHERE entity_uid = entities.uid AND {like} OFFSET 0)"
        else:
            condition += f" AND uid IN (SELECT entity_uid FROM search WHERE {like})"
    return condition


async def query_entities(
    conn: asyncpg.Connection,
    scope: ScopeSelector,
    where: Predicate | None,
    *,
    full_text: tuple[str, tuple[str, ...]] | None,
    order: list[tuple[str, bool]],
    offset: int,
    limit: int,
) -> tuple[list[Any], int]:
    """The uids of one page of matching entities ordered by search fields (then ref), and the total."""
    args: list[Any] = []
    condition = _query_where(scope, where, full_text, args)
    total = await cached_count(conn, f"SELECT count(*) FROM entities WHERE {condition}", args)
    joins, sort = [], []
    for i, (key, descending) in enumerate(order):
        args.append(key)
        joins.append(
            f"LEFT JOIN LATERAL (SELECT min(value) AS value FROM search WHERE entity_uid = e.uid "
            f"AND key = ${len(args)}) o{i} ON true"
        )
        sort.append(f"o{i}.value {'DESC' if descending else 'ASC'} NULLS LAST")
    sort.append("e.ref, e.scope")
    # Choose the page on narrow rows first, then read only its documents: sorting whole rows (documents
    # included) before the limit made a filtered page cost grow with the number of matches. With a filter,
    # `OFFSET 0` keeps the matches coming from the token index: walking the ref index instead until a page of
    # matches turns up crosses every entity of the kinds sorted before (all APIs before the first component).
    fence = " OFFSET 0" if where is not None or full_text is not None else ""
    kind = pinned_kind(where)
    if (
        kind is not None
        and not order
        and not scope.parents
        and not scope.children
        and await _walk_is_cheaper(conn, scope.scope, kind, total, offset + limit)
    ):
        # The filter pins the kind and the matches are dense: walk the kind's entities in ref order and stop after
        # the page (1 to 2 ms instead of 200 ms for 36,010 matches at 100,000 entities). `IS TRUE` keeps the token
        # index out of this plan: asyncpg's prepared statements get generic plans after five runs, and a generic
        # plan cannot tell dense matches from rare ones; the choice is made here, from the counts.
        args.extend([scope.scope, kind])
        condition = f"scope = ${len(args) - 1} AND kind = ${len(args)} AND ({condition}) IS TRUE"
        fence = ""
    uids = await conn.fetch(
        f"SELECT e.uid FROM (SELECT uid, ref, scope FROM entities WHERE {condition}{fence}) e {' '.join(joins)} "
        f"ORDER BY {', '.join(sort)} OFFSET {int(offset)} LIMIT {int(limit)}",
        *args,
    )
    return [r["uid"] for r in uids], total


async def _walk_is_cheaper(conn: asyncpg.Connection, scope: str, kind: str, total: int, rows: int) -> bool:
    """Whether walking a kind's entities in ref order finds `rows` of `total` matches (assumed spread evenly) after
    reading fewer entities than reading every match would."""
    if total == 0:
        return False
    of_kind = await cached_count(conn, "SELECT count(*) FROM entities WHERE scope = $1 AND kind = $2", [scope, kind])
    return rows * of_kind < total * total


_COUNT_HIT = "SELECT c.total FROM count_cache c JOIN write_generation g ON c.generation = g.value WHERE c.key = $1"
_COUNT_LOCK = 0x636F756E
"""Advisory lock class (two-key form) under which one reader at a time counts a query key."""


async def cached_count(conn: asyncpg.Connection, count_sql: str, args: list[Any]) -> int:
    """`count_sql`'s count, from `count_cache` while no entity write has committed since it was counted (migration
    0012). After a write, the first reader of a query counts it; concurrent readers of the same query wait for
    its answer instead of counting too. Not for a transaction that has written entities: it would cache a count
    of its uncommitted writes under the generation before them."""
    key = hashlib.sha256(_json_text.encode([count_sql, args])).hexdigest()
    total = await conn.fetchval(_COUNT_HIT, key)
    if total is not None:
        return total
    own_transaction = not conn.is_in_transaction()
    async with conn.transaction():
        # A cached count is derived data: lost in a crash, it is counted again, so its commit need not wait for
        # the WAL to reach the disk (on the first read of every query after a write). Only in a transaction of
        # its own: inside a caller's, the setting would last until the caller's commit and cover its writes too.
        if own_transaction:
            await conn.execute("SET LOCAL synchronous_commit = off")
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _COUNT_LOCK, key)
        total = await conn.fetchval(_COUNT_HIT, key)  # counted while this reader waited
        if total is not None:
            return total
        # One statement, one snapshot: the count is exactly that of the generation read with it.
        generation, total = await conn.fetchrow(f"SELECT (SELECT value FROM write_generation), ({count_sql})", *args)
        await conn.execute(
            """INSERT INTO count_cache (key, generation, total) VALUES ($1, $2, $3)
               ON CONFLICT (key) DO UPDATE SET generation = excluded.generation, total = excluded.total
               WHERE count_cache.generation < excluded.generation""",
            key,
            generation,
            total,
        )
        # Keeps the table to about the queries asked since the last write; SKIP LOCKED: never wait on another reader.
        await conn.execute(
            """DELETE FROM count_cache WHERE key IN (
                   SELECT key FROM count_cache WHERE generation < $1 LIMIT 100 FOR UPDATE SKIP LOCKED)""",
            generation,
        )
    return total


INFIX_MIN_LENGTH = 3
"""Words shorter than this have no trigram to look up: a search made only of them matches word starts only."""


def _search_words_sql(words: list[str], args: list[Any]) -> str:
    """An entity matches when each word starts a word of its full-text document, or, when one word has three
    letters or more, when each word occurs anywhere in its name, title, tags or owner (`search_infix`, under a
    pg_trgm index). Two branches rather than a choice per word: the first is the word-start query as it was,
    one GIN lookup, and the second an intersection of trigram lookups."""
    args.append(prefix_tsquery(words))
    prefixes = f"search_text @@ to_tsquery('simple', ${len(args)})"
    if all(len(word) < INFIX_MIN_LENGTH for word in words):
        return prefixes
    infixes = []
    for word in words:
        args.append(_like_fragment(word))
        infixes.append(f"search_infix LIKE ${len(args)}")
    return f"({prefixes} OR ({' AND '.join(infixes)}))"


async def search_entities(
    conn: asyncpg.Connection, scope: ScopeSelector, where: Filter | None, words: list[str], *, offset: int, limit: int
) -> tuple[list[SearchHit], int]:
    """Entities in `scope` matching `words` (`_search_words_sql`), best first: `ts_rank` over the weighted
    document, plus 1 when the name is the whole search text. Matches inside words only rank 0 and come after, by
    ref: pg_trgm's `word_similarity` would order them, but computing it for every match tripled the cost of a
    search (61 ms against 19 for a name prefix at 100,000 entities)."""
    args: list[Any] = []
    condition = f"{scope_sql(scope, args)} AND {_search_words_sql(words, args)}"
    if where is not None:
        condition += f" AND {filter_sql(where, args)}"
    total = await cached_count(conn, f"SELECT count(*) FROM entities WHERE {condition}", args)
    args = [*args, prefix_tsquery(words), "-".join(words)]
    query, name = f"${len(args) - 1}", f"${len(args)}"
    rows = await conn.fetch(
        f"""SELECT e.final_entity, page.score,
                   ts_headline('simple', concat_ws(' · ', m->>'name', m->>'title', m->>'description'),
                               to_tsquery('simple', {query}), 'StartSel=**, StopSel=**, MaxWords=20, MinWords=8')
                       AS highlight
            FROM (SELECT uid, ref,
                         ts_rank(search_text, to_tsquery('simple', {query})) + (name = {name})::int AS score
                  FROM entities WHERE {condition}
                  ORDER BY score DESC, ref OFFSET {int(offset)} LIMIT {int(limit)}) page
            JOIN entities e ON e.uid = page.uid
            CROSS JOIN LATERAL (SELECT e.final_entity::jsonb -> 'metadata' AS m) metadata
            ORDER BY page.score DESC, page.ref""",
        *args,
    )
    return [SearchHit(msgspec.Raw(r["final_entity"]), r["score"], r["highlight"]) for r in rows], total


async def served_in_order(conn: asyncpg.Connection, uids: list[Any]) -> list[str]:
    """The served JSON of these entities in the order given (uids of missing entities skipped)."""
    wanted = [uuid.UUID(str(uid)) for uid in uids]
    by_uid = await served_by_uids(conn, wanted)
    return [by_uid[uid].json for uid in wanted if uid in by_uid]


async def served_by_uids(conn: asyncpg.Connection, uids: list[uuid.UUID]) -> dict[uuid.UUID, ServedEntity]:
    """These entities as served, by uid (missing ones left out)."""
    rows = await conn.fetch(
        "SELECT uid, etag, final_entity FROM entities WHERE uid = ANY($1::uuid[]) AND final_entity IS NOT NULL", uids
    )
    return {row["uid"]: ServedEntity(row["etag"], row["final_entity"]) for row in rows}


def _served(row: asyncpg.Record | None) -> ServedEntity | None:
    # final_entity is NULL only briefly, for entities stored before migration 0006 until they are stitched.
    return ServedEntity(row["etag"], row["final_entity"]) if row and row["final_entity"] is not None else None


async def served_by_ref(conn: asyncpg.Connection, scope: str, ref: str) -> ServedEntity | None:
    row = await conn.fetchrow("SELECT etag, final_entity FROM entities WHERE scope = $1 AND ref = $2", scope, ref)
    return _served(row)


async def served_by_uid(conn: asyncpg.Connection, uid: str) -> ServedEntity | None:
    try:
        uuid.UUID(uid)
    except ValueError:
        return None
    return _served(await conn.fetchrow("SELECT etag, final_entity FROM entities WHERE uid = $1", uid))


async def facets(
    conn: asyncpg.Connection, scope: ScopeSelector, where: Predicate | None, keys: list[str]
) -> dict[str, list[tuple[str, int]]]:
    """Per facet key, each value (as written) and how many matching entities have it."""
    args: list[Any] = []
    condition = _query_where(scope, where, None, args)
    args.append(keys)
    # An entity has one search row per (key, lower-cased value), so at most one per (key, value as written): its
    # rows are counted as they are, without sorting them to count distinct entities.
    rows = await conn.fetch(
        f"""SELECT key, original_value, count(*) AS count FROM search
            WHERE key = ANY(${len(args)}::text[]) AND original_value IS NOT NULL
              AND entity_uid IN (SELECT uid FROM entities WHERE {condition})
            GROUP BY key, original_value ORDER BY key, count DESC, original_value""",
        *args,
    )
    result: dict[str, list[tuple[str, int]]] = {key: [] for key in keys}
    for row in rows:
        result[row["key"]].append((row["original_value"], row["count"]))
    return result


# --- locations -----------------------------------------------------------------------------------------

_LOCATION_COLUMNS = "id::text AS id, scope, type, target, errors, refreshed_at"


async def insert_location(conn: asyncpg.Connection, location_id: str, scope: str, type_: str, target: str) -> None:
    await conn.execute(
        "INSERT INTO locations (id, scope, type, target) VALUES ($1, $2, $3, $4)", location_id, scope, type_, target
    )


async def get_location(conn: asyncpg.Connection, location_id: str) -> asyncpg.Record | None:
    try:
        uuid.UUID(location_id)
    except ValueError:
        return None
    return await conn.fetchrow(f"SELECT {_LOCATION_COLUMNS} FROM locations WHERE id = $1", location_id)


async def find_location(conn: asyncpg.Connection, scope: str, type_: str, target: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_LOCATION_COLUMNS} FROM locations WHERE scope = $1 AND type = $2 AND target = $3",
        scope,
        type_,
        target,
    )


async def list_locations(conn: asyncpg.Connection, visible: Visibility = EVERYTHING) -> list[asyncpg.Record]:
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    condition = visibility_condition(visible, "scope", arg)
    return await conn.fetch(
        f"SELECT {_LOCATION_COLUMNS} FROM locations WHERE {condition} ORDER BY created_at, id", *args
    )


async def record_location_read(conn: asyncpg.Connection, location_id: str, errors: list[dict[str, Any]]) -> None:
    await conn.execute("UPDATE locations SET errors = $2, refreshed_at = now() WHERE id = $1", location_id, errors)


async def delete_location(conn: asyncpg.Connection, location_id: str) -> None:
    await conn.execute("DELETE FROM locations WHERE id = $1", location_id)


async def entities_of_location(conn: asyncpg.Connection, location_id: str) -> list[StoredEntity]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM entities WHERE location_id = $1 FOR UPDATE", location_id)
    return [StoredEntity(**dict(r)) for r in rows]


async def refs_of_location(conn: asyncpg.Connection, location_id: str) -> list[str]:
    rows = await conn.fetch("SELECT ref FROM entities WHERE location_id = $1", location_id)
    return [r["ref"] for r in rows]


# --- favorites -----------------------------------------------------------------------------------------


async def add_favorite(conn: asyncpg.Connection, principal: str, uid: str) -> bool:
    status = await conn.execute(
        "INSERT INTO favorites (principal, entity_uid) VALUES ($1, $2) ON CONFLICT DO NOTHING", principal, uid
    )
    return status.endswith(" 1")


async def remove_favorite(conn: asyncpg.Connection, principal: str, uid: str) -> bool:
    status = await conn.execute("DELETE FROM favorites WHERE principal = $1 AND entity_uid = $2", principal, uid)
    return status.endswith(" 1")


async def favorite_entities(conn: asyncpg.Connection, principal: str) -> list[str]:
    """The served JSON of the entities `principal` starred, oldest star first."""
    rows = await conn.fetch(
        "SELECT e.final_entity FROM favorites f JOIN entities e ON e.uid = f.entity_uid "
        "WHERE f.principal = $1 AND e.final_entity IS NOT NULL ORDER BY f.created_at, e.ref",
        principal,
    )
    return [r["final_entity"] for r in rows]


async def vacuum_analyze(conn: asyncpg.Connection) -> None:
    """After a bulk load: merge the GIN indexes' pending lists and refresh planner statistics. Until then every
    filter scans the pending list (seen: 119 ms instead of 2 ms for a two-key count at 10,000 entities) and the
    planner expects a handful of search rows and picks nested loops that rescan them."""
    await conn.execute("VACUUM (ANALYZE) entities, relations, search")


# --- predicate filters (Backstage's `$all/$any/$not/$exists/$in/$hasPrefix`) ------------------------------


def predicate_sql(node: Predicate, args: list[Any]) -> str:
    """SQL for a predicate tree: `filter_sql` for what the `filter` parameter can say, plus negation, prefixes
    and the empty `$all`/`$any` (false) and empty field expression (true)."""
    if isinstance(node, Not):
        return f"NOT {predicate_sql(node.item, args)}"
    if isinstance(node, HasPrefix):
        args.extend([node.key, like_escape(node.prefix) + "%"])
        return f"uid IN (SELECT entity_uid FROM search WHERE key = ${len(args) - 1} AND value LIKE ${len(args)})"
    if isinstance(node, AnyOf | AllOf):
        if not node.items:
            return "true" if isinstance(node, AllOf) else "false"
        joiner = " OR " if isinstance(node, AnyOf) else " AND "
        return "(" + joiner.join(predicate_sql(item, args) for item in node.items) + ")"
    return filter_sql(node, args)


async def location_entities(conn: asyncpg.Connection, location_id: str) -> list[StoredEntity]:
    """The Location entities a registered location emits (without locking them)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM entities WHERE location_id = $1 AND kind = 'location' ORDER BY ref", location_id
    )
    return [StoredEntity(**dict(r)) for r in rows]


# --- custom kinds --------------------------------------------------------------------------------------

_KIND_COLUMNS = "kind_key, api_version, kind, schema, relations, etag"


_KINDS_LOCK = "catalog.kinds"


async def lock_kinds(conn: asyncpg.Connection, *, exclusive: bool) -> None:
    """Entity writes hold this shared and kind changes exclusive, until their transactions end: a schema change
    waits for writes validated against the old schema. An advisory lock, so writers never write a lock into
    the `kinds` rows."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await conn.execute(f"SELECT {function}(hashtext($1))", _KINDS_LOCK)


async def kind_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {_KIND_COLUMNS} FROM kinds ORDER BY kind_key, api_version")


async def kind_row(conn: asyncpg.Connection, kind_key: str, api_version: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_KIND_COLUMNS} FROM kinds WHERE kind_key = $1 AND api_version = $2", kind_key, api_version
    )


async def insert_kind(conn: asyncpg.Connection, kind_key: str, view: Any) -> None:
    await conn.execute(
        "INSERT INTO kinds (kind_key, api_version, kind, schema, relations, etag) VALUES ($1, $2, $3, $4, $5, $6)",
        kind_key,
        view.apiVersion,
        view.kind,
        view.schema,
        view.relations,
        view.etag,
    )


async def update_kind(conn: asyncpg.Connection, kind_key: str, view: Any) -> None:
    await conn.execute(
        "UPDATE kinds SET schema = $3, relations = $4, etag = $5, updated_at = now() "
        "WHERE kind_key = $1 AND api_version = $2",
        kind_key,
        view.apiVersion,
        view.schema,
        view.relations,
        view.etag,
    )


async def delete_kind(conn: asyncpg.Connection, kind_key: str, api_version: str) -> None:
    await conn.execute("DELETE FROM kinds WHERE kind_key = $1 AND api_version = $2", kind_key, api_version)


async def entities_of_kind(
    conn: asyncpg.Connection, kind_key: str, api_version: str, *, limit: int | None = None
) -> list[StoredEntity]:
    """Entities of a kind and apiVersion at every scope."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM entities WHERE kind = $1 AND document->>'apiVersion' = $2 ORDER BY scope, ref"
        + (f" LIMIT {int(limit)}" if limit is not None else ""),
        kind_key,
        api_version,
    )
    return [StoredEntity(**dict(r)) for r in rows]


RESTRICTED_SQL = (
    "search_tokens && ARRAY["
    + ", ".join(
        f"E'{filter_token('metadata.tags', tag)}'".replace(TOKEN_SEPARATOR, "\\x1f") for tag in sorted(RESTRICTED_TAGS)
    )
    + "]"
)
"""Whether an entity is restricted: the predicate of the `entities_restricted` index, which the planner uses only
for this very expression."""


def scope_sql(selector: ScopeSelector, args: list[Any]) -> str:
    """The entities a read covers: at its scope, and the scopes above and/or below it when asked, among those the
    caller may see."""
    args.append(selector.exact_scopes())
    condition = f"scope = ANY(${len(args)}::text[])"
    prefix = selector.child_prefix()
    if prefix is not None:
        args.append(prefix)
        condition = f"({condition} OR starts_with(scope, ${len(args)}))"
    visible = selector.visible
    if visible.everything and visible.sees_restricted:
        return condition

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if not visible.everything:
        condition += " AND " + visibility_condition(visible, "scope", arg, id_column="ref")
    if not visible.sees_restricted:
        # Restricted entities only for their owners: an `ownedBy` target is an entity mirrored from one of the
        # caller's identities (visibility.py). The restricted entities come from their own index (migration 0014),
        # the caller's among them from the filter tokens' GIN index, once per query, and `NOT IN` probes the
        # difference's hash per row: testing every row's tokens instead cost ~15 µs a row.
        identities = arg([filter_token(IDENTITY_ID_KEY, each) for each in identity_ids(visible)])
        condition += (
            f" AND uid NOT IN (SELECT uid FROM entities WHERE {RESTRICTED_SQL}"
            f" EXCEPT SELECT uid FROM entities WHERE {RESTRICTED_SQL} AND search_tokens && ARRAY("
            f"SELECT 'relations.ownedby' || chr(31) || owner.ref FROM entities owner"
            f" WHERE owner.search_tokens && {identities}::text[]))"
        )
    return condition


async def identities_of_refs(conn: asyncpg.Connection, refs: list[str]) -> dict[str, str]:
    """Per ref of an entity mirrored from identity-sync, the principal it mirrors as a subject (`group:<id>`)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ref, document #>> $2::text[] AS identity FROM entities WHERE ref = ANY($1::text[])",
        refs,
        ["metadata", "annotations", IDENTITY_ID_ANNOTATION],
    )
    return {row["ref"]: f"{row['ref'].partition(':')[0]}:{row['identity']}" for row in rows if row["identity"]}


async def refs_of_identities(conn: asyncpg.Connection, identity_ids: list[str]) -> frozenset[str]:
    """The refs of the entities mirrored from these identity-sync principals."""
    rows = await conn.fetch(
        "SELECT ref FROM entities WHERE search_tokens && $1::text[]",
        [filter_token(IDENTITY_ID_KEY, each) for each in identity_ids],
    )
    return frozenset(row["ref"] for row in rows)


async def served_nearest(conn: asyncpg.Connection, scopes: list[str], refs: list[str]) -> dict[str, ServedEntity]:
    """Per ref, the entity as served at the deepest of `scopes` that has it (`scopes` are a scope and its
    ancestors)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (ref) ref, etag, final_entity FROM entities "
        "WHERE scope = ANY($1::text[]) AND ref = ANY($2::text[]) AND final_entity IS NOT NULL "
        "ORDER BY ref, length(scope) DESC",
        scopes,
        refs,
    )
    return {row["ref"]: ServedEntity(row["etag"], row["final_entity"]) for row in rows}


async def entities_after(conn: asyncpg.Connection, after_uid: str | None, limit: int) -> list[str]:
    """The served JSON of a page of entities of every scope in uid order, after `after_uid` (keyset paging for
    full scans)."""
    rows = await conn.fetch(
        "SELECT final_entity FROM entities WHERE ($1::uuid IS NULL OR uid > $1::uuid) AND final_entity IS NOT NULL "
        "ORDER BY uid LIMIT $2",
        after_uid,
        limit,
    )
    return [r["final_entity"] for r in rows]
