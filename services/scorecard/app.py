"""Scorecard service wiring."""

from __future__ import annotations

from pathlib import Path

from services.scorecard import api, handlers
from shared.config import BaseSettings
from shared.service import ServiceDefinition, run_service

DEFINITION = ServiceDefinition(
    name="scorecard",
    schema="scorecard",
    settings_type=BaseSettings,
    routes=api.routes,
    migrations=Path(__file__).parent / "migrations",
    background=(handlers.consume_events,),
)


def main() -> None:
    run_service(DEFINITION)
