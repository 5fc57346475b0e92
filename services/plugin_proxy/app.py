"""Plugin-proxy wiring: settings, the per-process proxy context, and the definition run by
`python -m services.plugin_proxy`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import msgspec

from services.plugin_proxy import api, handlers, service
from services.plugin_proxy.forwarding import AccessLog, EndpointGuard, ProxyContext
from services.plugin_proxy.model import Endpoint
from shared.auth import Principal
from shared.authz import Resource
from shared.config import BaseSettings, ConfigError
from shared.delegate_wire import Inboxes
from shared.errors import InputError
from shared.events import DEFAULT_SCOPE
from shared.secretref import SecretResolver, VaultSettings
from shared.service import Deps, ServiceDefinition, run_service

Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class Settings(BaseSettings, kw_only=True, forbid_unknown_fields=True):
    endpoints_file: str | None = None
    """YAML file of endpoints applied at start-up (`IDP_ENDPOINTS_FILE`); see `model.EndpointsFile`."""
    vault_address: str | None = None
    """Vault base URL for `vault:` secret references of direct endpoints (`IDP_VAULT_ADDRESS`)."""
    vault_token: str | None = None
    """Vault token (`IDP_VAULT_TOKEN`)."""
    access_sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.1
    """Share of proxied calls recorded as `plugin_proxy.request.proxied` events (`IDP_ACCESS_SAMPLE_RATE`)."""
    agent_heartbeat_seconds: Seconds = 2.0
    """How often agents are told to heartbeat (`IDP_AGENT_HEARTBEAT_SECONDS`)."""
    agent_offline_after_seconds: Seconds = 6.0
    """A replica silent this long is offline and gets no requests (`IDP_AGENT_OFFLINE_AFTER_SECONDS`)."""
    delegate_open_timeout_seconds: Seconds = 1.0
    """How long an agent may take to accept an exchange, tried twice (`IDP_DELEGATE_OPEN_TIMEOUT_SECONDS`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.vault_address is None) != (self.vault_token is None):
            raise ValueError("IDP_VAULT_ADDRESS and IDP_VAULT_TOKEN are set together")


@contextlib.asynccontextmanager
async def open_proxy_context(deps: Deps, guard: EndpointGuard | None = None) -> AsyncIterator[ProxyContext]:
    """Client pools and caches for the process; the endpoints file is applied before any request is served."""
    settings: Settings = deps.settings

    def may_use(principal: Principal, endpoint: Endpoint) -> bool:
        # Endpoints are account-wide; a resource group may name the ones a caller may use.
        resource = Resource("proxy_endpoint", DEFAULT_SCOPE, endpoint.name)
        return deps.access.check(principal, "proxy_endpoint_use", resource).allowed

    if settings.endpoints_file:
        try:
            text = await asyncio.to_thread(Path(settings.endpoints_file).read_text, encoding="utf-8")
            await service.sync_endpoints_file(deps.pool, service.parse_endpoints_file(text))
        except (OSError, InputError) as exc:
            raise ConfigError(f"IDP_ENDPOINTS_FILE={settings.endpoints_file}: {exc}") from exc
    vault = VaultSettings(settings.vault_address, settings.vault_token) if settings.vault_address else None
    inboxes = Inboxes(deps.nc)
    await inboxes.start()
    context = ProxyContext(
        pool=deps.pool,
        nc=deps.nc,
        inboxes=inboxes,
        secrets=SecretResolver(vault=vault),
        access=AccessLog(settings.access_sample_rate),
        open_timeout=settings.delegate_open_timeout_seconds,
        may_use=guard or may_use,
    )
    try:
        yield context
    finally:
        await context.close()
        await inboxes.stop()


DEFINITION = ServiceDefinition(
    name="plugin_proxy",
    schema="proxy",
    settings_type=Settings,
    routes=api.routes,
    migrations=Path(__file__).parent / "migrations",
    background=(handlers.serve_heartbeats, handlers.track_agents, handlers.flush_access_events),
    open_context=open_proxy_context,
    cancel_on_disconnect=True,  # a caller's hang-up cancels the upstream call (or the agent's exchange)
)


def main() -> None:
    run_service(DEFINITION)
