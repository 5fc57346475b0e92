"""Scorecard benchmark: full evaluation of 5 scorecards of 10 checks, and catalog update → new score latency.

    python bench/scorecard.py --entities 100000 [--updates-per-second 100] [--seconds 30] [--runs 3]

Generates the shared organisation (../shared/bench/gen_entities.py) and writes it into the catalog's tables with
the catalog's own validation, relation, set-based store and stitching functions, 2,000 entities per transaction,
without the catalog's events (the scorecard reads the catalog over rpc, not from a flood of creations). Then,
with NATS, PostgreSQL, the catalog and the scorecard each their own process, `--runs` times on a fresh scorecard
schema (medians reported):

1. sync: time until the scorecard service has read every entity from the catalog over `idp.rpc.catalog.page`;
2. full evaluation: the 5 scorecards are created through the API and the time until every evaluation job is
   done (every applicable (entity, check) pair evaluated and stored) is measured; per-check evaluations/s;
3. latency: `--updates-per-second` entity updates through the catalog's HTTP API (each flips the lifecycle of a
   component, so its score changes), each timed until its `scorecard.score.changed` event (written in the same
   transaction as the new score) arrives: from the request, from the catalog's response, and from the catalog's
   `catalog.entity.updated` event reaching NATS (the scorecard service's own part); p50/p99;
4. the scorecard's part at the offered rate whatever the catalog sustains: as many `catalog.entity.updated` events
   (a lifecycle flip each, as the catalog writes them) published straight to the stream at
   `--updates-per-second`, each timed from its publication to its `scorecard.score.changed`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import stack
import yaml

from services.catalog import kinds as catalog_kinds
from services.catalog import store as catalog_store
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.entity_ref import ref_of
from services.catalog.model import StoredEntity, document_etag
from services.catalog.resolution import write_relations
from services.catalog.service import prepare_document
from services.catalog.stitching import restitch
from shared import db
from shared.bus import publish_event
from shared.events import Actor, ResourceRef, decode_event, new_event

GENERATOR = stack.ROOT.parent / "shared" / "bench" / "gen_entities.py"


def check(check_id: str, rule: dict[str, Any], weight: float = 1, level: str = "Bronze") -> dict[str, Any]:
    return {"id": check_id, "name": check_id.replace("-", " "), "rule": rule, "weight": weight, "level": level}


COMMON_CHECKS = [
    check("has-owner", {"op": "exists", "path": "spec.owner"}, 2),
    check(
        "owner-is-group",
        {"op": "relation", "type": "ownedBy", "where": {"op": "equals", "path": "kind", "value": "Group"}},
        2,
    ),
    check("has-description", {"op": "exists", "path": "metadata.description"}),
    check("tagged", {"op": "count", "path": "metadata.tags", "min": 1}),
    check("name-is-kebab", {"op": "matches", "path": "metadata.name", "pattern": "^[a-z0-9][a-z0-9-]*$"}),
    check(
        "in-a-system",
        {"op": "relation", "type": "partOf", "where": {"op": "equals", "path": "kind", "value": "System"}},
        level="Silver",
    ),
    check(
        "not-deprecated",
        {"op": "not", "rule": {"op": "equals", "path": "spec.lifecycle", "value": "deprecated"}},
        level="Silver",
    ),
    check(
        "has-title-or-links",
        {
            "op": "any",
            "rules": [{"op": "exists", "path": "metadata.title"}, {"op": "count", "path": "metadata.links", "min": 1}],
        },
        level="Silver",
    ),
    check("coverage", {"op": "gte", "path": "coverage", "value": 80, "source": "data"}, level="Gold"),
    check(
        "few-owner-changes",
        {"op": "events", "type": "catalog.entity.updated", "field": "spec.owner", "within_days": 90, "max": 2},
        level="Gold",
    ),
]
SPECIFIC = {
    "component": [
        check("production", {"op": "equals", "path": "spec.lifecycle", "value": "production"}, 3, "Gold"),
        check(
            "no-deprecated-deps",
            {
                "op": "relation",
                "type": "dependsOn",
                "where": {"op": "equals", "path": "spec.lifecycle", "value": "deprecated"},
                "max": 0,
            },
            level="Silver",
        ),
        check(
            "provides-documented-api",
            {"op": "relation", "type": "providesApi", "where": {"op": "exists", "path": "spec.definition"}},
            level="Gold",
        ),
    ],
    "api": [
        check(
            "known-type",
            {"op": "in", "path": "spec.type", "values": ["openapi", "grpc", "asyncapi", "graphql"]},
            level="Silver",
        )
    ],
}


def scorecards() -> list[dict[str, Any]]:
    """5 scorecards of 10 checks over different entity sets."""
    levels = ["Bronze", "Silver", "Gold"]
    component = COMMON_CHECKS[:7] + SPECIFIC["component"]
    return [
        {
            "id": "component-readiness",
            "name": "Component readiness",
            "owner": "platform",
            "levels": levels,
            "filter": {"kinds": ["Component"]},
            "checks": component,
        },
        {
            "id": "service-maturity",
            "name": "Service maturity",
            "owner": "platform",
            "levels": levels,
            "filter": {"kinds": ["Component"], "types": ["service"]},
            "checks": [*COMMON_CHECKS[:6], *component[7:], COMMON_CHECKS[8]],
        },
        {
            "id": "api-quality",
            "name": "API quality",
            "owner": "platform",
            "levels": levels,
            "filter": {"kinds": ["API"]},
            "checks": [*COMMON_CHECKS[:9], *SPECIFIC["api"]],
        },
        {
            "id": "ownership",
            "name": "Ownership everywhere",
            "owner": "platform",
            "levels": levels,
            "filter": {"kinds": ["Component", "API", "Resource", "System"]},
            "checks": COMMON_CHECKS,
        },
        {
            "id": "resource-hygiene",
            "name": "Resource hygiene",
            "owner": "platform",
            "levels": levels,
            "filter": {"kinds": ["Resource"]},
            "checks": COMMON_CHECKS,
        },
    ]


def read_documents(data: Path) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    documents = []
    for path in sorted(data.glob("entities-*.yaml")):
        documents += [d for d in yaml.load_all(path.read_text(), Loader=loader) if d]
    return documents


async def load_catalog(database_url: str, documents: list[dict[str, Any]]) -> int:
    """Write entities and relations with the catalog's own functions and stitch them, 2,000 per transaction."""
    pool = await db.create_pool(database_url, CATALOG.schema, size=2)
    await db.apply_migrations(pool, CATALOG.schema, CATALOG.migrations)
    count = 0
    try:
        for start in range(0, len(documents), 2000):
            async with db.transaction(pool) as conn:
                kinds = await catalog_kinds.load(conn)
                entities, emitted = [], []
                for raw in documents[start : start + 2000]:
                    document, relations = prepare_document(raw, kinds)
                    entity = StoredEntity(
                        str(uuid.uuid4()),
                        "account",
                        str(ref_of(document)),
                        document,
                        document_etag(document),
                        1,
                    )
                    entities.append(entity)
                    emitted.append((entity.uid, entity.ref, relations))
                await catalog_store.insert_entities(conn, entities)
                stale = await write_relations(conn, "account", emitted)
                await restitch(conn, stale | {("account", entity.ref) for entity in entities})
                count += len(entities)
    finally:
        await pool.close()
    return count


