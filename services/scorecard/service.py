"""Scorecard use cases, shared by the HTTP routes, the event consumer and the schedules."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
from nats.aio.client import Client as NatsClient

from services.scorecard import store
from services.scorecard.evaluation import (
    Selection,
    Summary,
    context_for,
    evaluate,
    fewer_collections,
    file_paths,
    load_inputs,
    run_check,
)
from services.scorecard.model import (
    CheckSpec,
    CheckSummary,
    CheckView,
    CompiledScorecard,
    ConsumerProgress,
    CustomDataRequest,
    CustomDataResult,
    DryRunRequest,
    DryRunResult,
    EntityEvaluation,
    EntityReport,
    EntityScorecard,
    GroupRollup,
    ScorecardSpec,
    ScorecardSummary,
    ScorecardView,
    Trend,
    TrendPoint,
    TrendQuery,
    apply_changes,
    canonical_ref,
    changed_checks,
    compile_scorecard,
    entity_scope,
    explain,
    patchable,
    projection_row,
    result_of,
    score_of,
    spec_etag,
)
from services.scorecard.rules import FileSource, paths_overlap
from services.scorecard.store import EntityKey, ProjectedEntity
from shared import catalog_client
from shared.db import transaction
from shared.errors import ConflictError, InputError, NotFoundError, ServiceUnavailableError
from shared.etag import check_if_match
from shared.events import Actor, Event, ResourceRef, diff_fields, new_event
from shared.outbox import write_event
from shared.scopes import check_scope

log = logging.getLogger(__name__)

CONSUMER = "scorecard"
SOURCE = "scorecard"
BATCH = 1000
ENTITY_CHANGED = ("catalog.entity.created", "catalog.entity.updated", "catalog.entity.orphaned")
ENTITY_DELETED = "catalog.entity.deleted"
DATA_UPDATED = "scorecard.data.updated"
NEIGHBOUR_CHUNK = 20
"""Relation targets asked per request: groups and systems carry many relations, and a reply is one message."""

_UID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_compiled: dict[str, CompiledScorecard] = {}
"""Compiled scorecards by etag: rules are compiled once per version, not per evaluation."""


def compiled(view: ScorecardView) -> CompiledScorecard:
    card = _compiled.get(view.etag)
    if card is None:
        if len(_compiled) > 512:
            _compiled.clear()
        card = _compiled[view.etag] = compile_scorecard(view.spec)
    return card


async def load_scorecards(conn: asyncpg.Connection) -> dict[str, CompiledScorecard]:
    return {view.spec.id: compiled(view) for view in await store.list_scorecards(conn)}


# --- scorecards -------------------------------------------------------------------------------------------


def _scorecard_event(verb: str, actor: Actor, spec: ScorecardSpec, data: dict[str, Any]):
    return new_event(
        f"scorecard.scorecard.{verb}",
        source=SOURCE,
        actor=actor,
        scope=spec.scope,
        resource=ResourceRef("scorecard", spec.id),
        data=data,
    )


async def create_scorecard(pool: asyncpg.Pool, actor: Actor, spec: ScorecardSpec) -> ScorecardView:
    compile_scorecard(spec)
    try:
        async with transaction(pool) as conn:
            view = await store.insert_scorecard(conn, spec, spec_etag(spec))
            await store.enqueue_job(conn, spec.id, None, "created")
            await write_event(conn, _scorecard_event("created", actor, spec, {"scorecard": msgspec.to_builtins(spec)}))
            return view
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"scorecard {spec.id} already exists") from None


async def replace_scorecard(
    pool: asyncpg.Pool, actor: Actor, scorecard_id: str, spec: ScorecardSpec, if_match: str | None
) -> ScorecardView:
    """Replace a scorecard (`If-Match` honoured); only new or edited checks are evaluated again."""
    if spec.id != scorecard_id:
        raise InputError.for_field("$.id", f"must be {scorecard_id!r} as in the path")
    compile_scorecard(spec)
    async with transaction(pool) as conn:
        current = await store.get_scorecard(conn, scorecard_id, lock=True)
        if current is None:
            raise NotFoundError(f"no scorecard {scorecard_id}")
        check_if_match(if_match, current.etag)
        if current.spec == spec:
            return current
        view = await store.update_scorecard(conn, spec, spec_etag(spec))
        await store.delete_results_of_removed_checks(conn, spec.id, [c.id for c in spec.checks])
        checks = changed_checks(current.spec, spec)
        # An empty list still rescans: weights, levels or removed checks change scores.
        await store.enqueue_job(conn, spec.id, checks, "updated")
        changes = diff_fields(msgspec.to_builtins(current.spec), msgspec.to_builtins(spec))
        await write_event(
            conn, _scorecard_event("updated", actor, spec, {"changes": changes, "changed_checks": checks})
        )
        return view


async def put_check(
    pool: asyncpg.Pool, actor: Actor, scorecard_id: str, check: CheckSpec, if_match: str | None
) -> ScorecardView:
    """Add or replace one check of a scorecard (`If-Match` is the scorecard's etag)."""
    current = await get_scorecard(pool, scorecard_id)
    checks = [c for c in current.spec.checks if c.id != check.id]
    position = next((i for i, c in enumerate(current.spec.checks) if c.id == check.id), len(checks))
    checks.insert(position, check)
    spec = msgspec.structs.replace(current.spec, checks=checks)
    return await replace_scorecard(pool, actor, scorecard_id, spec, if_match or f'"{current.etag}"')


async def delete_check(
    pool: asyncpg.Pool, actor: Actor, scorecard_id: str, check_id: str, if_match: str | None
) -> ScorecardView:
    current = await get_scorecard(pool, scorecard_id)
    checks = [c for c in current.spec.checks if c.id != check_id]
    if len(checks) == len(current.spec.checks):
        raise NotFoundError(f"scorecard {scorecard_id} has no check {check_id}")
    if not checks:
        raise ConflictError("a scorecard keeps at least one check; delete the scorecard instead")
    spec = msgspec.structs.replace(current.spec, checks=checks)
    return await replace_scorecard(pool, actor, scorecard_id, spec, if_match or f'"{current.etag}"')


async def delete_scorecard(pool: asyncpg.Pool, actor: Actor, scorecard_id: str, if_match: str | None) -> None:
    async with transaction(pool) as conn:
        current = await store.get_scorecard(conn, scorecard_id, lock=True)
        if current is None:
            raise NotFoundError(f"no scorecard {scorecard_id}")
        check_if_match(if_match, current.etag)
        await store.delete_scorecard(conn, scorecard_id)
        await write_event(conn, _scorecard_event("deleted", actor, current.spec, {}))


async def get_scorecard(pool: asyncpg.Pool, scorecard_id: str) -> ScorecardView:
    async with pool.acquire() as conn:
        view = await store.get_scorecard(conn, scorecard_id)
    if view is None:
        raise NotFoundError(f"no scorecard {scorecard_id}")
    return view


async def list_scorecards(pool: asyncpg.Pool) -> list[ScorecardView]:
    async with pool.acquire() as conn:
        return await store.list_scorecards(conn)


# --- custom data ---------------------------------------------------------------------------------------


async def push_custom_data(pool: asyncpg.Pool, actor: Actor, request: CustomDataRequest) -> CustomDataResult:
    """Store values for entities; each entity whose values changed gets one `scorecard.data.updated` event,
    which the consumer turns into an evaluation of the checks that read them."""
    rows = []
    for i, item in enumerate(request.items):
        check_scope(item.scope, f"$.items[{i}].scope")
        if ":" not in item.entity:
            raise InputError.for_field(f"$.items[{i}].entity", "an entity ref is kind:[namespace/]name")
        ref = canonical_ref(item.entity)
        rows += [(item.scope, ref, key, value) for key, value in item.values.items()]
    if not rows:
        return CustomDataResult(changed=0)
    async with transaction(pool) as conn:
        changed = await store.upsert_custom_data(conn, rows)
        for scope, ref in changed:
            keys = sorted({key for s, r, key, _ in rows if (s, r) == (scope, ref)})
            await write_event(
                conn,
                new_event(
                    DATA_UPDATED,
                    source=SOURCE,
                    actor=actor,
                    scope=scope,
                    resource=ResourceRef("entity", ref),
                    data={"keys": keys, "values": {k: v for s, r, k, v in rows if (s, r) == (scope, ref)}},
                ),
            )
    return CustomDataResult(changed=len(changed))


# --- live evaluation from the event stream ---------------------------------------------------------------


@dataclass
class _BatchChanges:
    """What a batch of events says changed."""

    changed_paths: dict[str, set[str] | None] = field(default_factory=dict)
    """Entity uid → fields changed (None: all, for a new entity)."""
    deleted: set[str] = field(default_factory=set)
    data_keys: dict[EntityKey, set[str]] = field(default_factory=dict)
    event_types: dict[EntityKey, set[str]] = field(default_factory=dict)
    entity_events: list[tuple[Any, ...]] = field(default_factory=list)
    """Rows of the event projection."""
    updates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Entity uid → the `changes` of its update events, in order (none after a create)."""
    generations: dict[str, Any] = field(default_factory=dict)


def _changes_of(events: list[Event]) -> _BatchChanges:
    changes = _BatchChanges()
    for event in events:
        uid = event.data.get("uid")
        uid = uid if isinstance(uid, str) and _UID.match(uid) else None  # a malformed event changes nothing
        if event.type in ENTITY_CHANGED and uid:
            paths = None if event.type != "catalog.entity.updated" else set(event.data.get("changes") or {})
            before = changes.changed_paths.get(uid, set())
            changes.changed_paths[uid] = None if paths is None or before is None else before | paths
            changes.deleted.discard(uid)
            if paths is None:
                changes.updates.pop(uid, None)
            else:
                changes.updates.setdefault(uid, []).append(event.data.get("changes") or {})
                changes.generations[uid] = event.data.get("generation")
        elif event.type == ENTITY_DELETED and uid:
            changes.deleted.add(uid)
            changes.changed_paths.pop(uid, None)
        elif event.type == DATA_UPDATED and isinstance(event.data.get("keys"), list):
            key = (event.scope, event.resource.id)
            changes.data_keys.setdefault(key, set()).update(map(str, event.data["keys"]))
        about = _entity_of_event(event)
        if about is not None and event.type != "scorecard.score.changed":
            key = (event.scope, about)
            fields = event.data.get("changes")
            fields = sorted(fields) if isinstance(fields, dict) else []
            changes.entity_events.append((event.id, *key, event.type, fields, event.time))
            changes.event_types.setdefault(key, set()).add(event.type)
    return changes


def _entity_of_event(event: Event) -> str | None:
    """The entity an event is about: its resource, or the `entityRef` of an event about something else (a
    workflow run started for an entity)."""
    if event.resource.kind == "entity":
        return event.resource.id.lower()
    ref = event.data.get("entityRef")
    return canonical_ref(ref) if isinstance(ref, str) and ":" in ref else None


async def observe_events(
    pool: asyncpg.Pool, nc: NatsClient, events: Sequence[Event], files: FileSource | None
) -> Summary:
    """Apply a batch of events once: keep the entity projection and the event projection, then evaluate
    exactly the (entity, check) pairs the batch can have changed."""
    async with transaction(pool) as conn:
        fresh = await store.mark_processed(conn, CONSUMER, list(events))
        if not fresh:
            return Summary()
        await store.record_progress(conn, CONSUMER, fresh[-1], len(fresh))
        changes = _changes_of(fresh)
        if changes.entity_events:
            await store.insert_entity_events(conn, changes.entity_events)
        served: list[dict[str, Any]] = []
        neighbours: set[str] = set()
        before: dict[str, dict[str, Any]] = {}
        deleted = changes.deleted
        if changes.changed_paths or deleted:
            try:
                served, vanished, neighbours, before = await _read_changes(conn, nc, changes, deleted)
                deleted |= vanished
            except ServiceUnavailableError as exc:
                # Retrying the batch would send it to the dead letters during an outage: note what to read.
                log.warning(
                    "catalog unreachable (%s); %d entities to read again later", exc, len(changes.changed_paths)
                )
                await store.mark_stale(conn, sorted(changes.changed_paths))
        await store.upsert_entities(conn, [projection_row(e) for e in served])
        removed = await store.delete_entities(conn, sorted(deleted)) if deleted else []
        cards = await load_scorecards(conn)
        if not cards:
            return Summary()
        work = await _plan(
            conn,
            cards,
            served,
            changes.changed_paths,
            removed,
            changes.data_keys,
            changes.event_types,
            neighbours,
            before,
        )
        return await evaluate(conn, cards, work, files=files)


async def _read_changes(
    conn: asyncpg.Connection, nc: NatsClient, changes: _BatchChanges, deleted: set[str]
) -> tuple[list[dict[str, Any]], set[str], set[str], dict[str, dict[str, Any]]]:
    """The changed entities as the catalog serves them now, the uids it no longer has, the uids of relation
    targets read again, and the projected documents of the changed entities before the changes.

    An update that changes no relation is applied to the projected entity from the event's `changes`; the others
    (new entities, relation fields, entities not projected yet) are read from the catalog. The catalog keeps
    relations both ways, so an entity that gains or loses a relation changes its target's served `ownerOf`,
    `hasPart`, … without an event of the target's own: those targets are read too and added to
    `changed_paths` as `relations`."""
    changed_paths = changes.changed_paths
    before = {e.uid: e.document for e in await store.get_entities(conn, sorted(set(changed_paths) | deleted))}
    served, to_read = [], []
    for uid, paths in changed_paths.items():
        if uid in before and paths is not None and uid in changes.updates and all(map(patchable, paths)):
            served.append(apply_changes(before[uid], changes.updates[uid], changes.generations.get(uid)))
        else:
            to_read.append(uid)
    if to_read:
        served += await catalog_client.get_entities(nc, uids=sorted(to_read))
    vanished = set(to_read) - {e["metadata"]["uid"] for e in served}
    targets: dict[str, set[str]] = {}
    gone = [before[uid] for uid in vanished | deleted if uid in before]
    for document in served:
        moved = _relation_pairs(document) ^ _relation_pairs(before.get(document["metadata"]["uid"], {}))
        targets.setdefault(entity_scope(document), set()).update(target for _, target in moved)
    for document in gone:
        targets.setdefault(entity_scope(document), set()).update(t for _, t in _relation_pairs(document))
    neighbours: set[str] = set()
    for scope, refs in targets.items():
        if not refs:
            continue
        for neighbour in await catalog_client.get_entities(nc, refs=sorted(refs), scope=scope, chunk=NEIGHBOUR_CHUNK):
            uid = neighbour["metadata"]["uid"]
            if uid not in changed_paths:
                changed_paths[uid] = {"relations"}
                neighbours.add(uid)
                served.append(neighbour)
    return served, vanished, neighbours, before


def _relation_pairs(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(str(r.get("type")), str(r.get("targetRef"))) for r in document.get("relations") or ()}


async def _plan(
    conn: asyncpg.Connection,
    cards: dict[str, CompiledScorecard],
    served: list[dict[str, Any]],
    changed_paths: dict[str, set[str] | None],
    removed: list[ProjectedEntity],
    data_keys: dict[EntityKey, set[str]],
    event_types: dict[EntityKey, set[str]],
    neighbours: set[str] = frozenset(),
    before: dict[str, dict[str, Any]] | None = None,
) -> dict[str, tuple[ProjectedEntity, Selection]]:
    """Which checks of which entities a batch of changes can affect. Relation checks of the entities pointing
    at a changed one run again when the change can alter how the check judges it (`before`: the changed
    entities' documents before the batch); not for `neighbours`, whose only change is their list of relations."""
    work: dict[str, tuple[ProjectedEntity, Selection]] = {}

    def want(entity: ProjectedEntity, card: CompiledScorecard, checks: set[str] | None) -> None:
        selection = work.setdefault(entity.uid, (entity, {}))[1]
        if checks is None or selection.get(card.id, frozenset()) is None:
            selection[card.id] = None
        elif checks:
            selection[card.id] = frozenset(selection.get(card.id, frozenset()) | checks)

    changed_entities = [ProjectedEntity(*projection_row(e)[:4]) for e in served]
    for entity in changed_entities:
        paths = changed_paths.get(entity.uid)
        old = (before or {}).get(entity.uid)
        relations_changed = old is None or _relation_pairs(old) != _relation_pairs(entity.document)
        for card in cards.values():
            if paths is None or any(paths_overlap(p, f) for p in paths for f in card.filter_paths):
                want(entity, card, None)
            else:
                want(entity, card, {c.id for c in card.checks if c.compiled.reads.touched_by(paths, relations_changed)})
    relation_checks: dict[str, set[str]] = {}
    moved = [e.key for e in removed]
    for entity in removed:
        _relation_checks_moved_by(cards, None, None, entity.document, relation_checks)
    for entity in changed_entities:
        if entity.uid not in neighbours:
            old = (before or {}).get(entity.uid)
            paths = changed_paths.get(entity.uid) if old is not None else None
            if _relation_checks_moved_by(cards, paths, old, entity.document, relation_checks):
                moved.append(entity.key)
    if moved and relation_checks:
        for entity in await store.dependents(conn, moved):
            for card in cards.values():
                want(entity, card, relation_checks.get(card.id, set()))
    others = set(data_keys) | set(event_types)
    known = {e.key: e for e in changed_entities if e.key in others}
    unknown = others - known.keys()
    for entity in [*known.values(), *(await store.entities_by_keys(conn, unknown) if unknown else [])]:
        keys, types = data_keys.get(entity.key, set()), event_types.get(entity.key, set())
        for card in cards.values():
            reads_of = {c.id: c.compiled.reads for c in card.checks}
            want(
                entity,
                card,
                {cid for cid, r in reads_of.items() if (r.data_keys & keys) or (r.event_types & types)},
            )
    return {uid: item for uid, item in work.items() if item[1]}


def _relation_checks_moved_by(
    cards: dict[str, CompiledScorecard],
    paths: set[str] | None,
    before: dict[str, Any] | None,
    after: dict[str, Any],
    found: dict[str, set[str]],
) -> bool:
    """Add to `found` (card id → check ids) the relation checks whose judgement of a target can change with its
    change of `paths` from `before` to `after` (None: it appeared or went away); whether there was one."""
    moved = False
    for card in cards.values():
        for check in card.checks:
            reads = check.compiled.reads
            if not reads.touched_through_relations(paths):
                continue
            if paths is not None and before is not None and reads.judges_alike(before, after):
                continue
            found.setdefault(card.id, set()).add(check.id)
            moved = True
    return moved


# --- whole-catalog work: sync, jobs, schedules -------------------------------------------------------------


async def sync_entities(pool: asyncpg.Pool, nc: NatsClient, page_size: int = 500) -> tuple[list[str], int]:
    """Bring the projection up to date with the catalog page by page; returns the uids whose documents
    changed (or are new) and how many vanished entities were dropped."""
    seen: set[str] = set()
    changed: list[str] = []
    async for page in catalog_client.iterate_pages(nc, limit=page_size):
        rows = [projection_row(e) for e in page]
        async with transaction(pool) as conn:
            known = {e.uid: e.document for e in await store.get_entities(conn, [r[0] for r in rows])}
            fresh = [r for r in rows if known.get(r[0]) != r[3]]
            await store.upsert_entities(conn, fresh)
        seen.update(r[0] for r in rows)
        changed += [r[0] for r in fresh]
    async with transaction(pool) as conn:
        gone = sorted(await store.entity_uids(conn) - seen)
        if gone:
            await store.delete_entities(conn, gone)
    return changed, len(gone)


async def refresh_stale(pool: asyncpg.Pool, nc: NatsClient, files: FileSource | None, limit: int = 500) -> int:
    """Read again the entities whose change arrived while the catalog was unreachable, and evaluate them;
    returns how many were refreshed (the catalog still being away raises ServiceUnavailableError)."""
    async with pool.acquire() as conn:
        uids = await store.stale_uids(conn, limit)
    if not uids:
        return 0
    served = await catalog_client.get_entities(nc, uids=uids)
    found = {e["metadata"]["uid"] for e in served}
    async with transaction(pool) as conn:
        await store.upsert_entities(conn, [projection_row(e) for e in served])
        removed = await store.delete_entities(conn, sorted(set(uids) - found))
        cards = await load_scorecards(conn)
        work = await _plan(conn, cards, served, dict.fromkeys(found), removed, {}, {})
        await evaluate(conn, cards, work, files=files)
        await store.clear_stale(conn, uids)
    return len(uids)


async def evaluate_entities(
    pool: asyncpg.Pool,
    files: FileSource | None,
    selection: Selection | None = None,
    uids: list[str] | None = None,
    batch: int = BATCH,
    workers: int = 2,
) -> Summary:
    """Evaluate every entity of the projection (or those of `uids`) against `selection` (default: every
    check of every scorecard), one transaction per batch. Two batches run at once so that one is evaluated
    in Python while PostgreSQL writes the other."""
    summary = Summary()
    async with pool.acquire() as conn:
        cards = await load_scorecards(conn)
        if uids is None:
            uids = await store.all_entity_uids(conn)
    selection = {card_id: None for card_id in cards} if selection is None else selection
    if not cards or not selection:
        return summary
    batches = iter(range(0, len(uids), batch))

    async def work_through() -> None:
        for start in batches:
            async with transaction(pool) as conn:
                entities = await store.get_entities(conn, uids[start : start + batch])
                work = {e.uid: (e, dict(selection)) for e in entities}
                summary.add(await evaluate(conn, cards, work, files=files))

    with fewer_collections():
        await asyncio.gather(*(work_through() for _ in range(workers)))
    return summary


async def run_pending_jobs(pool: asyncpg.Pool, files: FileSource | None, stale_after: float = 600.0) -> bool:
    """Claim the pending scorecard evaluations and run them in one pass over the entities (five new
    scorecards cost one scan, not five); False when there was nothing to do."""
    async with transaction(pool) as conn:
        jobs = await store.claim_jobs(conn, stale_after)
    if not jobs:
        return False
    selection: Selection = {}
    for job in jobs:
        card_id, checks = job["scorecard_id"], job["check_ids"]
        if checks is None or selection.get(card_id, frozenset()) is None:
            selection[card_id] = None
        else:
            selection[card_id] = frozenset(selection.get(card_id, frozenset()) | set(checks))
    log.info("evaluating scorecards %s", ", ".join(sorted(selection)))
    await evaluate_entities(pool, files, selection)
    async with transaction(pool) as conn:
        await store.finish_jobs(conn, [job["id"] for job in jobs])
    return True


async def schedule_clock_checks(pool: asyncpg.Pool) -> int:
    """Queue the checks whose outcome moves with time or with files (event windows, relative dates, file
    rules); returns how many scorecards got a job."""
    async with transaction(pool) as conn:
        cards = await load_scorecards(conn)
        queued = 0
        for card in cards.values():
            checks = [c.id for c in card.checks if c.compiled.reads.now or c.compiled.reads.file_paths]
            if checks:
                await store.enqueue_job(conn, card.id, checks, "schedule")
                queued += 1
        await store.prune_entity_events(conn, dt.datetime.now(dt.UTC) - dt.timedelta(days=366))
    return queued


# --- dry run ------------------------------------------------------------------------------------------------


async def dry_run(pool: asyncpg.Pool, nc: NatsClient, files: FileSource | None, request: DryRunRequest) -> DryRunResult:
    """Evaluate a draft scorecard against chosen entities (read from the catalog now); nothing is stored."""
    card = compile_scorecard(request.scorecard)
    check_scope(request.scope, "$.scope")
    served = await catalog_client.get_entities(nc, refs=request.entities, scope=request.scope)
    entities = [ProjectedEntity(*projection_row(e)[:4]) for e in served]
    now = dt.datetime.now(dt.UTC)
    paths = {e.uid: file_paths([(card, None)]) for e in entities if card.applies(e.document)}
    async with pool.acquire() as conn:
        inputs = await load_inputs(conn, [card], entities, now, files, paths)
    if any(check.compiled.reads.relation_types for check in card.checks):
        # Relation targets come from the catalog too: the draft sees what the catalog has now.
        targets = sorted({r["targetRef"] for e in entities for r in e.document.get("relations") or ()})
        related = await catalog_client.get_entities(nc, refs=targets, scope=request.scope)
        inputs.related = {(request.scope, projection_row(e)[2]): e for e in related}
    evaluations, not_applicable = [], []
    for entity in entities:
        if not card.applies(entity.document):
            not_applicable.append(entity.ref)
            continue
        ctx = context_for(entity, inputs, now)
        results = [result_of(card, check, run_check(check, ctx)) for check in card.checks]
        score = score_of(card, {r.check: r.status for r in results})
        evaluations.append(
            EntityEvaluation(
                entity=entity.ref,
                scorecard=card.id,
                name=card.spec.name,
                score=score.score,
                level=score.level,
                checks=results,
            )
        )
    found = {e.ref for e in entities}
    missing = [ref for ref in request.entities if canonical_ref(ref) not in found]
    return DryRunResult(evaluations=evaluations, not_applicable=not_applicable, missing=missing)


async def consumer_progress(pool: asyncpg.Pool) -> ConsumerProgress:
    async with pool.acquire() as conn:
        progress = await store.get_progress(conn, CONSUMER)
    if progress is None:
        raise NotFoundError("the scorecard consumer has not processed any event yet")
    return progress


# --- reads --------------------------------------------------------------------------------------------------


async def entity_report(pool: asyncpg.Pool, scope: str, ref: str) -> EntityReport:
    """Every scorecard of an entity: score, level, and each check with what it found against what it expects."""
    check_scope(scope, "query.scope")
    canonical = canonical_ref(ref)
    async with pool.acquire() as conn:
        entity = await store.find_entity(conn, scope, canonical)
        if entity is None:
            raise NotFoundError(f"no entity {canonical} at scope {scope}")
        rows = await store.entity_results(conn, entity.uid)
        cards = await load_scorecards(conn)
    by_card: dict[str, list[Any]] = {}
    for row in rows:
        by_card.setdefault(row["scorecard_id"], []).append(row)
    return EntityReport(
        entity=canonical,
        scope=scope,
        scorecards=[
            EntityScorecard(
                scorecard=card_id,
                name=cards[card_id].spec.name if card_id in cards else card_id,
                score=card_rows[0]["score"],
                level=card_rows[0]["level"],
                checks=[
                    CheckView(
                        r["check_id"],
                        r["status"],
                        r["found"],
                        r["expected"],
                        r["reason"],
                        r["changed_at"],
                        explain(r["status"], r["found"], r["expected"], r["reason"]),
                    )
                    for r in card_rows
                ],
            )
            for card_id, card_rows in by_card.items()
        ],
    )


async def scorecard_summary(pool: asyncpg.Pool, scorecard_id: str, group_by: str) -> ScorecardSummary:
    async with pool.acquire() as conn:
        view = await store.get_scorecard(conn, scorecard_id)
        if view is None:
            raise NotFoundError(f"no scorecard {scorecard_id}")
        levels = await store.level_distribution(conn, scorecard_id)
        counts = {r["check_id"]: r for r in await store.check_counts(conn, scorecard_id)}
        groups = await store.rollup(conn, scorecard_id, group_by)
    entities = sum(r["entities"] for r in levels)
    checks = []
    for check in view.spec.checks:
        row = counts.get(check.id)
        passed, failed, unknown = (row["passed"], row["failed"], row["unknown"]) if row else (0, 0, 0)
        evaluated = passed + failed + unknown
        checks.append(
            CheckSummary(check.id, check.name, passed, failed, unknown, passed / evaluated if evaluated else None)
        )
    average = sum(r["average"] * r["entities"] for r in levels) / entities if entities else None
    return ScorecardSummary(
        scorecard=scorecard_id,
        entities=entities,
        average_score=average,
        levels={**{name: 0 for name in view.spec.levels}, **{r["level"] or "none": r["entities"] for r in levels}},
        checks=checks,
        rollup=[GroupRollup(r["key"], r["entities"], r["average"], r["pass_rate"]) for r in groups],
        group_by=group_by,
    )


async def export_csv(pool: asyncpg.Pool, view: ScorecardView, chunk_rows: int = 1000) -> AsyncIterator[bytes]:
    """Each entity's score, level and check statuses as CSV, in chunks; memory stays flat."""
    scorecard_id = view.spec.id
    check_ids = [c.id for c in view.spec.checks]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["entity", "scope", "owner", "score", "level", *check_ids])
    rows = 0
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        async for row in await store.stream_scores(conn, scorecard_id):
            statuses = row["statuses"] or {}
            writer.writerow(
                [
                    row["ref"],
                    row["scope"],
                    row["owner"] or "",
                    row["score"],
                    row["level"] or "",
                    *[statuses.get(c, "") for c in check_ids],
                ]
            )
            rows += 1
            if rows % chunk_rows == 0:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue().encode()


MAX_TREND_DAYS = 366


async def trend(pool: asyncpg.Pool, query: TrendQuery) -> Trend:
    if query.until < query.since:
        raise InputError.for_field("query.until", "must not be before since")
    if (query.until - query.since).days >= MAX_TREND_DAYS:
        raise InputError.for_field("query.since", f"a trend covers at most {MAX_TREND_DAYS} days")
    check_scope(query.scope, "query.scope")
    async with pool.acquire() as conn:
        if await store.get_scorecard(conn, query.scorecard) is None:
            raise NotFoundError(f"no scorecard {query.scorecard}")
        uid = None
        if query.entity is not None:
            entity = await store.find_entity(conn, query.scope, canonical_ref(query.entity))
            if entity is None:
                raise NotFoundError(f"no entity {query.entity} at scope {query.scope}")
            uid = entity.uid
        owner = canonical_ref(query.group, "group") if query.group else None
        rows = await store.daily_series(conn, query.scorecard, query.since, query.until, owner=owner, uid=uid)
    return Trend(
        scorecard=query.scorecard,
        points=[TrendPoint(r["day"], r["entities"], r["average"], r["pass_rate"]) for r in rows],
    )
