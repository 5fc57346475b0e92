"""Catalog service wiring: settings and the service definition run by `python -m services.catalog`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from services.catalog import api, handlers, ingestion, stitching
from services.catalog.read_cache import ReadCaches, listen_for_writes
from services.catalog.url_reader import DirectFetcher, ProxiedFetcher, UrlFetcher, UrlPolicy
from shared.access import AccessReplica
from shared.events import SYSTEM
from shared.repositories import RepositorySettings
from shared.secretref import SecretResolver
from shared.service import Deps, ServiceDefinition, run_service


class Settings(RepositorySettings, kw_only=True, forbid_unknown_fields=True):
    file_location_roots: str = ""
    """Directories `file:` locations may read, separated by `:` (`IDP_FILE_LOCATION_ROOTS`); none by default."""
    orphan_strategy: Literal["keep", "delete"] = "keep"
    """What happens to an entity its location stops emitting (`IDP_ORPHAN_STRATEGY`)."""
    refresh_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    """How often every location is read again (`IDP_REFRESH_INTERVAL_SECONDS`)."""
    url_location_allow: str = ""
    """Hosts and IP addresses/CIDRs that `url:` locations may reach although they are not public (loopback,
    private, link-local), comma-separated (`IDP_URL_LOCATION_ALLOW`); none by default."""
    url_fetch_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    """How long one `url:` fetch may take (`IDP_URL_FETCH_TIMEOUT_SECONDS`)."""
    read_cache_entities: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 60_000
    """Served entities this process keeps for by-name reads and for the entities of `by-query` pages, dropped on
    every entity write (`IDP_READ_CACHE_ENTITIES`; 0 turns this cache off). About 3 kB each for a typical entity."""
    read_cache_result_uids: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 500_000
    """How many matches of `by-query` results this process remembers in all (each result: its matches' uids in
    order, as far as its pages were asked, and the total), dropped on every entity write
    (`IDP_READ_CACHE_RESULT_UIDS`; 0 turns this cache off). About 60 bytes each."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.url_policy()  # a malformed allow list stops the service at start-up

    def url_policy(self) -> UrlPolicy:
        return UrlPolicy.parse_allow(self.url_location_allow, timeout_seconds=self.url_fetch_timeout_seconds)

    def url_fetcher(self, secrets: SecretResolver) -> UrlFetcher:
        """`url:` locations on the repository hosts through the plugin-proxy; on other hosts, fetched directly."""
        direct = DirectFetcher(self.url_policy())
        if not self.repository_hosts:
            return direct
        repositories = self.repository_proxy(
            secrets, max_bytes=direct.policy.max_bytes, timeout=self.url_fetch_timeout_seconds
        )
        assert repositories is not None, "repository hosts need a proxy URL and token (__post_init__)"
        return ProxiedFetcher(repositories, direct)

    def ingestion_policy(self, access: AccessReplica, fetcher: UrlFetcher) -> ingestion.IngestionPolicy:
        roots = tuple(Path(p).expanduser().resolve() for p in self.file_location_roots.split(os.pathsep) if p)
        return ingestion.IngestionPolicy(
            file_roots=roots,
            orphan_strategy=self.orphan_strategy,
            fetcher=fetcher,
            admit=entity_admission(access),
        )


LOCATION_PRINCIPAL = {"kind": SYSTEM.kind, "id": SYSTEM.id}
"""Who policies see writing a location's entities: the catalog itself, on its reads and refreshes."""


def entity_admission(access: AccessReplica) -> ingestion.EntityAdmission:
    """Location entities pass the `deny` policy sets on entity writes at their scope, as the Entity API's do.
    (Warnings have no caller to reach; the entities are written.)"""

    def denials(action: str, scope: str, document: dict) -> list[str]:
        outcome = access.policies.evaluate(action, scope, {"resource": document, "principal": LOCATION_PRINCIPAL})
        return [violation.message for violation in outcome.denials]

    return denials


@dataclass
class CatalogContext:
    """What the catalog's routes and background tasks share in one process."""

    caches: ReadCaches
    fetcher: UrlFetcher
    """Reads `url:` locations: directly, or through the plugin-proxy for the configured repository hosts."""


@contextlib.asynccontextmanager
async def open_context(deps: Deps) -> AsyncIterator[CatalogContext]:
    settings: Settings = deps.settings
    secrets = SecretResolver()
    fetcher = settings.url_fetcher(secrets)
    try:
        yield CatalogContext(ReadCaches.sized(settings.read_cache_entities, settings.read_cache_result_uids), fetcher)
    finally:
        await fetcher.close()
        await secrets.close()


async def drop_caches_on_writes(deps: Deps) -> None:
    await listen_for_writes(deps.pool, deps.context.caches)


async def refresh_locations(deps: Deps) -> None:
    settings: Settings = deps.settings
    await stitching.stitch_unstitched(deps.pool)
    policy = settings.ingestion_policy(deps.access, deps.context.fetcher)
    await ingestion.refresh_periodically(deps.pool, policy, settings.refresh_interval_seconds)


DEFINITION = ServiceDefinition(
    name="catalog",
    schema="catalog",
    settings_type=Settings,
    routes=api.routes,
    migrations=Path(__file__).parent / "migrations",
    background=(refresh_locations, handlers.mirror_identity, handlers.serve_entity_reads, drop_caches_on_writes),
    open_context=open_context,
)


def main() -> None:
    run_service(DEFINITION)
