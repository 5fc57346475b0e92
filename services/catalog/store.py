"""Every SQL statement of the catalog. Functions take a connection; callers own transactions."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg

from services.catalog.model import StoredEntity
from services.catalog.predicates import HasPrefix, Not, Predicate
from services.catalog.query import AllOf, AnyOf, Filter, KeyValues, SearchRow
from services.catalog.relations import Relation
from services.catalog.scopes import ScopeSelector

_COLUMNS = (
    "uid::text AS uid, scope, ref, document, etag, generation, location_id::text AS location_id, location_key, "
    "orphan, properties"
)
_E_COLUMNS = (
    "e.uid::text AS uid, e.scope, e.ref, e.document, e.etag, e.generation, e.location_id::text AS location_id, "
    "e.location_key, e.orphan, e.properties"
)


def _entity(row: asyncpg.Record | None) -> StoredEntity | None:
    return StoredEntity(**dict(row)) if row else None


async def get_by_ref(conn: asyncpg.Connection, scope: str, ref: str, *, lock: bool = False) -> StoredEntity | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM entities WHERE scope = $1 AND ref = $2{suffix}", scope, ref)
    return _entity(row)


async def get_by_uid(conn: asyncpg.Connection, uid: str, *, lock: bool = False) -> StoredEntity | None:
    try:
        uuid.UUID(uid)
    except ValueError:
        return None
    suffix = " FOR UPDATE" if lock else ""
    return _entity(await conn.fetchrow(f"SELECT {_COLUMNS} FROM entities WHERE uid = $1{suffix}", uid))


async def get_many(conn: asyncpg.Connection, scope: str, refs: list[str]) -> dict[str, StoredEntity]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM entities WHERE scope = $1 AND ref = ANY($2::text[])", scope, refs)
    return {row["ref"]: StoredEntity(**dict(row)) for row in rows}


async def insert_entity(conn: asyncpg.Connection, entity: StoredEntity) -> None:
    kind, _, rest = entity.ref.partition(":")
    namespace, _, name = rest.partition("/")
    await conn.execute(
        """INSERT INTO entities (uid, scope, ref, kind, namespace, name, document, etag, generation, location_id,
                                 location_key, orphan)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
        entity.uid,
        entity.scope,
        entity.ref,
        kind,
        namespace,
        name,
        entity.document,
        entity.etag,
        entity.generation,
        entity.location_id,
        entity.location_key,
        entity.orphan,
    )


async def update_entity(conn: asyncpg.Connection, entity: StoredEntity) -> None:
    await conn.execute(
        """UPDATE entities SET document = $2, etag = $3, generation = $4, location_id = $5, location_key = $6,
                              orphan = $7, properties = $8, updated_at = now() WHERE uid = $1""",
        entity.uid,
        entity.document,
        entity.etag,
        entity.generation,
        entity.location_id,
        entity.location_key,
        entity.orphan,
        entity.properties,
    )


async def delete_entity(conn: asyncpg.Connection, uid: str) -> None:
    await conn.execute("DELETE FROM entities WHERE uid = $1", uid)


async def replace_relations(conn: asyncpg.Connection, originator: str, scope: str, relations: list[Relation]) -> None:
    await conn.execute("DELETE FROM relations WHERE originator = $1", originator)
    await conn.executemany(
        "INSERT INTO relations VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(originator, scope, r.source, r.type, r.target) for r in relations],
    )


async def relations_from(conn: asyncpg.Connection, scope: str, refs: Iterable[str]) -> list[Relation]:
    """Every relation whose source is one of `refs`, whoever emitted it."""
    rows = await conn.fetch(
        "SELECT DISTINCT source_ref, type, target_ref FROM relations WHERE scope = $1 AND source_ref = ANY($2::text[])",
        scope,
        list(refs),
    )
    return [Relation(r["source_ref"], r["type"], r["target_ref"]) for r in rows]


