"""Scorecard HTTP routes: decode, call service.py, encode."""

from __future__ import annotations

import msgspec
from aiohttp import web

from services.scorecard import alerts, service, webhook
from services.scorecard.model import (
    AlertDelivery,
    AlertDeliveryPage,
    AlertDeliveryQuery,
    AlertRuleList,
    AlertRuleSpec,
    AlertRuleView,
    CheckSpec,
    ConsumerProgress,
    CustomDataRequest,
    CustomDataResult,
    DeadLetterPage,
    DeadLetterQuery,
    DryRunRequest,
    DryRunResult,
    EntityRefQuery,
    EntityReport,
    ScorecardList,
    ScorecardSpec,
    ScorecardSummary,
    ScorecardView,
    SummaryQuery,
    Trend,
    TrendQuery,
)
from services.scorecard.rules import FileSource
from shared.bus import read_dead_letters
from shared.errors import InputError, input_error_from_validation
from shared.etag import quoted
from shared.http import Routes, json_response, parse_query, principal_of, read_json
from shared.service import Deps
from shared.yamlsafe import YamlError, load_yaml_documents

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
SCORECARD = "/api/scorecard/scorecards/{id}"
ALERT_RULE = "/api/scorecard/alert-rules/{id}"
DELIVERY = "/api/scorecard/alert-deliveries/{id}"


async def read_scorecard(request: web.Request) -> ScorecardSpec:
    """A scorecard body as JSON or, with a YAML content type, as one bounded YAML document."""
    if request.content_type not in YAML_TYPES:
        return await read_json(request, ScorecardSpec)
    try:
        documents = load_yaml_documents(await request.read())
    except YamlError as exc:
        raise InputError.for_field("$", f"malformed YAML: {exc}") from exc
    if len(documents) != 1:
        raise InputError.for_field("$", "expected exactly one YAML document")
    try:
        return msgspec.convert(documents[0], ScorecardSpec)
    except msgspec.ValidationError as exc:
        raise input_error_from_validation(exc) from exc


def _scorecard_response(view: ScorecardView, status: int = 200) -> web.Response:
    return json_response(view, status=status, headers={"ETag": quoted(view.etag)})


