"""Cross-cutting behaviour: one trace across HTTP, outbox and consumer; every service's standard routes;
the scorecard consumer as a second durable consumer of every event."""

from __future__ import annotations

import importlib

import pytest
from opentelemetry.trace import SpanKind

from services.audit.app import DEFINITION as AUDIT
from services.audit.app import Settings as AuditSettings
from services.scorecard.app import DEFINITION as SCORECARD
from shared.authz import all_permissions
from shared.bus import publish_event
from shared.service import running_service
from tests.helpers import eventually, sample_event

SERVICE_MODULES = ["catalog", "identity_sync", "workflow", "scorecard", "audit", "plugin_proxy"]


async def test_one_trace_spans_request_relay_publish_and_audit_consume(make_settings, http, spans):
    async with running_service(AUDIT, make_settings(AuditSettings)) as audit:
        async with http.put(f"{audit.url}/api/audit/settings", json={"retention_days": 90}) as r:
            assert r.status == 200

        async def recorded():
            async with http.get(f"{audit.url}/api/audit/events", params={"type": "audit.settings"}) as r:
                return (await r.json())["items"]

        items = await eventually(recorded)
    trace_id = items[0]["trace_id"]
    in_trace = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]
    kinds = {(s.kind, s.name.split(" ")[0]) for s in in_trace}
    assert (SpanKind.SERVER, "PUT") in kinds, kinds
    assert (SpanKind.PRODUCER, "publish") in kinds, kinds
    assert (SpanKind.CONSUMER, "consume") in kinds, kinds
    by_id = {s.context.span_id: s for s in in_trace}
    consume = next(s for s in in_trace if s.kind == SpanKind.CONSUMER)
    publish = by_id[consume.parent.span_id]
    assert publish.kind == SpanKind.PRODUCER
    assert by_id[publish.parent.span_id].kind == SpanKind.SERVER
    assert any(s.name.startswith(("INSERT", "UPDATE", "SELECT")) or "postgresql" in s.name.lower() for s in in_trace), (
        "database spans are part of the trace"
    )


@pytest.mark.parametrize("module", SERVICE_MODULES)
async def test_every_service_serves_the_standard_routes(module, make_settings, anonymous_http, http):
    definition = importlib.import_module(f"services.{module}.app").DEFINITION
    async with running_service(definition, make_settings(definition.settings_type)) as svc:
        for path in ("/healthz", "/readyz"):
            async with anonymous_http.get(svc.url + path) as r:
                assert r.status == 200, (path, await r.text())
        async with anonymous_http.get(svc.url + "/metrics") as r:
            assert r.status == 200 and "idp_http_request_duration_seconds" in await r.text()
        async with anonymous_http.get(svc.url + "/openapi.json") as r:
            document = await r.json()
        assert document["openapi"] == "3.1.0"
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if "x-permission" not in operation:
                    continue
                assert operation["x-permission"] in all_permissions(), ("not in shared.authz.PERMISSIONS", path)
                url = svc.url + path.replace("{", "").replace("}", "")
                async with anonymous_http.request(method, url) as r:
                    assert r.status == 401, (method, path)


async def test_readiness_fails_when_the_database_is_unreachable(make_settings, anonymous_http):
    settings = make_settings(SCORECARD.settings_type)
    async with running_service(SCORECARD, settings) as svc:
        await svc.deps.pool.close()
        async with anonymous_http.get(svc.url + "/readyz") as r:
            assert r.status == 503 and (await r.json())["failures"]


async def test_scorecard_consumer_records_the_last_event_processed(make_settings, http):
    async with running_service(SCORECARD, make_settings(SCORECARD.settings_type)) as scorecard:
        async with http.get(f"{scorecard.url}/api/scorecard/consumer-progress") as r:
            assert r.status == 404 and r.content_type == "application/problem+json"
        events = [sample_event(i) for i in range(5)]
        for event in events + events[:2]:
            await publish_event(scorecard.deps.js, event)

        async def progress():
            async with http.get(f"{scorecard.url}/api/scorecard/consumer-progress") as r:
                body = await r.json()
                return body if r.status == 200 and body["events_seen"] == 5 else None

        body = await eventually(progress)
    assert body["last_event_id"] == events[-1].id and body["last_event_type"] == events[-1].type
