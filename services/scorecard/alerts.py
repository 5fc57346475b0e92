"""Alert rules over scorecard results: CRUD, evaluation, `scorecard.alert.triggered` events and the webhook.

An alert triggers once, when its condition starts to hold for a subject (a group, a check); it triggers again
only after the condition stopped holding in between.
"""

from __future__ import annotations

import datetime as dt
import logging

import asyncpg
import msgspec

from services.scorecard import store, webhook
from services.scorecard.model import (
    Alert,
    AlertRuleSpec,
    AlertRuleView,
    CheckPassRateDrop,
    GroupAverageBelow,
    alert_etag,
)
from shared.db import transaction
from shared.errors import InputError, NotFoundError
from shared.etag import check_if_match
from shared.events import SYSTEM, Actor, ResourceRef, new_event
from shared.outbox import write_event, write_events

log = logging.getLogger(__name__)
SOURCE = "scorecard"
_encode = msgspec.json.encode


def _rule_event(verb: str, actor: Actor, spec: AlertRuleSpec, data: dict):
    return new_event(
        f"scorecard.alert_rule.{verb}",
        source=SOURCE,
        actor=actor,
        resource=ResourceRef("alert_rule", spec.id),
        data=data,
    )


async def put_rule(
    pool: asyncpg.Pool, actor: Actor, rule_id: str, spec: AlertRuleSpec, if_match: str | None
) -> AlertRuleView:
    """Create or replace an alert rule (`If-Match` honoured on replace); an identical rule changes nothing."""
    if spec.id != rule_id:
        raise InputError.for_field("$.id", f"must be {rule_id!r} as in the path")
    async with transaction(pool) as conn:
        scorecard = await store.get_scorecard(conn, spec.scorecard)
        if scorecard is None:
            raise InputError.for_field("$.scorecard", f"no scorecard {spec.scorecard}")
        if isinstance(spec.condition, CheckPassRateDrop) and spec.condition.check not in {
            c.id for c in scorecard.spec.checks
        }:
            raise InputError.for_field("$.condition.check", f"scorecard {spec.scorecard} has no such check")
        current = await store.get_alert_rule(conn, rule_id, lock=True)
        if current is not None:
            check_if_match(if_match, current["etag"])
            if current["etag"] == alert_etag(spec):
                return await _view(conn, spec, current["etag"])
        etag = alert_etag(spec)
        await store.upsert_alert_rule(conn, rule_id, msgspec.to_builtins(spec), etag)
        verb = "created" if current is None else "updated"
        await write_event(conn, _rule_event(verb, actor, spec, {"rule": msgspec.to_builtins(spec)}))
        return AlertRuleView(spec, etag, [])


async def delete_rule(pool: asyncpg.Pool, actor: Actor, rule_id: str, if_match: str | None) -> None:
    async with transaction(pool) as conn:
        current = await store.get_alert_rule(conn, rule_id, lock=True)
        if current is None:
            raise NotFoundError(f"no alert rule {rule_id}")
        check_if_match(if_match, current["etag"])
        await store.delete_alert_rule(conn, rule_id)
        await write_event(conn, _rule_event("deleted", actor, msgspec.convert(current["spec"], AlertRuleSpec), {}))


async def _view(conn: asyncpg.Connection, spec: AlertRuleSpec, etag: str) -> AlertRuleView:
    return AlertRuleView(spec, etag, sorted(await store.firing_subjects(conn, spec.id)))


async def get_rule(pool: asyncpg.Pool, rule_id: str) -> AlertRuleView:
    async with pool.acquire() as conn:
        row = await store.get_alert_rule(conn, rule_id)
        if row is None:
            raise NotFoundError(f"no alert rule {rule_id}")
        return await _view(conn, msgspec.convert(row["spec"], AlertRuleSpec), row["etag"])


async def list_rules(pool: asyncpg.Pool) -> list[AlertRuleView]:
    async with pool.acquire() as conn:
        return [
            await _view(conn, msgspec.convert(r["spec"], AlertRuleSpec), r["etag"])
            for r in await store.list_alert_rules(conn)
        ]


async def _firing(conn: asyncpg.Connection, spec: AlertRuleSpec, now: dt.datetime) -> dict[str, float]:
    """Subjects whose condition holds now, with the value that makes it hold."""
    condition = spec.condition
    if isinstance(condition, GroupAverageBelow):
        groups = await store.rollup(conn, spec.scorecard, condition.group_by)
        return {
            str(g["key"]): g["average"] for g in groups if g["key"] is not None and g["average"] < condition.threshold
        }
    assert isinstance(condition, CheckPassRateDrop)
    current = await store.pass_rate(conn, spec.scorecard, condition.check, None)
    before = await store.pass_rate(conn, spec.scorecard, condition.check, now - dt.timedelta(days=condition.days))
    if current is None or before is None:
        return {}
    drop = round(100 * (before - current), 2)
    return {condition.check: drop} if drop >= condition.points else {}


async def evaluate_alerts(
    pool: asyncpg.Pool,
    webhook_url: str | None,
    now: dt.datetime | None = None,
    policy: webhook.RetryPolicy = webhook.DEFAULT_POLICY,
) -> list[Alert]:
    """Check every rule; emit `scorecard.alert.triggered` for subjects that started firing and queue their
    webhook delivery in the same transaction; the first attempt follows the commit, retries `webhook.py`'s loop."""
    now = now or dt.datetime.now(dt.UTC)
    triggered: list[Alert] = []
    async with transaction(pool) as conn:
        for row in await store.list_alert_rules(conn):
            spec = msgspec.convert(row["spec"], AlertRuleSpec)
            firing = await _firing(conn, spec, now)
            before = await store.firing_subjects(conn, spec.id)
            await store.set_firing(conn, spec.id, firing)
            triggered += [
                Alert(spec.id, spec.name, spec.scorecard, subject, value, spec.condition)
                for subject, value in sorted(firing.items())
                if subject not in before
            ]
        if triggered:
            await write_events(
                conn,
                [
                    new_event(
                        "scorecard.alert.triggered",
                        source=SOURCE,
                        actor=SYSTEM,
                        resource=ResourceRef("alert_rule", alert.rule),
                        data=msgspec.to_builtins(alert),
                    )
                    for alert in triggered
                ],
            )
            if webhook_url:
                await webhook.queue(conn, webhook_url, triggered)
    if triggered and webhook_url:
        await webhook.deliver_due(pool, policy)
    return triggered