def routes(deps: Deps, files: FileSource | None, retry_policy: webhook.RetryPolicy) -> Routes:
    pool = deps.pool
    api = Routes(tag="scorecard")

    @api.post(
        "/api/scorecard/scorecards",
        summary="Create a scorecard (JSON or YAML); it is evaluated in the background",
        permission="scorecard_scorecard_create",
        body=ScorecardSpec,
        response=ScorecardView,
        status=201,
    )
    async def create_scorecard(request: web.Request) -> web.Response:
        spec = await read_scorecard(request)
        view = await service.create_scorecard(pool, principal_of(request).actor(), spec)
        return _scorecard_response(view, 201)

    @api.get(
        "/api/scorecard/scorecards",
        summary="Every scorecard",
        permission="scorecard_scorecard_view",
        response=ScorecardList,
    )
    async def list_scorecards(request: web.Request) -> web.Response:
        return json_response(ScorecardList(items=await service.list_scorecards(pool)))

    @api.get(SCORECARD, summary="One scorecard", permission="scorecard_scorecard_view", response=ScorecardView)
    async def get_scorecard(request: web.Request) -> web.Response:
        return _scorecard_response(await service.get_scorecard(pool, request.match_info["id"]))

    @api.put(
        SCORECARD,
        summary="Replace a scorecard and its checks (honours If-Match); changed checks are evaluated again",
        permission="scorecard_scorecard_edit",
        body=ScorecardSpec,
        response=ScorecardView,
    )
    async def replace_scorecard(request: web.Request) -> web.Response:
        spec = await read_scorecard(request)
        view = await service.replace_scorecard(
            pool, principal_of(request).actor(), request.match_info["id"], spec, request.headers.get("If-Match")
        )
        return _scorecard_response(view)

    @api.delete(
        SCORECARD,
        summary="Delete a scorecard and its results (honours If-Match)",
        permission="scorecard_scorecard_delete",
        status=204,
    )
    async def delete_scorecard(request: web.Request) -> web.Response:
        await service.delete_scorecard(
            pool, principal_of(request).actor(), request.match_info["id"], request.headers.get("If-Match")
        )
        return web.Response(status=204)

    @api.put(
        SCORECARD + "/checks/{check}",
        summary="Add or replace one check (If-Match: the scorecard's etag); it is evaluated again",
        permission="scorecard_scorecard_edit",
        body=CheckSpec,
        response=ScorecardView,
    )
    async def put_check(request: web.Request) -> web.Response:
        check = await read_json(request, CheckSpec)
        if check.id != request.match_info["check"]:
            raise InputError.for_field("$.id", f"must be {request.match_info['check']!r} as in the path")
        view = await service.put_check(
            pool, principal_of(request).actor(), request.match_info["id"], check, request.headers.get("If-Match")
        )
        return _scorecard_response(view)

    @api.delete(
        SCORECARD + "/checks/{check}",
        summary="Remove one check (If-Match: the scorecard's etag); its results go with it",
        permission="scorecard_scorecard_edit",
        response=ScorecardView,
    )
    async def delete_check(request: web.Request) -> web.Response:
        view = await service.delete_check(
            pool,
            principal_of(request).actor(),
            request.match_info["id"],
            request.match_info["check"],
            request.headers.get("If-Match"),
        )
        return _scorecard_response(view)

    @api.post(
        "/api/scorecard/dry-run",
        summary="Evaluate a draft scorecard against chosen entities without saving anything",
        permission="scorecard_scorecard_view",
        body=DryRunRequest,
        response=DryRunResult,
    )
    async def dry_run(request: web.Request) -> web.Response:
        body = await read_json(request, DryRunRequest)
        return json_response(await service.dry_run(pool, deps.nc, files, body))

    @api.post(
        "/api/scorecard/data",
        summary="Push custom values for entities, read by checks with `source: data`",
        permission="scorecard_data_create",
        body=CustomDataRequest,
        response=CustomDataResult,
    )
    async def push_data(request: web.Request) -> web.Response:
        body = await read_json(request, CustomDataRequest)
        return json_response(await service.push_custom_data(pool, principal_of(request).actor(), body))

    @api.get(
        "/api/scorecard/entities/{kind}/{namespace}/{name}",
        summary="Every scorecard of an entity: score, level, and each check with the value found",
        permission="scorecard_result_view",
        query=EntityRefQuery,
        response=EntityReport,
    )
    async def entity_report(request: web.Request) -> web.Response:
        info = request.match_info
        query = parse_query(request, EntityRefQuery)
        ref = f"{info['kind']}:{info['namespace']}/{info['name']}"
        return json_response(await service.entity_report(pool, query.scope, ref))

    @api.get(
        SCORECARD + "/summary",
        summary="Levels, pass rate per check and rollups per owner, system, domain or scope",
        permission="scorecard_result_view",
        query=SummaryQuery,
        response=ScorecardSummary,
    )
    async def scorecard_summary(request: web.Request) -> web.Response:
        query = parse_query(request, SummaryQuery)
        return json_response(await service.scorecard_summary(pool, request.match_info["id"], query.group_by))

    @api.get(
        SCORECARD + "/export",
        summary="Every entity's score, level and check statuses as CSV",
        permission="scorecard_result_view",
        response_content_type="text/csv",
    )
    async def export_csv(request: web.Request) -> web.StreamResponse:
        view = await service.get_scorecard(pool, request.match_info["id"])
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{view.spec.id}.csv"',
            }
        )
        await response.prepare(request)
        async for chunk in service.export_csv(pool, view):
            await response.write(chunk)
        await response.write_eof()
        return response

    @api.get(
        "/api/scorecard/trends",
        summary="Daily average score and pass rate of a scorecard, one owner group or one entity",
        permission="scorecard_result_view",
        query=TrendQuery,
        response=Trend,
    )
    async def trends(request: web.Request) -> web.Response:
        return json_response(await service.trend(pool, parse_query(request, TrendQuery)))

    @api.get(
        "/api/scorecard/alert-rules",
        summary="Every alert rule, with the subjects firing now",
        permission="scorecard_alert_view",
        response=AlertRuleList,
    )
    async def list_alert_rules(request: web.Request) -> web.Response:
        return json_response(AlertRuleList(items=await alerts.list_rules(pool)))

    @api.get(ALERT_RULE, summary="One alert rule", permission="scorecard_alert_view", response=AlertRuleView)
    async def get_alert_rule(request: web.Request) -> web.Response:
        view = await alerts.get_rule(pool, request.match_info["id"])
        return json_response(view, headers={"ETag": quoted(view.etag)})

    @api.put(
        ALERT_RULE,
        summary="Create or replace an alert rule (honours If-Match)",
        permission="scorecard_alert_edit",
        body=AlertRuleSpec,
        response=AlertRuleView,
    )
    async def put_alert_rule(request: web.Request) -> web.Response:
        body = await read_json(request, AlertRuleSpec)
        view = await alerts.put_rule(
            pool, principal_of(request).actor(), request.match_info["id"], body, request.headers.get("If-Match")
        )
        return json_response(view, headers={"ETag": quoted(view.etag)})

    @api.delete(
        ALERT_RULE, summary="Delete an alert rule (honours If-Match)", permission="scorecard_alert_edit", status=204
    )
    async def delete_alert_rule(request: web.Request) -> web.Response:
        await alerts.delete_rule(
            pool, principal_of(request).actor(), request.match_info["id"], request.headers.get("If-Match")
        )
        return web.Response(status=204)

    @api.get(
        "/api/scorecard/alert-deliveries",
        summary="Webhook deliveries of triggered alerts, newest first: pending (with the next attempt), delivered, "
        "failed (with the last error)",
        permission="scorecard_alert_view",
        query=AlertDeliveryQuery,
        response=AlertDeliveryPage,
    )
    async def list_alert_deliveries(request: web.Request) -> web.Response:
        return json_response(await webhook.list_deliveries(pool, parse_query(request, AlertDeliveryQuery)))

    @api.get(DELIVERY, summary="One webhook delivery", permission="scorecard_alert_view", response=AlertDelivery)
    async def get_alert_delivery(request: web.Request) -> web.Response:
        return json_response(await webhook.get_delivery(pool, request.match_info["id"]))

    @api.post(
        DELIVERY + "/retry",
        summary="Send a delivered or failed delivery again now, with fresh attempts; answers after the first",
        permission="scorecard_alert_edit",
        response=AlertDelivery,
    )
    async def retry_alert_delivery(request: web.Request) -> web.Response:
        actor = principal_of(request).actor()
        return json_response(await webhook.retry(pool, actor, request.match_info["id"], retry_policy))

    @api.get(
        "/api/scorecard/dead-letters",
        summary="Events the scorecard consumer gave up on (poison messages), oldest first",
        permission="scorecard_consumer_view",
        query=DeadLetterQuery,
        response=DeadLetterPage,
    )
    async def dead_letters(request: web.Request) -> web.Response:
        query = parse_query(request, DeadLetterQuery)
        items = await read_dead_letters(deps.js, service.CONSUMER, query.after, query.limit)
        return json_response(DeadLetterPage(items=items))

    @api.get(
        "/api/scorecard/consumer-progress",
        summary="The last event the scorecard consumer processed",
        permission="scorecard_consumer_view",
        response=ConsumerProgress,
    )
    async def get_consumer_progress(request: web.Request) -> web.Response:
        return json_response(await service.consumer_progress(deps.pool))

    return api
