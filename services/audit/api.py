"""Audit HTTP routes: decode, call service.py, encode."""

from __future__ import annotations

from aiohttp import web

from services.audit import service
from services.audit.model import (
    EventPage,
    EventQuery,
    ExportQuery,
    SettingsUpdate,
    SettingsView,
    Stats,
    StatsQuery,
    VerifyResult,
)
from shared.authz import Visibility
from shared.etag import quoted
from shared.http import Routes, json_response, parse_query, principal_of, read_json
from shared.service import Deps

EXPORT_CONTENT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


ACCOUNT_WIDE = "account"
"""The chain and the retention settings are one for the whole installation: reading or changing them takes
the permission at the account scope."""


def routes(deps: Deps) -> Routes:
    pool, access = deps.pool, deps.access
    api = Routes(tag="audit")

    def visible(request: web.Request, permission: str) -> Visibility:
        return access.visibility(principal_of(request), permission)

    def require_account_wide(request: web.Request, permission: str) -> None:
        access.require_at(principal_of(request), permission, ACCOUNT_WIDE)

    @api.get(
        "/api/audit/events",
        summary="Query the audit trail, newest first",
        permission="audit_event_view",
        query=EventQuery,
        response=EventPage,
    )
    async def list_events(request: web.Request) -> web.Response:
        query = parse_query(request, EventQuery)
        return json_response(await service.list_events(pool, query, visible(request, "audit_event_view")))

    @api.get(
        "/api/audit/export",
        summary="Stream matching events as JSON lines or CSV",
        permission="audit_event_export",
        query=ExportQuery,
        response_content_type="application/x-ndjson",
    )
    async def export_events(request: web.Request) -> web.StreamResponse:
        query = parse_query(request, ExportQuery)
        response = web.StreamResponse(
            headers={
                "Content-Type": EXPORT_CONTENT_TYPES[query.format],
                "Content-Disposition": f'attachment; filename="audit.{query.format}"',
            }
        )
        await response.prepare(request)
        async for chunk in service.export_events(pool, query, visible(request, "audit_event_export")):
            await response.write(chunk)
        await response.write_eof()
        return response

    @api.get(
        "/api/audit/verify",
        summary="Verify the hash chain; reports the first broken or missing link",
        permission="audit_event_view",
        response=VerifyResult,
    )
    async def verify_chain(request: web.Request) -> web.Response:
        require_account_wide(request, "audit_event_view")
        return json_response(await service.verify_chain(pool))

    @api.get(
        "/api/audit/stats",
        summary="Event counts by day and type",
        permission="audit_event_view",
        query=StatsQuery,
        response=Stats,
    )
    async def event_stats(request: web.Request) -> web.Response:
        query = parse_query(request, StatsQuery)
        return json_response(await service.stats(pool, query, visible(request, "audit_event_view")))

    @api.get(
        "/api/audit/settings", summary="Retention settings", permission="audit_settings_view", response=SettingsView
    )
    async def get_settings(request: web.Request) -> web.Response:
        require_account_wide(request, "audit_settings_view")
        settings = await service.get_settings(pool)
        return json_response(settings, headers={"ETag": quoted(str(settings.version))})

    @api.put(
        "/api/audit/settings",
        summary="Change retention (honours If-Match)",
        permission="audit_settings_edit",
        body=SettingsUpdate,
        response=SettingsView,
    )
    async def put_settings(request: web.Request) -> web.Response:
        require_account_wide(request, "audit_settings_edit")
        body = await read_json(request, SettingsUpdate)
        settings = await service.update_settings(
            pool, principal_of(request).actor(), body, request.headers.get("If-Match")
        )
        return json_response(settings, headers={"ETag": quoted(str(settings.version))})

    return api
