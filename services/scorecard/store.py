"""Every SQL statement of the scorecard service. Functions take a connection; callers own transactions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from services.scorecard.model import ConsumerProgress, ScorecardSpec, ScorecardView
from shared.events import Event

EntityKey = tuple[str, str]
"""(scope, ref)."""
_encode = msgspec.json.encode


def _json_texts(values: Iterable[Any]) -> list[str | None]:
    """JSON values as text for a `text[]` parameter cast to jsonb in SQL: asyncpg would read a list value
    as another array dimension of a `jsonb[]` one. None stays SQL NULL."""
    return [None if v is None else _encode(v).decode() for v in values]


async def mark_processed(conn: asyncpg.Connection, consumer: str, events: list[Event]) -> list[Event]:
    """Record event ids as processed; returns the events not seen before (idempotency)."""
    rows = await conn.fetch(
        """INSERT INTO processed_events (consumer, event_id) SELECT $1, unnest($2::uuid[])
           ON CONFLICT DO NOTHING RETURNING event_id::text""",
        consumer,
        [e.id for e in events],
    )
    fresh = {r["event_id"] for r in rows}
    return [e for e in events if e.id in fresh]


async def record_progress(conn: asyncpg.Connection, consumer: str, last: Event, count: int) -> None:
    await conn.execute(
        """INSERT INTO consumer_progress (consumer, last_event_id, last_event_type, last_event_time, events_seen)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (consumer) DO UPDATE SET last_event_id = $2, last_event_type = $3, last_event_time = $4,
               events_seen = consumer_progress.events_seen + $5, updated_at = now()""",
        consumer,
        last.id,
        last.type,
        last.time,
        count,
    )


async def get_progress(conn: asyncpg.Connection, consumer: str) -> ConsumerProgress | None:
    row = await conn.fetchrow(
        """SELECT consumer, last_event_id::text, last_event_type, last_event_time, events_seen, updated_at
           FROM consumer_progress WHERE consumer = $1""",
        consumer,
    )
    return ConsumerProgress(**dict(row)) if row else None


# --- scorecards --------------------------------------------------------------------------------------------


def _scorecard(row: asyncpg.Record) -> ScorecardView:
    return ScorecardView(
        spec=msgspec.convert(row["spec"], ScorecardSpec),
        etag=row["etag"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def get_scorecard(conn: asyncpg.Connection, scorecard_id: str, *, lock: bool = False) -> ScorecardView | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT * FROM scorecards WHERE id = $1{suffix}", scorecard_id)
    return _scorecard(row) if row else None


async def list_scorecards(conn: asyncpg.Connection) -> list[ScorecardView]:
    return [_scorecard(r) for r in await conn.fetch("SELECT * FROM scorecards ORDER BY id")]


async def insert_scorecard(conn: asyncpg.Connection, spec: ScorecardSpec, etag: str) -> ScorecardView:
    row = await conn.fetchrow(
        "INSERT INTO scorecards (id, spec, etag) VALUES ($1, $2, $3) RETURNING *",
        spec.id,
        msgspec.to_builtins(spec),
        etag,
    )
    return _scorecard(row)


async def update_scorecard(conn: asyncpg.Connection, spec: ScorecardSpec, etag: str) -> ScorecardView:
    row = await conn.fetchrow(
        "UPDATE scorecards SET spec = $2, etag = $3, updated_at = now() WHERE id = $1 RETURNING *",
        spec.id,
        msgspec.to_builtins(spec),
        etag,
    )
    return _scorecard(row)


async def delete_scorecard(conn: asyncpg.Connection, scorecard_id: str) -> None:
    await conn.execute("DELETE FROM scorecards WHERE id = $1", scorecard_id)
    await conn.execute("DELETE FROM results WHERE scorecard_id = $1", scorecard_id)
    await conn.execute("DELETE FROM scores WHERE scorecard_id = $1", scorecard_id)
    await conn.execute("DELETE FROM evaluation_jobs WHERE scorecard_id = $1", scorecard_id)


async def delete_results_of_removed_checks(conn: asyncpg.Connection, scorecard_id: str, kept: list[str]) -> None:
    await conn.execute(
        "DELETE FROM results WHERE scorecard_id = $1 AND NOT (check_id = ANY($2::text[]))", scorecard_id, kept
    )


# --- the entity projection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectedEntity:
    uid: str
    scope: str
    ref: str
    document: dict[str, Any]

    @property
    def key(self) -> EntityKey:
        return (self.scope, self.ref)


_ENTITY_COLUMNS = "uid::text AS uid, scope, ref, document"


def _projected(rows: Iterable[asyncpg.Record]) -> list[ProjectedEntity]:
    return [ProjectedEntity(r["uid"], r["scope"], r["ref"], r["document"]) for r in rows]


async def upsert_entities(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Rows of (uid, scope, ref, document, targets, owner, system, domain)."""
    if not rows:
        return
    columns = list(zip(*rows, strict=True))
    await conn.execute(
        """INSERT INTO entities (uid, scope, ref, document, targets, owner, system, domain)
           SELECT u, s, r, d::jsonb, string_to_array(t, chr(31)), o, sy, dm
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[]) AS x(u, s, r, d, t, o, sy, dm)
           ON CONFLICT (uid) DO UPDATE SET scope = excluded.scope, ref = excluded.ref, document = excluded.document,
               targets = excluded.targets, owner = excluded.owner, system = excluded.system,
               domain = excluded.domain, updated_at = now()""",
        *[list(c) for c in columns[:3]],
        _json_texts(columns[3]),
        [chr(31).join(t) for t in columns[4]],
        *[list(c) for c in columns[5:]],
    )


