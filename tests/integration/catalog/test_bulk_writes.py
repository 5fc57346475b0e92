"""The set-based write path: a location read in several batches, one stitching pass (in several chunks) at the
end, one event per entity change; the ingestion API's batch on the same machinery; entities stored before 0006
stitched at start."""

from __future__ import annotations

import asyncio
import collections
import gc

import msgspec
import pytest_asyncio

from services.catalog import ingestion, stitching, store
from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from services.catalog.query import build_search_rows
from shared.garbage_collection import DEFERRED_OLDEST_THRESHOLD
from shared.service import running_service
from tests.helpers import eventually


def document(kind: str, name: str, spec: str) -> str:
    return f"apiVersion: backstage.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"


COMPONENTS = [f"svc-{i}" for i in range(5)]
# The components come before the group that owns them and depend on each other across batches.
YAML = "---\n".join(
    [
        *(
            document("Component", name, f"{{type: service, lifecycle: production, owner: team-a, dependsOn: "
                                        f"[component:{COMPONENTS[(i + 1) % 5]}]}}")
            for i, name in enumerate(COMPONENTS)
        ),
        document("Group", "team-a", "{type: team, children: []}"),
    ]
)  # fmt: skip


@pytest_asyncio.fixture
async def catalog(make_settings, tmp_path, monkeypatch):
    monkeypatch.setattr(ingestion, "READ_BATCH", 2)
    monkeypatch.setattr(stitching, "STITCH_BATCH", 2)
    monkeypatch.setattr(stitching, "MERGE_ALONGSIDE", 1)  # bulk writes merge index entries alongside
    (tmp_path / "catalog-info.yaml").write_text(YAML)
    settings = make_settings(CatalogSettings, file_location_roots=str(tmp_path), refresh_interval_seconds=3600)
    async with running_service(CATALOG, settings) as service:
        yield service


async def register(http, catalog, tmp_path) -> dict:
    target = str(tmp_path / "catalog-info.yaml")
    async with http.post(f"{catalog.url}/api/catalog/locations", json={"type": "file", "target": target}) as r:
        body = await r.json()
        assert r.status == 201, body
        return body


async def entity(http, catalog, kind: str, name: str) -> dict:
    async with http.get(f"{catalog.url}/api/catalog/entities/by-name/{kind}/default/{name}") as r:
        assert r.status == 200
        return await r.json()


async def event_counts(catalog) -> collections.Counter:
    async with catalog.deps.pool.acquire() as conn:
        rows = await conn.fetch("SELECT subject FROM outbox")
    return collections.Counter(r["subject"].removeprefix("idp.evt.") for r in rows)


async def test_relations_across_batches_are_stitched_on_both_ends(catalog, http, tmp_path):
    await register(http, catalog, tmp_path)
    group = await entity(http, catalog, "group", "team-a")
    assert group["relations"] == [{"type": "ownerOf", "targetRef": f"component:default/{n}"} for n in COMPONENTS]
    first = await entity(http, catalog, "component", "svc-0")
    assert first["relations"] == [
        {"type": "dependencyOf", "targetRef": "component:default/svc-4"},
        {"type": "dependsOn", "targetRef": "component:default/svc-1"},
        {"type": "ownedBy", "targetRef": "group:default/team-a"},
    ]
    async with http.get(
        f"{catalog.url}/api/catalog/entities", params={"filter": "relations.dependencyof=component:default/svc-4"}
    ) as r:
        assert [e["metadata"]["name"] for e in await r.json()] == ["svc-0"]
    counts = await event_counts(catalog)
    # Five components, their group and the registered location's generated Location entity.
    assert counts["catalog.entity.created"] == 7 and counts["catalog.location.added"] == 1


async def test_a_location_read_and_each_of_its_phases_are_spans_of_the_request_trace(catalog, http, tmp_path, spans):
    await register(http, catalog, tmp_path)
    finished = spans.get_finished_spans()
    (read,) = [s for s in finished if s.name == "catalog.location.read"]
    assert read.attributes["catalog.entities.created"] == 7 and read.attributes["catalog.location.errors"] == 0
    phases = [
        s
        for s in finished
        if s.name.startswith("catalog.location.read.")
        and s.parent is not None
        and s.parent.span_id == read.context.span_id
    ]
    assert [s.name.rpartition(".")[2] for s in sorted(phases, key=lambda s: s.start_time)] == [
        "batches",
        "orphans",
        "stitch",
        "events",
    ]
    assert next(s for s in phases if s.name.endswith("stitch")).attributes["catalog.entities.stitched"] == 7
    # Under the request's own span: one trace from the HTTP request down to each phase's SQL.
    assert read.parent is not None and read.context.trace_id == read.parent.trace_id


async def test_a_location_read_stages_its_events_and_writes_them_in_order(catalog, http, tmp_path):
    """The read's events reach the outbox at its end, in the order of the writes, before the location's own event;
    a second read (here a refresh) stages again."""
    await register(http, catalog, tmp_path)
    (tmp_path / "catalog-info.yaml").write_text(
        YAML.replace("metadata: {name: svc-4}", "metadata: {name: svc-4, title: Four}")
    )
    async with http.post(f"{catalog.url}/api/catalog/refresh", json={"entityRef": "component:svc-1"}) as r:
        assert r.status == 200
    async with catalog.deps.pool.acquire() as conn:
        rows = await conn.fetch("SELECT subject, payload FROM outbox ORDER BY seq")
    events = [(r["subject"].removeprefix("idp.evt.catalog."), msgspec.json.decode(r["payload"])) for r in rows]
    created = [event["resource"]["id"] for subject, event in events if subject == "entity.created"]
    # The registered location's generated Location entity is emitted first.
    assert created[0].startswith("location:default/generated-")
    assert created[1:] == [f"component:default/{name}" for name in COMPONENTS] + ["group:default/team-a"]
    assert [subject for subject, _ in events] == ["entity.created"] * 7 + ["location.added", "entity.updated"]


