"""Scorecard HTTP routes."""

from __future__ import annotations

from aiohttp import web

from services.scorecard import service
from services.scorecard.model import ConsumerProgress
from shared.http import Routes, json_response
from shared.service import Deps


def routes(deps: Deps) -> Routes:
    api = Routes(tag="scorecard")

    @api.get(
        "/api/scorecard/consumer-progress",
        summary="The last event the scorecard consumer processed",
        permission="scorecard_consumer_view",
        response=ConsumerProgress,
    )
    async def get_consumer_progress(request: web.Request) -> web.Response:
        return json_response(await service.consumer_progress(deps.pool))

    return api
