"""Scorecard service wiring: settings and the service definition run by `python -m services.scorecard`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import msgspec

from services.scorecard import api, handlers
from services.scorecard.files import MAX_FILE_BYTES, LocalFiles, ProxyFiles, RepositoryFiles
from services.scorecard.webhook import RetryPolicy
from shared.http import Routes
from shared.repositories import RepositorySettings
from shared.secretref import SecretResolver
from shared.service import Deps, ServiceDefinition, run_service


class Settings(RepositorySettings, kw_only=True, forbid_unknown_fields=True):
    file_roots: str = ""
    """Directories file rules may read, separated by `:` (`IDP_FILE_ROOTS`); none by default."""
    schedule_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """How often time- and file-dependent checks run again (`IDP_SCHEDULE_INTERVAL_SECONDS`)."""
    alert_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    """How often alert rules are checked (`IDP_ALERT_INTERVAL_SECONDS`)."""
    alert_webhook_url: str | None = None
    """Where triggered alerts are POSTed as JSON (`IDP_ALERT_WEBHOOK_URL`); none by default."""
    alert_webhook_max_attempts: Annotated[int, msgspec.Meta(ge=1, le=50)] = 10
    """Attempts of one delivery before it is `failed` (`IDP_ALERT_WEBHOOK_MAX_ATTEMPTS`)."""
    alert_webhook_backoff_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """Delay after a delivery's first failed attempt, doubling (with jitter) up to 10 minutes
    (`IDP_ALERT_WEBHOOK_BACKOFF_SECONDS`)."""
    alert_webhook_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Time allowed for one delivery attempt (`IDP_ALERT_WEBHOOK_TIMEOUT_SECONDS`)."""
    file_max_bytes: Annotated[int, msgspec.Meta(ge=1)] = MAX_FILE_BYTES
    """Largest file a rule reads; a larger one makes the rule `unknown` (`IDP_FILE_MAX_BYTES`)."""
    file_fetch_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Time allowed for one file read through the proxy (`IDP_FILE_FETCH_TIMEOUT_SECONDS`)."""

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.alert_webhook_max_attempts,
            backoff_seconds=self.alert_webhook_backoff_seconds,
            timeout_seconds=self.alert_webhook_timeout_seconds,
        )

    def local_files(self) -> LocalFiles:
        return LocalFiles(
            tuple(Path(p).expanduser() for p in self.file_roots.split(os.pathsep) if p), self.file_max_bytes
        )


@contextlib.asynccontextmanager
async def open_files(deps: Deps) -> AsyncIterator[RepositoryFiles]:
    """The file source: `file:` locations under the file roots; `url:` ones through the proxy when configured."""
    settings: Settings = deps.settings
    local = settings.local_files()
    secrets = SecretResolver()
    proxy = settings.repository_proxy(
        secrets, max_bytes=settings.file_max_bytes, timeout=settings.file_fetch_timeout_seconds
    )
    files = RepositoryFiles(local, ProxyFiles(proxy) if proxy is not None else None)
    try:
        yield files
    finally:
        await files.close()
        await secrets.close()


def _routes(deps: Deps) -> Routes:
    return api.routes(deps, deps.context, deps.settings.retry_policy())


async def consume_events(deps: Deps) -> None:
    await handlers.consume_events(deps, deps.context)


async def run_jobs(deps: Deps) -> None:
    await handlers.run_jobs(deps, deps.context)


async def sync_and_schedule(deps: Deps) -> None:
    await handlers.sync_and_schedule(deps, deps.context, deps.settings.schedule_interval_seconds)


async def evaluate_alerts(deps: Deps) -> None:
    settings: Settings = deps.settings
    await handlers.evaluate_alerts_periodically(
        deps, settings.alert_webhook_url, settings.retry_policy(), settings.alert_interval_seconds
    )


DEFINITION = ServiceDefinition(
    name="scorecard",
    schema="scorecard",
    settings_type=Settings,
    routes=_routes,
    migrations=Path(__file__).parent / "migrations",
    background=(consume_events, run_jobs, sync_and_schedule, evaluate_alerts),
    open_context=open_files,
)


def main() -> None:
    run_service(DEFINITION)