async def delete_entities(conn: asyncpg.Connection, uids: list[str]) -> list[ProjectedEntity]:
    rows = await conn.fetch(f"DELETE FROM entities WHERE uid = ANY($1::uuid[]) RETURNING {_ENTITY_COLUMNS}", uids)
    await conn.execute("DELETE FROM results WHERE entity_uid = ANY($1::uuid[])", uids)
    await conn.execute("DELETE FROM scores WHERE entity_uid = ANY($1::uuid[])", uids)
    return _projected(rows)


async def get_entities(conn: asyncpg.Connection, uids: list[str]) -> list[ProjectedEntity]:
    return _projected(await conn.fetch(f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE uid = ANY($1::uuid[])", uids))


async def entities_by_keys(conn: asyncpg.Connection, keys: Iterable[EntityKey]) -> list[ProjectedEntity]:
    scopes, refs = _split(keys)
    return _projected(
        await conn.fetch(
            f"""SELECT {_ENTITY_COLUMNS} FROM entities
                WHERE (scope, ref) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
            scopes,
            refs,
        )
    )


async def dependents(conn: asyncpg.Connection, keys: Iterable[EntityKey]) -> list[ProjectedEntity]:
    """Entities with a relation to one of `keys` (same scope)."""
    by_scope: dict[str, list[str]] = {}
    for scope, ref in keys:
        by_scope.setdefault(scope, []).append(ref)
    found: list[ProjectedEntity] = []
    for scope, refs in by_scope.items():
        found += _projected(
            await conn.fetch(
                f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE scope = $1 AND targets && $2::text[]", scope, refs
            )
        )
    return found


async def all_entity_uids(conn: asyncpg.Connection) -> list[str]:
    return [r["uid"] for r in await conn.fetch("SELECT uid::text AS uid FROM entities ORDER BY uid")]


async def mark_stale(conn: asyncpg.Connection, uids: list[str]) -> None:
    await conn.execute("INSERT INTO stale_entities (uid) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING", uids)


async def stale_uids(conn: asyncpg.Connection, limit: int) -> list[str]:
    rows = await conn.fetch("SELECT uid::text AS uid FROM stale_entities ORDER BY since LIMIT $1", limit)
    return [r["uid"] for r in rows]


async def clear_stale(conn: asyncpg.Connection, uids: list[str]) -> None:
    await conn.execute("DELETE FROM stale_entities WHERE uid = ANY($1::uuid[])", uids)


async def entity_uids(conn: asyncpg.Connection) -> set[str]:
    return {r["uid"] for r in await conn.fetch("SELECT uid::text AS uid FROM entities")}


async def find_entity(conn: asyncpg.Connection, scope: str, ref: str) -> ProjectedEntity | None:
    rows = await conn.fetch(f"SELECT {_ENTITY_COLUMNS} FROM entities WHERE scope = $1 AND ref = $2", scope, ref)
    return _projected(rows)[0] if rows else None


def _split(keys: Iterable[EntityKey]) -> tuple[list[str], list[str]]:
    pairs = list(keys)
    return [s for s, _ in pairs], [r for _, r in pairs]


# --- custom data and entity events -----------------------------------------------------------------------


async def upsert_custom_data(conn: asyncpg.Connection, items: list[tuple[str, str, str, Any]]) -> list[EntityKey]:
    """Store (scope, ref, key, value) rows; returns the entities whose values changed."""
    scopes, refs, keys, values = (list(c) for c in zip(*items, strict=True))
    rows = await conn.fetch(
        """INSERT INTO custom_data (scope, ref, key, value)
           SELECT s, r, k, v::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(s, r, k, v)
           ON CONFLICT (scope, ref, key) DO UPDATE SET value = excluded.value, updated_at = now()
               WHERE custom_data.value IS DISTINCT FROM excluded.value
           RETURNING scope, ref""",
        scopes,
        refs,
        keys,
        _json_texts(values),
    )
    return sorted({(r["scope"], r["ref"]) for r in rows})


async def custom_data_for(conn: asyncpg.Connection, keys: Iterable[EntityKey]) -> dict[EntityKey, dict[str, Any]]:
    scopes, refs = _split(keys)
    rows = await conn.fetch(
        """SELECT scope, ref, key, value FROM custom_data
           WHERE (scope, ref) IN (SELECT * FROM unnest($1::text[], $2::text[]))""",
        scopes,
        refs,
    )
    found: dict[EntityKey, dict[str, Any]] = {}
    for r in rows:
        found.setdefault((r["scope"], r["ref"]), {})[r["key"]] = r["value"]
    return found


async def insert_entity_events(conn: asyncpg.Connection, rows: list[tuple[str, str, str, str, list[str], Any]]) -> None:
    """Rows of (event_id, scope, ref, type, changed fields, time)."""
    await conn.executemany(
        """INSERT INTO entity_events (event_id, scope, ref, type, fields, time) VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT DO NOTHING""",
        rows,
    )


async def entity_events_for(
    conn: asyncpg.Connection, keys: Iterable[EntityKey], types: list[str], since: dt.datetime
) -> dict[EntityKey, list[tuple[str, list[str], dt.datetime]]]:
    scopes, refs = _split(keys)
    rows = await conn.fetch(
        """SELECT scope, ref, type, fields, time FROM entity_events
           WHERE (scope, ref) IN (SELECT * FROM unnest($1::text[], $2::text[]))
             AND type = ANY($3::text[]) AND time >= $4""",
        scopes,
        refs,
        types,
        since,
    )
    found: dict[EntityKey, list[tuple[str, list[str], dt.datetime]]] = {}
    for r in rows:
        found.setdefault((r["scope"], r["ref"]), []).append((r["type"], r["fields"], r["time"]))
    return found


async def prune_entity_events(conn: asyncpg.Connection, before: dt.datetime) -> None:
    await conn.execute("DELETE FROM entity_events WHERE time < $1", before)


# --- results and scores ------------------------------------------------------------------------------------

StoredResult = tuple[str, Any, str, str | None]
"""(status, found, expected, reason)."""


async def results_for(
    conn: asyncpg.Connection, scorecard_ids: list[str], uids: list[str]
) -> dict[tuple[str, str], dict[str, StoredResult]]:
    """Every stored result of these scorecards for these entities, by (scorecard, uid) then check."""
    rows = await conn.fetch(
        """SELECT scorecard_id, entity_uid::text AS uid, check_id, status, found, expected, reason FROM results
           WHERE scorecard_id = ANY($1::text[]) AND entity_uid = ANY($2::uuid[])""",
        scorecard_ids,
        uids,
    )
    found: dict[tuple[str, str], dict[str, StoredResult]] = {}
    for r in rows:
        found.setdefault((r["scorecard_id"], r["uid"]), {})[r["check_id"]] = (
            r["status"],
            r["found"],
            r["expected"],
            r["reason"],
        )
    return found


async def upsert_results(conn: asyncpg.Connection, rows: list[tuple[str, str, str, str, Any, str, str | None]]) -> None:
    """Rows of (scorecard, uid, check, status, found, expected, reason).

    Copied into a temporary table, then merged: COPY moves a full evaluation's millions of rows several times
    faster than array parameters, and the merge keeps concurrent evaluators (consumer, jobs) safe."""
    if not rows:
        return
    await conn.execute(
        """CREATE TEMP TABLE IF NOT EXISTS result_rows (scorecard_id text, entity_uid uuid, check_id text,
               status text, found text, expected text, reason text) ON COMMIT DELETE ROWS"""
    )
    await conn.copy_records_to_table(
        "result_rows",
        records=[(c, u, k, st, None if f is None else _encode(f).decode(), e, r) for c, u, k, st, f, e, r in rows],
    )
    await conn.execute(
        """INSERT INTO results (scorecard_id, entity_uid, check_id, status, found, expected, reason)
           SELECT scorecard_id, entity_uid, check_id, status, found::jsonb, expected, reason FROM result_rows
           ON CONFLICT (scorecard_id, entity_uid, check_id) DO UPDATE SET status = excluded.status,
               found = excluded.found, expected = excluded.expected, reason = excluded.reason, changed_at = now()"""
    )
    await conn.execute("DELETE FROM result_rows")


async def insert_result_history(
    conn: asyncpg.Connection, rows: list[tuple[str, str, str, str | None, str | None, Any]]
) -> None:
    """Rows of (scorecard, uid, check, previous status, status, found)."""
    if not rows:
        return
    await conn.execute(
        """INSERT INTO result_history (scorecard_id, entity_uid, check_id, previous, status, found)
           SELECT c, u, k, p, s, f::jsonb
           FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[])
               AS x(c, u, k, p, s, f)""",
        *[list(c) for c in zip(*rows, strict=True)][:5],
        _json_texts([r[5] for r in rows]),
    )


async def delete_results(conn: asyncpg.Connection, pairs: list[tuple[str, str]]) -> None:
    """Results and scores of (scorecard, uid) pairs whose entity left the scorecard."""
    cards, uids = _split(pairs)
    for table in ("results", "scores"):
        await conn.execute(
            f"""DELETE FROM {table} WHERE (scorecard_id, entity_uid) IN
                (SELECT * FROM unnest($1::text[], $2::uuid[]))""",
            cards,
            uids,
        )


async def scores_for(
    conn: asyncpg.Connection, scorecard_ids: list[str], uids: list[str]
) -> dict[tuple[str, str], tuple[float, str | None]]:
    rows = await conn.fetch(
        """SELECT scorecard_id, entity_uid::text AS uid, score, level FROM scores
           WHERE scorecard_id = ANY($1::text[]) AND entity_uid = ANY($2::uuid[])""",
        scorecard_ids,
        uids,
    )
    return {(r["scorecard_id"], r["uid"]): (r["score"], r["level"]) for r in rows}


async def upsert_scores(conn: asyncpg.Connection, rows: list[tuple[str, str, float, str | None, int, int]]) -> None:
    """Rows of (scorecard, uid, score, level, passed, total); each also goes to the history."""
    if not rows:
        return
    columns = [list(c) for c in zip(*rows, strict=True)]
    await conn.execute(
        """INSERT INTO scores (scorecard_id, entity_uid, score, level, passed, total)
           SELECT * FROM unnest($1::text[], $2::uuid[], $3::float8[], $4::text[], $5::int[], $6::int[])
           ON CONFLICT (scorecard_id, entity_uid) DO UPDATE SET score = excluded.score, level = excluded.level,
               passed = excluded.passed, total = excluded.total, updated_at = now()""",
        *columns,
    )
    await conn.execute(
        """INSERT INTO score_history (scorecard_id, entity_uid, score, passed, total)
           SELECT * FROM unnest($1::text[], $2::uuid[], $3::float8[], $4::int[], $5::int[])""",
        columns[0],
        columns[1],
        columns[2],
        columns[4],
        columns[5],
    )


async def record_departures(conn: asyncpg.Connection, pairs: list[tuple[str, str]]) -> None:
    cards, uids = _split(pairs)
    await conn.execute(
        """INSERT INTO score_history (scorecard_id, entity_uid, score, passed, total)
           SELECT c, u, NULL, 0, 0 FROM unnest($1::text[], $2::uuid[]) AS x(c, u)""",
        cards,
        uids,
    )


# --- evaluation jobs ---------------------------------------------------------------------------------------


async def enqueue_job(conn: asyncpg.Connection, scorecard_id: str, check_ids: list[str] | None, reason: str) -> None:
    await conn.execute(
        "INSERT INTO evaluation_jobs (scorecard_id, check_ids, reason) VALUES ($1, $2, $3)",
        scorecard_id,
        check_ids,
        reason,
    )


async def claim_jobs(conn: asyncpg.Connection, stale_after: float, limit: int = 100) -> list[asyncpg.Record]:
    """The oldest jobs nobody works on (or whose worker vanished `stale_after` seconds ago), now claimed."""
    return await conn.fetch(
        """UPDATE evaluation_jobs SET claimed_at = now() WHERE id IN (
               SELECT id FROM evaluation_jobs
               WHERE claimed_at IS NULL OR claimed_at < now() - make_interval(secs => $1)
               ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $2)
           RETURNING id, scorecard_id, check_ids, reason""",
        stale_after,
        limit,
    )


async def finish_jobs(conn: asyncpg.Connection, job_ids: list[int]) -> None:
    await conn.execute("DELETE FROM evaluation_jobs WHERE id = ANY($1::bigint[])", job_ids)


# --- reads ------------------------------------------------------------------------------------------------


async def entity_results(conn: asyncpg.Connection, uid: str) -> list[asyncpg.Record]:
    """Every result of an entity with its scorecard's score and level, ordered by scorecard."""
    return await conn.fetch(
        """SELECT r.scorecard_id, r.check_id, r.status, r.found, r.expected, r.reason, r.changed_at,
                  s.score, s.level
           FROM results r LEFT JOIN scores s ON s.scorecard_id = r.scorecard_id AND s.entity_uid = r.entity_uid
           WHERE r.entity_uid = $1 ORDER BY r.scorecard_id, r.check_id""",
        uid,
    )


async def level_distribution(conn: asyncpg.Connection, scorecard_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT level, count(*) AS entities, avg(score) AS average FROM scores WHERE scorecard_id = $1
           GROUP BY level""",
        scorecard_id,
    )


async def check_counts(conn: asyncpg.Connection, scorecard_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT check_id, count(*) FILTER (WHERE status = 'pass') AS passed,
                  count(*) FILTER (WHERE status = 'fail') AS failed,
                  count(*) FILTER (WHERE status = 'unknown') AS unknown
           FROM results WHERE scorecard_id = $1 GROUP BY check_id""",
        scorecard_id,
    )


GROUPINGS = {
    "owner": "e.owner",
    "system": "e.system",
    "domain": "COALESCE(e.domain, sys.domain)",
    "scope": "e.scope",
}


async def rollup(conn: asyncpg.Connection, scorecard_id: str, group_by: str) -> list[asyncpg.Record]:
    """Entities, average score and check pass rate per owner group, system, domain or scope."""
    return await conn.fetch(
        f"""SELECT {GROUPINGS[group_by]} AS key, count(*) AS entities, avg(s.score) AS average,
                   sum(s.passed)::float8 / NULLIF(sum(s.total), 0) AS pass_rate
            FROM scores s JOIN entities e ON e.uid = s.entity_uid
            LEFT JOIN entities sys ON sys.scope = e.scope AND sys.ref = e.system
            WHERE s.scorecard_id = $1 GROUP BY 1 ORDER BY 1 NULLS LAST""",
        scorecard_id,
    )


async def stream_scores(conn: asyncpg.Connection, scorecard_id: str) -> Any:
    """Each entity's score, level and check statuses, for CSV export (a cursor: memory stays flat)."""
    return conn.cursor(
        """SELECT e.ref, e.scope, e.owner, s.score, s.level,
                  (SELECT jsonb_object_agg(r.check_id, r.status) FROM results r
                   WHERE r.scorecard_id = s.scorecard_id AND r.entity_uid = s.entity_uid) AS statuses
           FROM scores s JOIN entities e ON e.uid = s.entity_uid
           WHERE s.scorecard_id = $1 ORDER BY e.scope, e.ref""",
        scorecard_id,
        prefetch=1000,
    )


async def daily_series(
    conn: asyncpg.Connection,
    scorecard_id: str,
    since: dt.date,
    until: dt.date,
    *,
    owner: str | None = None,
    uid: str | None = None,
) -> list[asyncpg.Record]:
    """Per day: the average of each entity's last score by the end of that day, and the check pass rate."""
    return await conn.fetch(
        """WITH h AS (
               SELECT entity_uid, score, passed, total, time FROM score_history
               WHERE scorecard_id = $1 AND time < $3::date + 1
                 AND ($4::text IS NULL OR entity_uid IN (SELECT uid FROM entities WHERE owner = $4))
                 AND ($5::uuid IS NULL OR entity_uid = $5::uuid))
           SELECT d.day::date AS day, count(x.score) AS entities, avg(x.score) AS average,
                  sum(x.passed)::float8 / NULLIF(sum(x.total), 0) AS pass_rate
           FROM generate_series($2::date, $3::date, interval '1 day') AS d(day)
           LEFT JOIN LATERAL (
               SELECT * FROM (SELECT DISTINCT ON (entity_uid) score, passed, total FROM h
                              WHERE h.time < d.day + interval '1 day' ORDER BY entity_uid, time DESC) latest
               WHERE latest.score IS NOT NULL) x ON true
           GROUP BY d.day ORDER BY d.day""",
        scorecard_id,
        since,
        until,
        owner,
        uid,
    )


# --- alerts ---------------------------------------------------------------------------------------------------


async def get_alert_rule(conn: asyncpg.Connection, rule_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    suffix = " FOR UPDATE" if lock else ""
    return await conn.fetchrow(f"SELECT id, spec, etag FROM alert_rules WHERE id = $1{suffix}", rule_id)


async def list_alert_rules(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT id, spec, etag FROM alert_rules ORDER BY id")


async def upsert_alert_rule(conn: asyncpg.Connection, rule_id: str, spec: dict[str, Any], etag: str) -> None:
    await conn.execute(
        """INSERT INTO alert_rules (id, spec, etag) VALUES ($1, $2, $3)
           ON CONFLICT (id) DO UPDATE SET spec = $2, etag = $3, updated_at = now()""",
        rule_id,
        spec,
        etag,
    )
    # A changed rule starts over: what fires under the new condition triggers again.
    await conn.execute("DELETE FROM alert_state WHERE rule_id = $1", rule_id)


async def delete_alert_rule(conn: asyncpg.Connection, rule_id: str) -> None:
    await conn.execute("DELETE FROM alert_rules WHERE id = $1", rule_id)


async def firing_subjects(conn: asyncpg.Connection, rule_id: str) -> set[str]:
    return {r["subject"] for r in await conn.fetch("SELECT subject FROM alert_state WHERE rule_id = $1", rule_id)}


async def set_firing(conn: asyncpg.Connection, rule_id: str, firing: dict[str, float]) -> None:
    """Make `firing` ({subject: value}) the rule's firing subjects."""
    await conn.execute(
        "DELETE FROM alert_state WHERE rule_id = $1 AND NOT (subject = ANY($2::text[]))", rule_id, list(firing)
    )
    await conn.executemany(
        """INSERT INTO alert_state (rule_id, subject, value) VALUES ($1, $2, $3)
           ON CONFLICT (rule_id, subject) DO UPDATE SET value = excluded.value""",
        [(rule_id, subject, value) for subject, value in firing.items()],
    )


async def pass_rate(conn: asyncpg.Connection, scorecard_id: str, check_id: str, at: dt.datetime | None) -> float | None:
    """A check's pass rate over the entities it has results for, now or (from the history) at `at`."""
    status = (
        "r.status"
        if at is None
        else """COALESCE((SELECT h.previous FROM result_history h
                        WHERE h.entity_uid = r.entity_uid AND h.scorecard_id = r.scorecard_id
                          AND h.check_id = r.check_id AND h.time > $3 ORDER BY h.time LIMIT 1), r.status)"""
    )
    return await conn.fetchval(
        f"""SELECT count(*) FILTER (WHERE st = 'pass')::float8 / NULLIF(count(*), 0) FROM (
                SELECT {status} AS st FROM results r WHERE r.scorecard_id = $1 AND r.check_id = $2) x""",
        scorecard_id,
        check_id,
        *([] if at is None else [at]),
    )


# --- alert deliveries -------------------------------------------------------------------------------------------

_DELIVERY_COLUMNS = """id::text AS id, url, payload, status, attempts, last_status, last_error,
    CASE WHEN status = 'pending' THEN next_attempt_at END AS next_attempt_at, created_at, finished_at"""


async def insert_delivery(conn: asyncpg.Connection, delivery_id: str, url: str, payload: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO alert_deliveries (id, url, payload) VALUES ($1::uuid, $2, $3)", delivery_id, url, payload
    )


async def claim_deliveries(conn: asyncpg.Connection, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Due pending deliveries, each counted as one more attempt and hidden from other claims for the lease."""
    return await conn.fetch(
        f"""UPDATE alert_deliveries SET attempts = attempts + 1,
                   next_attempt_at = now() + make_interval(secs => $2)
            WHERE id IN (SELECT id FROM alert_deliveries
                         WHERE status = 'pending' AND next_attempt_at <= now()
                         ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING {_DELIVERY_COLUMNS}""",
        limit,
        lease_seconds,
    )


async def retry_delivery_later(
    conn: asyncpg.Connection, delivery_id: str, status: int | None, error: str, delay_seconds: float
) -> None:
    await conn.execute(
        """UPDATE alert_deliveries SET last_status = $2, last_error = $3,
                  next_attempt_at = now() + make_interval(secs => $4)
           WHERE id = $1::uuid""",
        delivery_id,
        status,
        error,
        delay_seconds,
    )


async def finish_delivery(
    conn: asyncpg.Connection, delivery_id: str, outcome: str, status: int | None, error: str | None
) -> None:
    await conn.execute(
        """UPDATE alert_deliveries SET status = $2, last_status = $3, last_error = $4, finished_at = now()
           WHERE id = $1::uuid""",
        delivery_id,
        outcome,
        status,
        error,
    )


async def requeue_delivery(conn: asyncpg.Connection, delivery_id: str) -> asyncpg.Record | None:
    """A finished delivery made pending again with its attempts reset; None when there is no such delivery."""
    return await conn.fetchrow(
        f"""UPDATE alert_deliveries SET status = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL
            WHERE id = $1::uuid RETURNING {_DELIVERY_COLUMNS}""",
        delivery_id,
    )


async def get_delivery(conn: asyncpg.Connection, delivery_id: str, *, lock: bool = False) -> asyncpg.Record | None:
    suffix = " FOR UPDATE" if lock else ""
    return await conn.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS} FROM alert_deliveries WHERE id = $1::uuid{suffix}", delivery_id
    )


async def list_deliveries(
    conn: asyncpg.Connection, status: str | None, after: str | None, limit: int
) -> list[asyncpg.Record]:
    """Newest first (ids are UUIDv7, so in creation order)."""
    return await conn.fetch(
        f"""SELECT {_DELIVERY_COLUMNS} FROM alert_deliveries
            WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR id < $2::uuid)
            ORDER BY id DESC LIMIT $3""",
        status,
        after,
        limit,
    )


async def next_delivery_due(conn: asyncpg.Connection) -> dt.datetime | None:
    return await conn.fetchval("SELECT min(next_attempt_at) FROM alert_deliveries WHERE status = 'pending'")


async def prune_deliveries(conn: asyncpg.Connection, before: dt.datetime) -> None:
    await conn.execute("DELETE FROM alert_deliveries WHERE status = 'delivered' AND finished_at < $1", before)
