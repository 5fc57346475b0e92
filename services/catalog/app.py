"""Catalog service wiring: settings and the service definition run by `python -m services.catalog`."""

from __future__ import annotations

from pathlib import Path

from services.catalog import api
from shared.config import BaseSettings
from shared.service import ServiceDefinition, run_service

DEFINITION = ServiceDefinition(
    name="catalog",
    schema="catalog",
    settings_type=BaseSettings,
    routes=api.routes,
    migrations=Path(__file__).parent / "migrations",
)


def main() -> None:
    run_service(DEFINITION)
