"""Identity-sync service wiring: settings and the service definition run by `python -m services.identity_sync`."""

from __future__ import annotations

from pathlib import Path

from services.identity_sync.access_api import add_access_routes
from services.identity_sync.access_handlers import serve_access_snapshots
from shared.config import BaseSettings
from shared.http import Routes
from shared.service import Deps, ServiceDefinition, run_service


def routes(deps: Deps) -> Routes:
    api = Routes(tag="identity")
    add_access_routes(api, deps)
    return api


DEFINITION = ServiceDefinition(
    name="identity_sync",
    schema="identity",
    settings_type=BaseSettings,
    routes=routes,
    migrations=Path(__file__).parent / "migrations",
    background=(serve_access_snapshots,),
)


def main() -> None:
    run_service(DEFINITION)
