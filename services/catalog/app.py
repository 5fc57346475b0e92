"""catalog service wiring. Its domain arrives with its own issue; until then it serves only the
standard routes, applies its schema's migrations and connects to NATS."""

from __future__ import annotations

from shared.service import ServiceDefinition, run_service, skeleton_definition

DEFINITION: ServiceDefinition = skeleton_definition(name="catalog", schema="catalog")


def main() -> None:
    run_service(DEFINITION)
