"""Evaluating (entity, check) pairs in batches: load what the rules read, run the compiled closures, write only
what changed (results, history, scores) set-based, and emit `scorecard.score.changed` through the outbox."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.scorecard import store
from services.scorecard.files import read_files
from services.scorecard.model import CompiledScorecard, found_value, score_of
from services.scorecard.rules import FAIL, PASS, UNKNOWN, Context, FileSource, Outcome, Unreadable
from services.scorecard.store import EntityKey, ProjectedEntity
from shared.events import SYSTEM, ResourceRef, new_event
from shared.outbox import write_events

log = logging.getLogger(__name__)
SOURCE = "scorecard"

CHECKS_EVALUATED = Counter("idp_scorecard_checks_evaluated", "(entity, check) pairs evaluated", ["status"])
RESULTS_CHANGED = Counter("idp_scorecard_results_changed", "Stored results that changed")
SCORES_CHANGED = Counter("idp_scorecard_scores_changed", "Scores or levels that changed (or appeared, or went)")

Selection = dict[str, frozenset[str] | None]
"""Per scorecard id, the checks to evaluate (None: every check)."""


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """For a whole-catalog pass: it allocates millions of short-lived tuples, and with the default thresholds
    the garbage collector (scanning every loaded document again and again) took half its time. Objects alive
    before the pass are frozen out of collection and the thresholds raised, both undone afterwards."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


@dataclass
class Summary:
    """What one evaluation did."""

    checks_evaluated: int = 0
    results_changed: int = 0
    scores_changed: int = 0

    def add(self, other: Summary) -> None:
        self.checks_evaluated += other.checks_evaluated
        self.results_changed += other.results_changed
        self.scores_changed += other.scores_changed


@dataclass
class _Inputs:
    """What the rules of one batch read besides the entity itself."""

    related: dict[EntityKey, dict[str, Any]] = field(default_factory=dict)
    data: dict[EntityKey, dict[str, Any]] = field(default_factory=dict)
    events: dict[EntityKey, list[tuple[str, list[str], dt.datetime]]] = field(default_factory=dict)
    files: dict[str, dict[str, bytes | Unreadable]] | None = None
    """By uid, the files its rules read; None when no file source is configured."""


def file_paths(cards: Iterable[tuple[CompiledScorecard, frozenset[str] | None]]) -> set[str]:
    """The files the selected checks of these scorecards read."""
    return {
        path
        for card, check_ids in cards
        for check in card.checks
        if check_ids is None or check.id in check_ids
        for path in check.compiled.reads.file_paths
    }


async def load_inputs(
    conn: asyncpg.Connection,
    cards: Iterable[CompiledScorecard],
    entities: list[ProjectedEntity],
    now: dt.datetime,
    files: FileSource | None = None,
    paths: dict[str, set[str]] | None = None,
) -> _Inputs:
    """What the rules read; with a file source, the files `paths` names by uid are read too."""
    reads = [check.compiled.reads for card in cards for check in card.checks]
    inputs = _Inputs()
    if files is not None:
        wanted = [(e.uid, e.document, p) for e in entities if (p := (paths or {}).get(e.uid))]
        inputs.files = await read_files(files, wanted) if wanted else {}
    keys = [e.key for e in entities]
    relation_types = {t for r in reads for t in r.relation_types}
    if relation_types:
        targets = {
            (e.scope, rel["targetRef"])
            for e in entities
            for rel in e.document.get("relations") or ()
            if str(rel.get("type", "")).lower() in relation_types
        }
        inputs.related = {e.key: e.document for e in await store.entities_by_keys(conn, targets)}
    if any(r.data_keys for r in reads):
        inputs.data = await store.custom_data_for(conn, keys)
    event_types = sorted({t for r in reads for t in r.event_types})
    if event_types:
        since = now - dt.timedelta(days=366)
        inputs.events = await store.entity_events_for(conn, keys, event_types, since)
    return inputs


def context_for(entity: ProjectedEntity, inputs: _Inputs, now: dt.datetime) -> Context:
    scope = entity.scope
    events = inputs.events.get(entity.key, ())

    def event_times(type_: str, path: str | None) -> list[dt.datetime]:
        return [
            time
            for event_type, fields, time in events
            if event_type == type_ and (path is None or any(f == path or f.startswith(path + ".") for f in fields))
        ]

    return Context(
        entity.document,
        related=lambda ref: inputs.related.get((scope, ref)),
        data=inputs.data.get(entity.key, {}),
        event_times=event_times,
        files=None if inputs.files is None else inputs.files.get(entity.uid, {}),
        now=now,
    )


def run_check(check: Any, ctx: Context) -> Outcome:
    try:
        return check.compiled.evaluate(ctx)
    except Exception as exc:  # a rule must never stop the consumer; the entity's result says what went wrong
        log.exception("check %s failed to evaluate", check.id)
        return Outcome(UNKNOWN, None, f"evaluation error: {type(exc).__name__}")