async def wait_until(condition, timeout: float, interval: float = 0.2) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if await condition():
            return time.perf_counter() - started
        await asyncio.sleep(interval)
    raise TimeoutError("condition not met")


async def measure(args: argparse.Namespace, servers: stack.Servers, tmp: Path, documents: list[dict]) -> dict:
    started = time.perf_counter()
    loaded = await load_catalog(servers.database_url, documents)
    load_s = time.perf_counter() - started
    catalog = stack.start_service("catalog", servers, tmp / "catalog.log", IDP_REFRESH_INTERVAL_SECONDS="86400")
    components = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Component"}
    runs = []
    try:
        for run in range(args.runs):
            runs.append(await measure_run(args, servers, tmp, catalog.url, loaded, components, run))
    finally:
        catalog.stop()
    summary = {
        key: statistics.median(r[key] for r in runs)
        for key in ("sync_s", "full_evaluation_s", "check_evaluations_per_s")
    }
    for key in ("request_to_score", "catalog_response_to_score", "catalog_event_to_score", "catalog_put"):
        for quantile in ("p50_ms", "p99_ms"):
            summary[f"{key}_{quantile}"] = statistics.median(r["update_to_score"][key][quantile] for r in runs)
    for quantile in ("p50_ms", "p99_ms"):
        summary[f"direct_event_to_score_{quantile}"] = statistics.median(
            r["direct_event_to_score"]["event_to_score"][quantile] for r in runs
        )
    return {"entities": loaded, "catalog_load_s": round(load_s, 1), "median": summary, "runs": runs}


