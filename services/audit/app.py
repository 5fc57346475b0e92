"""Audit service wiring: settings and the service definition run by `python -m services.audit`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from services.audit import api, handlers
from shared.config import BaseSettings
from shared.service import ServiceDefinition, run_service


class Settings(BaseSettings, kw_only=True, forbid_unknown_fields=True):
    prune_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """How often retention pruning runs (`IDP_PRUNE_INTERVAL_SECONDS`)."""


DEFINITION = ServiceDefinition(
    name="audit",
    schema="audit",
    settings_type=Settings,
    routes=api.routes,
    migrations=Path(__file__).parent / "migrations",
    background=(handlers.consume_events, handlers.prune_periodically),
)


def main() -> None:
    run_service(DEFINITION)