async def emitted_targets(conn: asyncpg.Connection, originator: str) -> set[str]:
    rows = await conn.fetch("SELECT DISTINCT source_ref, target_ref FROM relations WHERE originator = $1", originator)
    return {r["source_ref"] for r in rows} | {r["target_ref"] for r in rows}


TOKEN_SEPARATOR = "\x1f"


def search_tokens(rows: list[SearchRow]) -> list[str]:
    """`key<US>value` for every indexed value and `key<US>` for every key: what filters match against."""
    tokens = {row.key + TOKEN_SEPARATOR for row in rows}
    tokens.update(row.key + TOKEN_SEPARATOR + row.value for row in rows if row.value is not None)
    return sorted(tokens)


async def replace_search_rows(conn: asyncpg.Connection, rows_by_uid: dict[str, list[SearchRow]]) -> None:
    await conn.execute("DELETE FROM search WHERE entity_uid = ANY($1::uuid[])", list(rows_by_uid))
    await conn.executemany(
        "INSERT INTO search (entity_uid, key, value, original_value) VALUES ($1, $2, $3, $4)",
        [(uid, r.key, r.value, r.original_value) for uid, rows in rows_by_uid.items() for r in rows],
    )
    await conn.executemany(
        "UPDATE entities SET search_tokens = $2 WHERE uid = $1",
        [(uid, search_tokens(rows)) for uid, rows in rows_by_uid.items()],
    )


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
) -> list[StoredEntity]:
    args: list[Any] = []
    condition = scope_sql(scope, args) + (f" AND {filter_sql(where, args)}" if where is not None else "")
    paging = f" OFFSET {int(offset)}" + (f" LIMIT {int(limit)}" if limit is not None else "")
    uids = await conn.fetch(f"SELECT uid FROM entities WHERE {condition} ORDER BY ref, scope{paging}", *args)
    return await get_in_order(conn, [r["uid"] for r in uids])


def _like_fragment(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _query_where(
    scope: ScopeSelector, where: Predicate | None, full_text: tuple[str, tuple[str, ...]] | None, args: list[Any]
) -> str:
    condition = scope_sql(scope, args)
    if where is not None:
        condition += f" AND {predicate_sql(where, args)}"
    if full_text is not None:
        term, keys = full_text
        args.append(_like_fragment(term.lower()))
        clause = f"uid IN (SELECT entity_uid FROM search WHERE value LIKE ${len(args)}"
        if keys:
            args.append(list(keys))
            clause += f" AND key = ANY(${len(args)}::text[])"
        condition += f" AND {clause})"
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
) -> tuple[list[StoredEntity], int]:
    """One page of matching entities ordered by search-table fields (then ref), and the total count."""
    args: list[Any] = []
    condition = _query_where(scope, where, full_text, args)
    total = await conn.fetchval(f"SELECT count(*) FROM entities WHERE {condition}", *args)
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
    # included) before the limit made a filtered page cost grow with the number of matches.
    uids = await conn.fetch(
        f"SELECT e.uid FROM (SELECT uid, ref, scope FROM entities WHERE {condition}) e {' '.join(joins)} "
        f"ORDER BY {', '.join(sort)} OFFSET {int(offset)} LIMIT {int(limit)}",
        *args,
    )
    return await get_in_order(conn, [r["uid"] for r in uids]), total


async def get_in_order(conn: asyncpg.Connection, uids: list[Any]) -> list[StoredEntity]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM entities WHERE uid = ANY($1::uuid[])", uids)
    by_uid = {row["uid"]: StoredEntity(**dict(row)) for row in rows}
    return [by_uid[str(uid)] for uid in uids if str(uid) in by_uid]


