"""Scorecard service wiring: settings and the service definition run by `python -m services.scorecard`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import msgspec

from services.scorecard import api, handlers
from services.scorecard.files import LocalFiles
from shared.config import BaseSettings
from shared.http import Routes
from shared.service import Deps, ServiceDefinition, run_service


class Settings(BaseSettings, kw_only=True, forbid_unknown_fields=True):
    file_roots: str = ""
    """Directories file rules may read, separated by `:` (`IDP_FILE_ROOTS`); none by default."""
    schedule_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """How often time- and file-dependent checks run again (`IDP_SCHEDULE_INTERVAL_SECONDS`)."""
    alert_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """How often alert rules are checked (`IDP_ALERT_INTERVAL_SECONDS`)."""
    alert_webhook_url: str | None = None
    """Where triggered alerts are POSTed as JSON (`IDP_ALERT_WEBHOOK_URL`); none by default."""

    def files(self) -> LocalFiles:
        return LocalFiles(tuple(Path(p).expanduser() for p in self.file_roots.split(os.pathsep) if p))


def _routes(deps: Deps) -> Routes:
    return api.routes(deps, deps.settings.files())


async def consume_events(deps: Deps) -> None:
    await handlers.consume_events(deps, deps.settings.files())


async def run_jobs(deps: Deps) -> None:
    await handlers.run_jobs(deps, deps.settings.files())


async def sync_and_schedule(deps: Deps) -> None:
    await handlers.sync_and_schedule(deps, deps.settings.files(), deps.settings.schedule_interval_seconds)


async def evaluate_alerts(deps: Deps) -> None:
    settings: Settings = deps.settings
    await handlers.evaluate_alerts_periodically(deps, settings.alert_webhook_url, settings.alert_interval_seconds)


DEFINITION = ServiceDefinition(
    name="scorecard",
    schema="scorecard",
    settings_type=Settings,
    routes=_routes,
    migrations=Path(__file__).parent / "migrations",
    background=(consume_events, run_jobs, sync_and_schedule, evaluate_alerts),
)


def main() -> None:
    run_service(DEFINITION)