async def test_a_location_read_leaves_no_pending_index_entries(catalog, http, tmp_path):
    """The GIN indexes' pending lists are merged before the read commits, so no reader scans them."""
    await register(http, catalog, tmp_path)
    async with catalog.deps.pool.acquire() as conn:
        for index in store.GIN_INDEXES:
            assert await conn.fetchval("SELECT gin_clean_pending_list($1::regclass)", index) == 0, index


async def test_index_entries_of_an_uncommitted_write_are_merged_from_another_connection(catalog, http, tmp_path):
    """What `merging_pending_entries` relies on: the pending entries a transaction wrote can be merged by another
    backend before it commits, and the write then commits and is found through the index as usual."""
    await register(http, catalog, tmp_path)
    pool = catalog.deps.pool
    async with pool.acquire() as writer, writer.transaction():
        await store.defer_index_merges(writer)
        await writer.execute(
            "UPDATE entities SET search_tokens = search_tokens || ARRAY['merged.by' || chr(31) || 'other']"
        )
        async with store.merging_pending_entries(pool, pause=0.01) as progress:
            for _ in range(500):
                if progress.pages:
                    break
                await asyncio.sleep(0.01)
        assert progress.pages > 0
        assert await writer.fetchval("SELECT gin_clean_pending_list('entities_search_tokens'::regclass)") == 0
    async with http.get(f"{catalog.url}/api/catalog/entities", params={"filter": "merged.by=other"}) as r:
        assert len(await r.json()) == 7  # the five components, their group and the generated Location


async def test_a_refresh_writes_only_what_changed_with_one_event_each(catalog, http, tmp_path):
    await register(http, catalog, tmp_path)
    before = await entity(http, catalog, "component", "svc-3")
    changed = YAML.replace("metadata: {name: svc-3}", "metadata: {name: svc-3, title: Three}")
    (tmp_path / "catalog-info.yaml").write_text(changed.split("---\n", 1)[1])  # svc-0 is no longer emitted
    async with http.post(f"{catalog.url}/api/catalog/refresh", json={"entityRef": "component:svc-1"}) as r:
        assert r.status == 200
    after = await entity(http, catalog, "component", "svc-3")
    assert after["metadata"]["title"] == "Three" and after["metadata"]["etag"] != before["metadata"]["etag"]
    orphan = await entity(http, catalog, "component", "svc-0")
    assert orphan["metadata"]["annotations"]["backstage.io/orphan"] == "true"
    counts = await event_counts(catalog)
    assert counts["catalog.entity.updated"] == 1 and counts["catalog.entity.orphaned"] == 1


async def test_an_ingest_batch_naming_an_entity_twice_applies_both_in_order(catalog, http, tmp_path):
    await register(http, catalog, tmp_path)
    items = [
        {"entityRef": "component:svc-2", "properties": {"metadata.annotations.a": "1", "spec.lifecycle": "beta"}},
        {"entityRef": "component:svc-1", "properties": {"metadata.annotations.a": "1"}},
        {"entityRef": "component:svc-2", "properties": {"spec.lifecycle": "deprecated"}},
    ]
    async with http.post(f"{catalog.url}/api/catalog/ingest", json={"items": items}) as r:
        assert await r.json() == {"updated": 3, "unchanged": 0}
    served = await entity(http, catalog, "component", "svc-2")
    assert served["metadata"]["annotations"]["a"] == "1" and served["spec"]["lifecycle"] == "deprecated"
    assert (await event_counts(catalog))["catalog.entity.updated"] == 2  # one per entity changed
    async with catalog.deps.pool.acquire() as conn:  # written like a location read: index entries merged at commit
        for index in store.GIN_INDEXES:
            assert await conn.fetchval("SELECT gin_clean_pending_list($1::regclass)", index) == 0, index
        # Only the changed search rows were replaced; what is left is exactly the served entity's rows, once each.
        query = "SELECT key, value, original_value FROM search WHERE entity_uid = $1"
        stored = [tuple(row) for row in await conn.fetch(query, served["metadata"]["uid"])]
    assert sorted(stored, key=repr) == sorted(build_search_rows(served), key=repr)
    assert ("spec.lifecycle", "deprecated", "deprecated") in stored and ("spec.lifecycle", "beta", "beta") not in stored


async def test_entities_stored_before_served_json_was_kept_are_stitched(catalog, http, tmp_path):
    await register(http, catalog, tmp_path)
    expected = await entity(http, catalog, "group", "team-a")
    async with catalog.deps.pool.acquire() as conn:
        await conn.execute("UPDATE entities SET final_entity = NULL")

    async def unserved() -> bool:  # once the write's notice has dropped the by-name cache (read_cache.py)
        async with http.get(f"{catalog.url}/api/catalog/entities/by-name/group/default/team-a") as r:
            return r.status == 404

    await eventually(unserved)
    await stitching.stitch_unstitched(catalog.deps.pool)
    assert await entity(http, catalog, "group", "team-a") == expected


async def test_a_location_read_runs_without_full_garbage_collections(catalog, http, tmp_path, monkeypatch):
    thresholds = []
    write_entities = ingestion.write_entities

    async def recording(*args, **kwargs):
        thresholds.append(gc.get_threshold())
        return await write_entities(*args, **kwargs)

    monkeypatch.setattr(ingestion, "write_entities", recording)
    before = gc.get_threshold()
    await register(http, catalog, tmp_path)
    assert thresholds and all(t[2] == DEFERRED_OLDEST_THRESHOLD for t in thresholds)
    assert gc.get_threshold() == before