async def measure_run(
    args: argparse.Namespace,
    servers: stack.Servers,
    tmp: Path,
    catalog_url: str,
    loaded: int,
    components: dict[str, dict],
    run: int,
) -> dict[str, Any]:
    """One run on a fresh scorecard schema: sync, full evaluation, update latency."""
    db_conn = await asyncpg.connect(servers.database_url)
    await db_conn.execute("DROP SCHEMA IF EXISTS scorecard CASCADE")
    started = time.perf_counter()
    scorecard = stack.start_service(
        "scorecard", servers, tmp / "scorecard.log", IDP_DB_POOL_SIZE="4", IDP_SCHEDULE_INTERVAL_SECONDS="86400"
    )
    try:

        async def synced() -> bool:
            return await db_conn.fetchval("SELECT count(*) FROM scorecard.entities") >= loaded

        sync_s = time.perf_counter() - started + await wait_until(synced, 1800)
        headers = {"Authorization": f"Bearer {stack.DEV_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            started = time.perf_counter()
            for card in scorecards():
                async with http.post(f"{scorecard.url}/api/scorecard/scorecards", json=card) as r:
                    assert r.status == 201, await r.text()

            async def evaluated() -> bool:
                return await db_conn.fetchval("SELECT count(*) FROM scorecard.evaluation_jobs") == 0

            evaluation_s = await wait_until(evaluated, 3600, interval=0.5)
            pairs = await db_conn.fetchval("SELECT count(*) FROM scorecard.results")
            scores = await db_conn.fetchval("SELECT count(*) FROM scorecard.scores")
            latency = await update_latency(args, servers, http, catalog_url, components, seed=run)
            direct = await direct_latency(args, servers, db_conn, components, seed=run)
    finally:
        await db_conn.close()
        scorecard.stop()
    return {
        "sync_s": round(sync_s, 1),
        "full_evaluation_s": round(evaluation_s, 1),
        "results": pairs,
        "scores": scores,
        "check_evaluations_per_s": round(pairs / evaluation_s),
        "update_to_score": latency,
        "direct_event_to_score": direct,
    }


async def update_latency(
    args, servers, http, catalog_url: str, components: dict[str, dict], seed: int
) -> dict[str, Any]:
    """Flip components' lifecycle at a steady rate; time each until its `scorecard.score.changed` arrives.
    `components` holds their current documents and is updated."""
    count = min(len(components), int(args.updates_per_second * args.seconds))
    chosen = random.Random(seed).sample(sorted(components), count)
    sent: dict[str, float] = {}
    committed: dict[str, float] = {}
    published: dict[str, float] = {}
    scored: dict[str, float] = {}
    all_scored = asyncio.Event()
    nc = await nats.connect(servers.nats_url)

    async def on_score(msg) -> None:
        event = decode_event(msg.data)
        ref = event.resource.id
        if ref in sent and ref not in scored:
            scored[ref] = time.perf_counter()
            if len(scored) == len(chosen):
                all_scored.set()

    async def on_update(msg) -> None:
        ref = decode_event(msg.data).resource.id
        if ref in sent and ref not in published:
            published[ref] = time.perf_counter()

    await nc.subscribe("idp.evt.scorecard.score.changed", cb=on_score)
    await nc.subscribe("idp.evt.catalog.entity.updated", cb=on_update)

    async def update(name: str) -> None:
        document = components[name]
        flipped = {**document, "spec": {**document["spec"]}}
        flipped["spec"]["lifecycle"] = (
            "experimental" if document["spec"].get("lifecycle") == "production" else "production"
        )
        ref = f"component:default/{name}"
        sent[ref] = time.perf_counter()
        async with http.put(f"{catalog_url}/api/catalog/entities/by-name/component/default/{name}", json=flipped) as r:
            assert r.status == 200, await r.text()
        committed[ref] = time.perf_counter()
        components[name] = flipped

    offered_s = await paced(chosen, update, args.updates_per_second)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_scored.wait(), 60)
    await nc.close()
    return {
        "updates": len(chosen),
        "achieved_updates_per_s": round(len(chosen) / offered_s, 1),
        "scored": len(scored),
        "request_to_score": percentiles([scored[r] - sent[r] for r in scored]),
        "catalog_response_to_score": percentiles([scored[r] - committed[r] for r in scored]),
        "catalog_put": percentiles([committed[r] - sent[r] for r in committed]),
        "catalog_event_to_score": percentiles([scored[r] - published[r] for r in scored if r in published]),
    }


