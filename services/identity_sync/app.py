"""Identity-sync service wiring: settings and the service definition run by `python -m services.identity_sync`."""

from __future__ import annotations

from pathlib import Path

from services.identity_sync import api
from shared.config import BaseSettings
from shared.service import ServiceDefinition, run_service


class Settings(BaseSettings, kw_only=True, forbid_unknown_fields=True):
    pass


DEFINITION = ServiceDefinition(
    name="identity_sync",
    schema="identity",
    settings_type=Settings,
    routes=api.routes,
    migrations=Path(__file__).parent / "migrations",
)


def main() -> None:
    run_service(DEFINITION)
