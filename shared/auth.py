"""Who is calling: principals and the authenticators every service's HTTP middleware runs.

Every service accepts the access tokens and API keys identity-sync issues (`shared.tokens`), and, only when
`IDP_DEV_TOKEN` is set explicitly (never with `IDP_ENVIRONMENT=production`), the dev admin token.

Until access control (roles and bindings) lands, a token's principal is not an admin and holds only the
permissions written into it: service-account API keys (and the access tokens exchanged for them) may carry
`identity_*` permissions, so SCIM clients and sync jobs can be given exactly what they need.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from shared.events import Actor


class Principal(msgspec.Struct, frozen=True):
    """An authenticated caller."""

    kind: str
    """`user`, `service_account` or `system`."""
    id: str
    is_admin: bool = False
    """Holds every permission (the dev token, the built-in IDP Admin role)."""
    permissions: frozenset[str] = frozenset()

    def actor(self) -> Actor:
        return Actor(self.kind, self.id)  # type: ignore[arg-type]

    def may(self, permission: str) -> bool:
        return self.is_admin or permission in self.permissions


DEV_ADMIN = Principal(kind="user", id="dev-admin", is_admin=True)

Authenticator = Callable[[web.Request], Awaitable[Principal | None]]


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def dev_token_authenticator(dev_token: str | None) -> Authenticator:
    """Accepts exactly `dev_token` as the dev admin; with no token configured it accepts nothing."""
    expected = dev_token.encode() if dev_token else None

    async def authenticate(request: web.Request) -> Principal | None:
        token = bearer_token(request)
        if expected is None or token is None:
            return None
        return DEV_ADMIN if hmac.compare_digest(token.encode(), expected) else None

    return authenticate


def first_of(*authenticators: Authenticator) -> Authenticator:
    """The first principal any of `authenticators` finds; an authenticator that raises stops the search."""

    async def authenticate(request: web.Request) -> Principal | None:
        for authenticator in authenticators:
            principal = await authenticator(request)
            if principal is not None:
                return principal
        return None

    return authenticate