async def facets(
    conn: asyncpg.Connection, scope: ScopeSelector, where: Predicate | None, keys: list[str]
) -> dict[str, list[tuple[str, int]]]:
    """Per facet key, each value (as written) and how many matching entities have it."""
    args: list[Any] = []
    condition = _query_where(scope, where, None, args)
    args.append(keys)
    rows = await conn.fetch(
        f"""SELECT key, original_value, count(DISTINCT entity_uid) AS count FROM search
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


async def list_locations(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {_LOCATION_COLUMNS} FROM locations ORDER BY created_at, id")


async def record_location_read(conn: asyncpg.Connection, location_id: str, errors: list[dict[str, Any]]) -> None:
    await conn.execute("UPDATE locations SET errors = $2, refreshed_at = now() WHERE id = $1", location_id, errors)


async def delete_location(conn: asyncpg.Connection, location_id: str) -> None:
    await conn.execute("DELETE FROM locations WHERE id = $1", location_id)


async def entities_of_location(conn: asyncpg.Connection, location_id: str) -> list[StoredEntity]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM entities WHERE location_id = $1 FOR UPDATE", location_id)
    return [StoredEntity(**dict(r)) for r in rows]


# --- favorites -----------------------------------------------------------------------------------------


async def add_favorite(conn: asyncpg.Connection, principal: str, uid: str) -> bool:
    status = await conn.execute(
        "INSERT INTO favorites (principal, entity_uid) VALUES ($1, $2) ON CONFLICT DO NOTHING", principal, uid
    )
    return status.endswith(" 1")


async def remove_favorite(conn: asyncpg.Connection, principal: str, uid: str) -> bool:
    status = await conn.execute("DELETE FROM favorites WHERE principal = $1 AND entity_uid = $2", principal, uid)
    return status.endswith(" 1")


async def favorite_entities(conn: asyncpg.Connection, principal: str) -> list[StoredEntity]:
    rows = await conn.fetch(
        f"SELECT {_E_COLUMNS} FROM favorites f JOIN entities e ON e.uid = f.entity_uid "
        "WHERE f.principal = $1 ORDER BY f.created_at, e.ref",
        principal,
    )
    return [StoredEntity(**dict(r)) for r in rows]


async def analyze(conn: asyncpg.Connection) -> None:
    """Refresh planner statistics; after a bulk load the planner otherwise expects a handful of search rows
    and picks nested loops that rescan them (seen: 200 ms instead of 2 ms for a two-key filter)."""
    await conn.execute("ANALYZE entities, relations, search")


# --- predicate filters (Backstage's `$all/$any/$not/$exists/$in/$hasPrefix`) ------------------------------


def predicate_sql(node: Predicate, args: list[Any]) -> str:
    """SQL for a predicate tree: `filter_sql` for what the `filter` parameter can say, plus negation, prefixes
    and the empty `$all`/`$any` (false) and empty field expression (true)."""
    if isinstance(node, Not):
        return f"NOT {predicate_sql(node.item, args)}"
    if isinstance(node, HasPrefix):
        args.extend([node.key, node.prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"])
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


def scope_sql(selector: ScopeSelector, args: list[Any]) -> str:
    """The entities a read covers: at its scope, and the scopes above and/or below it when asked."""
    args.append(selector.exact_scopes())
    condition = f"scope = ANY(${len(args)}::text[])"
    prefix = selector.child_prefix()
    if prefix is not None:
        args.append(prefix)
        condition = f"({condition} OR starts_with(scope, ${len(args)}))"
    return condition


async def get_nearest(conn: asyncpg.Connection, scopes: list[str], refs: list[str]) -> dict[str, StoredEntity]:
    """Per ref, the entity at the deepest of `scopes` that has it (`scopes` are a scope and its ancestors)."""
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (ref) {_COLUMNS} FROM entities WHERE scope = ANY($1::text[]) AND ref = ANY($2::text[]) "
        "ORDER BY ref, length(scope) DESC",
        scopes,
        refs,
    )
    return {row["ref"]: StoredEntity(**dict(row)) for row in rows}


async def entities_after(conn: asyncpg.Connection, after_uid: str | None, limit: int) -> list[StoredEntity]:
    """A page of entities of every scope in uid order, after `after_uid` (keyset paging for full scans)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM entities WHERE $1::uuid IS NULL OR uid > $1::uuid ORDER BY uid LIMIT $2",
        after_uid,
        limit,
    )
    return [StoredEntity(**dict(r)) for r in rows]