async def evaluate(
    conn: asyncpg.Connection,
    cards: dict[str, CompiledScorecard],
    work: dict[str, tuple[ProjectedEntity, Selection]],
    *,
    files: FileSource | None,
    now: dt.datetime | None = None,
) -> Summary:
    """Evaluate the selected checks of each entity in `work` (by uid), in the caller's transaction."""
    now = now or dt.datetime.now(dt.UTC)
    summary = Summary()
    used = {card_id for _, selection in work.values() for card_id in selection if card_id in cards}
    if not work or not used:
        return summary
    entities = [entity for entity, _ in work.values()]
    # Which scorecards apply first: inputs are loaded only for the entities and checks that will run.
    applicable: list[tuple[ProjectedEntity, list[tuple[CompiledScorecard, frozenset[str] | None]]]] = []
    leaving: list[tuple[str, str]] = []
    for entity, selection in work.values():
        cards_here = []
        for card_id, check_ids in selection.items():
            card = cards.get(card_id)
            if card is None:
                continue
            if card.applies(entity.document):
                cards_here.append((card, check_ids))
            else:
                leaving.append((card_id, entity.uid))
        if cards_here:
            applicable.append((entity, cards_here))
    used_cards = {card.id: card for _, cards_here in applicable for card, _ in cards_here}
    reads_files = files is not None and any(
        c.compiled.reads.file_paths for card in used_cards.values() for c in card.checks
    )
    paths = {entity.uid: file_paths(cards_here) for entity, cards_here in applicable} if reads_files else {}
    inputs = await load_inputs(conn, used_cards.values(), [e for e, _ in applicable], now, files, paths)
    outcomes: list[tuple[CompiledScorecard, ProjectedEntity, Any, Outcome]] = []
    evaluated: set[tuple[str, str]] = set()
    for entity, cards_here in applicable:
        ctx = context_for(entity, inputs, now)
        for card, check_ids in cards_here:
            evaluated.add((card.id, entity.uid))
            for check in card.checks:
                if check_ids is None or check.id in check_ids:
                    outcomes.append((card, entity, check, run_check(check, ctx)))
    summary.checks_evaluated = len(outcomes)
    for status in (PASS, FAIL, UNKNOWN):
        CHECKS_EVALUATED.labels(status).inc(sum(1 for o in outcomes if o[3].status == status))
    uids = sorted({entity.uid for entity in entities})
    stored = await store.results_for(conn, sorted(used), uids)
    changed, history = [], []
    for card, entity, check, outcome in outcomes:
        new = (outcome.status, found_value(outcome.found), check.expected, outcome.reason)
        results = stored.setdefault((card.id, entity.uid), {})
        old = results.get(check.id)
        if old == new:
            continue
        changed.append((card.id, entity.uid, check.id, *new))
        if old is not None and old[0] != new[0]:
            history.append((card.id, entity.uid, check.id, old[0], new[0], new[1]))
        results[check.id] = new
    await store.upsert_results(conn, changed)
    await store.insert_result_history(conn, history)
    summary.results_changed = len(changed)
    summary.scores_changed = await _rescore(conn, cards, work, evaluated, leaving, stored)
    RESULTS_CHANGED.inc(summary.results_changed)
    SCORES_CHANGED.inc(summary.scores_changed)
    return summary


async def _rescore(
    conn: asyncpg.Connection,
    cards: dict[str, CompiledScorecard],
    work: dict[str, tuple[ProjectedEntity, Selection]],
    evaluated: set[tuple[str, str]],
    leaving: list[tuple[str, str]],
    results: dict[tuple[str, str], dict[str, store.StoredResult]],
) -> int:
    """Scores of the evaluated pairs from all their results; only changed ones are written and announced."""
    pairs = evaluated | set(leaving)
    previous = await store.scores_for(conn, sorted({c for c, _ in pairs}), sorted({u for _, u in pairs}))
    rows, events = [], []
    for card_id, uid in sorted(evaluated):
        card = cards[card_id]
        score = score_of(card, {check: r[0] for check, r in results.get((card_id, uid), {}).items()})
        before = previous.get((card_id, uid))
        if before == (score.score, score.level):
            continue
        rows.append((card_id, uid, score.score, score.level, score.passed, score.total))
        if before is not None:
            events.append(_score_event(work[uid][0], card_id, before, (score.score, score.level)))
    departed = [pair for pair in leaving if pair in previous or pair in results]
    if departed:
        await store.delete_results(conn, departed)
        await store.record_departures(conn, [p for p in departed if p in previous])
        events += [
            _score_event(work[uid][0], card_id, previous[(card_id, uid)], None)
            for card_id, uid in departed
            if (card_id, uid) in previous
        ]
    await store.upsert_scores(conn, rows)
    if events:
        await write_events(conn, events)
    return len(rows) + len(departed)


def _score_event(
    entity: ProjectedEntity, card_id: str, before: tuple[float, str | None], after: tuple[float, str | None] | None
):
    return new_event(
        "scorecard.score.changed",
        source=SOURCE,
        actor=SYSTEM,
        scope=entity.scope,
        resource=ResourceRef("entity", entity.ref),
        data={
            "scorecard": card_id,
            "uid": entity.uid,
            "score": after[0] if after else None,
            "level": after[1] if after else None,
            "previous_score": before[0],
            "previous_level": before[1],
        },
    )
