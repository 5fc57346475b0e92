"""Single sign-on: OpenID Connect authorization-code login (with PKCE) against an issuer configured by URL.

The provider's metadata and keys come from its discovery document; the ID token is verified with PyJWT
(signature against the provider's JWKS, issuer, audience, expiry, nonce). A user seen for the first time
is provisioned just in time, and its groups follow a configurable claim. The login ends with an access
token of identity-sync, like any other.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Annotated, Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import jwt
import msgspec

from services.identity_sync import service, store, tokens
from services.identity_sync.model import AccessToken, GroupCreate, Name, UserCreate, UserPatch, name_for
from shared.db import transaction
from shared.errors import AuthenticationError, InputError, NotAllowedError, ServiceUnavailableError
from shared.events import Actor

SSO_ACTOR = Actor("system", "oidc-sso")
STATE_LIFETIME_SECONDS = 600
_ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]


class OidcSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The OpenID provider (YAML `oidc:` in `IDP_CONFIG`)."""

    issuer: str
    """Issuer URL; its `/.well-known/openid-configuration` describes the rest."""
    client_id: str
    client_secret: str
    """Secret: read from configuration only, never logged or emitted."""
    redirect_uri: str
    """This service's `/api/identity/sso/callback` as the browser reaches it."""
    scopes: str = "openid profile email"
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    """Claim listing the user's groups; each value becomes a group (by name) at `group_scope`."""
    group_scope: str = "account"
    source: Name = "oidc"
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0

    def __repr__(self) -> str:  # keeps the client secret out of any log line that prints settings
        return f"OidcSettings(issuer={self.issuer!r}, client_id={self.client_id!r})"


class OidcClient:
    """The provider as seen from here: discovery, authorization URL, code exchange, ID-token checks."""

    def __init__(self, config: OidcSettings) -> None:
        self.config = config
        self._metadata: dict[str, Any] | None = None
        self._keys: jwt.PyJWKSet | None = None

    async def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        method = "POST" if "data" in kwargs else "GET"
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_seconds)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.request(method, url, **kwargs) as r:
                body = await r.read()
                if r.status >= 400:
                    raise AuthenticationError(f"the identity provider refused ({r.status})")
                return msgspec.json.decode(body)
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as exc:
            raise ServiceUnavailableError(f"the identity provider is unreachable: {type(exc).__name__}") from None

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            metadata = await self._get_json(url)
            if metadata.get("issuer") != self.config.issuer:
                raise ServiceUnavailableError("the provider's discovery document names another issuer")
            self._metadata = metadata
        return self._metadata

    async def authorization_url(self, state: str, nonce: str, challenge: str) -> str:
        endpoint = (await self.metadata())["authorization_endpoint"]
        query = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri,
            "scope": self.config.scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{endpoint}?{urlencode(query)}"

    async def exchange(self, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        """The verified ID-token claims for an authorization code."""
        metadata = await self.metadata()
        response = await self._get_json(
            metadata["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.config.redirect_uri,
                "client_id": self.config.client_id,
                "client_secret": self.config.client_secret,
                "code_verifier": verifier,
            },
        )
        id_token = response.get("id_token")
        if not isinstance(id_token, str):
            raise AuthenticationError("the identity provider returned no ID token")
        claims = await self._verify(id_token)
        if claims.get("nonce") != nonce:
            raise AuthenticationError("the ID token does not answer this login")
        return claims

    async def _verify(self, id_token: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
        except jwt.PyJWTError:
            raise AuthenticationError("the ID token is malformed") from None
        key = await self._key(kid)
        try:
            return jwt.decode(
                id_token,
                key,
                algorithms=_ID_TOKEN_ALGORITHMS,
                audience=self.config.client_id,
                issuer=self.config.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"the ID token is not valid: {type(exc).__name__}") from None

    async def _key(self, kid: str | None) -> Any:
        for refresh in (False, True):  # a kid we do not know yet: the provider may have rotated its keys
            if self._keys is None or refresh:
                jwks = await self._get_json((await self.metadata())["jwks_uri"])
                self._keys = jwt.PyJWKSet.from_dict(jwks)
            for key in self._keys.keys:
                if kid is None or key.key_id == kid:
                    return key.key
        raise AuthenticationError("the ID token is signed with an unknown key")


def _pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def begin_login(pool: asyncpg.Pool, client: OidcClient) -> str:
    """Where to send the browser: the provider's authorization endpoint, with a fresh state, nonce and PKCE."""
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    verifier, challenge = _pkce_pair()
    async with pool.acquire() as conn:
        await store.insert_sso_login(conn, state, nonce, verifier, STATE_LIFETIME_SECONDS)
    return await client.authorization_url(state, nonce, challenge)


async def complete_login(pool: asyncpg.Pool, client: OidcClient, code: str, state: str, ttl: int) -> AccessToken:
    """Finish a login: check the state, exchange the code, provision the user and its groups, issue a token."""
    async with pool.acquire() as conn:
        pending = await store.take_sso_login(conn, state)
    if pending is None:
        raise InputError.for_field("query.state", "unknown or expired login; start again")
    nonce, verifier = pending
    claims = await client.exchange(code, verifier, nonce)
    user_id = await provision(pool, client.config, claims)
    return await tokens.issue_user_token(pool, user_id, ttl)


async def provision(pool: asyncpg.Pool, config: OidcSettings, claims: dict[str, Any]) -> str:
    """The user the claims describe, created on first sight; its groups from the groups claim follow."""
    username = claims.get(config.username_claim) or claims.get("email") or claims["sub"]
    email = claims.get("email")
    source = f"oidc:{config.source}"
    async with transaction(pool) as conn:
        user = await store.get_user_by_username(conn, str(username))
        if user is None:
            body = _validated_user(
                {
                    "username": str(username),
                    "display_name": str(claims.get("name") or ""),
                    "emails": [email] if isinstance(email, str) else [],
                    "external_id": str(claims["sub"]),
                }
            )
            user = await service.insert_user(conn, SSO_ACTOR, body, source=source)
        elif not user.active:
            raise NotAllowedError("this account is deactivated")
        elif claims.get("name") and claims["name"] != user.display_name:
            user = await service.apply_user_patch(
                conn, SSO_ACTOR, await store.get_user(conn, user.id, lock=True), UserPatch(display_name=claims["name"])
            )
        await _sync_groups(conn, config, source, user, claims.get(config.groups_claim) or [])
        return user.id


async def _sync_groups(conn: asyncpg.Connection, config: OidcSettings, source: str, user: Any, claimed: Any) -> None:
    """Member of exactly the claimed groups among those SSO manages; other groups are left alone."""
    wanted = {name_for(str(g)) for g in claimed} if isinstance(claimed, list) else set()
    wanted_ids = set()
    for name in sorted(wanted):
        group_id = await store.group_id_by_name(conn, config.group_scope, name)
        if group_id is None:
            body = GroupCreate(name=name, display_name=name, scope=config.group_scope)
            group_id = (await service.insert_group(conn, SSO_ACTOR, body, source=source)).id
        wanted_ids.add(group_id)
    for group_id in sorted(wanted_ids | set(user.groups)):
        group = await store.get_group(conn, group_id)
        if group is None or (group_id not in wanted_ids and group.source != source):
            continue
        await service.change_membership(conn, SSO_ACTOR, group, user, group_id in wanted_ids)


def _validated_user(raw: dict[str, Any]) -> UserCreate:
    try:
        return msgspec.convert(raw, UserCreate)
    except msgspec.ValidationError as exc:
        raise AuthenticationError(f"the provider's claims do not make a valid user: {exc}") from None