async def direct_latency(args, servers, db_conn, components: dict[str, dict], seed: int) -> dict[str, Any]:
    """Publish lifecycle flips of components as `catalog.entity.updated` events at the offered rate; time each
    until its `scorecard.score.changed`. The catalog is not told: the projection differs from it until the next
    run's sync, and `components` keeps the catalog's view."""
    count = min(len(components), int(args.updates_per_second * args.seconds))
    chosen = {
        f"component:default/{name}": name for name in random.Random(seed + 1000).sample(sorted(components), count)
    }
    rows = await db_conn.fetch(
        "SELECT uid::text AS uid, ref FROM scorecard.entities WHERE ref = ANY($1::text[])", list(chosen)
    )
    uids = {r["ref"]: r["uid"] for r in rows}
    sent: dict[str, float] = {}
    scored: dict[str, float] = {}
    all_scored = asyncio.Event()
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream()

    async def on_score(msg) -> None:
        ref = decode_event(msg.data).resource.id
        if ref in sent and ref not in scored:
            scored[ref] = time.perf_counter()
            if len(scored) == len(chosen):
                all_scored.set()

    await nc.subscribe("idp.evt.scorecard.score.changed", cb=on_score)

    async def publish(ref: str) -> None:
        before = components[chosen[ref]]["spec"].get("lifecycle")
        after = "experimental" if before == "production" else "production"
        event = new_event(
            "catalog.entity.updated",
            source="catalog",
            actor=Actor("user", "bench"),
            resource=ResourceRef("entity", ref),
            data={"uid": uids[ref], "changes": {"spec.lifecycle": {"before": before, "after": after}}, "generation": 1},
        )
        sent[ref] = time.perf_counter()
        await publish_event(js, event)

    offered_s = await paced(chosen, publish, args.updates_per_second)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_scored.wait(), 60)
    await nc.close()
    return {
        "events": len(chosen),
        "achieved_events_per_s": round(len(chosen) / offered_s, 1),
        "scored": len(scored),
        "event_to_score": percentiles([scored[r] - sent[r] for r in scored]),
    }


async def paced(items: list[str], start: Callable[[str], Awaitable[None]], per_second: float) -> float:
    """`start(item)` for each item at a steady rate, without waiting for one to finish before the next; the seconds
    until all have finished."""
    started = time.perf_counter()
    tasks = []
    for i, item in enumerate(items):
        await asyncio.sleep(max(0.0, started + i / per_second - time.perf_counter()))
        tasks.append(asyncio.create_task(start(item)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


def percentiles(seconds: list[float]) -> dict[str, int | None]:
    values = sorted(seconds)
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(statistics.median(values) * 1000),
        "p99_ms": round(values[max(0, int(len(values) * 0.99) - 1)] * 1000),
        "max_ms": round(values[-1] * 1000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--updates-per-second", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--runs", type=int, default=3, help="runs on the same catalog; medians are reported")
    parser.add_argument("--keep-logs", help="a directory to copy the services' logs to")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idp-bench-scorecard-") as tmp:
        data = Path(tmp) / "entities"
        subprocess.run(
            [sys.executable, str(GENERATOR), str(args.entities), str(data)], check=True, stdout=subprocess.DEVNULL
        )
        documents = [d for d in read_documents(data) if d.get("kind") != "Location"]
        with stack.servers(Path(tmp)) as servers:
            result = asyncio.run(measure(args, servers, Path(tmp), documents))
        if args.keep_logs:
            for log in Path(tmp).glob("*.log"):
                (Path(args.keep_logs) / log.name).write_bytes(log.read_bytes())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
