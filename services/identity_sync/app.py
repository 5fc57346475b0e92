"""Identity-sync service wiring: settings and the service definition run by `python -m services.identity_sync`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from services.identity_sync import api, handlers
from services.identity_sync.access_api import add_access_routes
from services.identity_sync.access_handlers import serve_access_snapshots
from services.identity_sync.ldap import LdapSettings
from services.identity_sync.sso import OidcSettings
from shared.config import BaseSettings
from shared.http import Routes
from shared.scopes import check_scope
from shared.service import Deps, ServiceDefinition, run_service


class Settings(BaseSettings, kw_only=True, forbid_unknown_fields=True):
    access_token_ttl_seconds: Annotated[int, msgspec.Meta(ge=30, le=24 * 3600)] = 900
    """Lifetime of the access tokens identity-sync signs (`IDP_ACCESS_TOKEN_TTL_SECONDS`)."""
    catalog_url: str = "http://127.0.0.1:8081"
    """The catalog's base URL, for orphaned ownership and reassignment (`IDP_CATALOG_URL`)."""
    scim_group_scope: str = "account"
    """Scope of the groups SCIM clients create (`IDP_SCIM_GROUP_SCOPE`)."""
    ldap: LdapSettings | None = None
    """The LDAP / Active Directory source (`ldap:` in the `IDP_CONFIG` YAML file); none by default."""
    oidc: OidcSettings | None = None
    """The OpenID provider for single sign-on (`oidc:` in the `IDP_CONFIG` YAML file); none by default."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_scope(self.scim_group_scope, "scim_group_scope")
        if self.ldap is not None:
            check_scope(self.ldap.group_scope, "ldap.group_scope")
        if self.oidc is not None:
            check_scope(self.oidc.group_scope, "oidc.group_scope")


def routes(deps: Deps) -> Routes:
    """Principals, tokens, SCIM, sources and SSO (api.py) and access control (access_api.py)."""
    routes = api.routes(deps)
    add_access_routes(routes, deps)
    return routes


DEFINITION = ServiceDefinition(
    name="identity_sync",
    schema="identity",
    settings_type=Settings,
    routes=routes,
    migrations=Path(__file__).parent / "migrations",
    background=(handlers.serve_token_rpc, handlers.sync_ldap_periodically, serve_access_snapshots),
)


def main() -> None:
    run_service(DEFINITION)
