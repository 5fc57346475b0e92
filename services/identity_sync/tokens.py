"""Issuing credentials: EdDSA signing keys (JWKS, rotation), access tokens, service-account API keys,
and the answers every service's verifier asks for (keys, revocations, API-key checks, last seen)."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import secrets
import uuid

import asyncpg
import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.identity_sync import store
from services.identity_sync.model import (
    AccessToken,
    ApiKey,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    SigningKeyList,
    SigningKeyView,
    api_key_scope,
)
from services.identity_sync.service import SOURCE, get_service_account, get_user
from shared.db import transaction
from shared.errors import AuthenticationError, ConflictError, NotFoundError
from shared.events import Actor, ResourceRef, new_event, utc_now
from shared.outbox import write_event
from shared.tokens import (
    ALGORITHM,
    API_KEY_PREFIX,
    AUDIENCE,
    ISSUER,
    KEY_ROTATED_EVENT,
    ApiKeyPrincipal,
    Jwks,
    Revocation,
    RevocationList,
    SeenBatch,
    hash_secret,
    parse_api_key,
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def new_signing_key() -> tuple[str, bytes, dict]:
    """A fresh Ed25519 key: (kid, raw private key, public JWK)."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    kid = _b64url(secrets.token_bytes(12))
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public), "kid": kid, "use": "sig", "alg": ALGORITHM}
    return kid, private.private_bytes_raw(), jwk


async def ensure_signing_key(pool: asyncpg.Pool) -> None:
    """Create the first signing key if there is none (replicas starting together create one)."""
    async with transaction(pool) as conn:
        await store.lock_signing_keys(conn)
        if await store.active_signing_key(conn) is None:
            await store.insert_signing_key(conn, *new_signing_key())


async def rotate_signing_key(pool: asyncpg.Pool, actor: Actor) -> SigningKeyView:
    """A new key signs from now on; the old ones stay published until their tokens have expired."""
    kid, private, jwk = new_signing_key()
    async with transaction(pool) as conn:
        await store.lock_signing_keys(conn)
        await store.insert_signing_key(conn, kid, private, jwk)
        retired = await store.retire_signing_keys(conn, keep=kid)
        await write_event(
            conn,
            new_event(
                KEY_ROTATED_EVENT,
                source=SOURCE,
                actor=actor,
                resource=ResourceRef("signing_key", kid),
                data={"kid": kid, "retired": retired},
            ),
        )
    return SigningKeyView(kid=kid, created_at=utc_now(), retired_at=None)


async def list_signing_keys(pool: asyncpg.Pool) -> SigningKeyList:
    async with pool.acquire() as conn:
        return SigningKeyList([SigningKeyView(**dict(r)) for r in await store.signing_keys(conn)])


async def jwks(pool: asyncpg.Pool, token_ttl: float) -> Jwks:
    # A retired key is published a little longer than the longest token lifetime, for clock skew.
    horizon = utc_now() - dt.timedelta(seconds=token_ttl + 60)
    async with pool.acquire() as conn:
        return Jwks(keys=await store.published_keys(conn, horizon))


async def _sign(pool: asyncpg.Pool, claims: dict, ttl: int) -> AccessToken:
    async with pool.acquire() as conn:
        found = await store.active_signing_key(conn)
    if found is None:  # a request raced the start-up task that creates the first key
        await ensure_signing_key(pool)
        return await _sign(pool, claims, ttl)
    kid, private = found
    now = utc_now().timestamp()
    # `iat` keeps sub-second precision: a token issued right after a reactivation must be newer than the
    # deactivation it follows.
    claims = {**claims, "iss": ISSUER, "aud": AUDIENCE, "iat": round(now, 3), "exp": int(now) + ttl}
    claims["jti"] = str(uuid.uuid4())
    token = jwt.encode(claims, Ed25519PrivateKey.from_private_bytes(private), algorithm=ALGORITHM, headers={"kid": kid})
    return AccessToken(access_token=token, expires_in=ttl)


async def issue_user_token(pool: asyncpg.Pool, user_id: str, ttl: int) -> AccessToken:
    """An access token for an active user (an administrator's bootstrap path until SSO issues them)."""
    user = await get_user(pool, user_id)
    if not user.active:
        raise ConflictError(f"user {user_id} is deactivated")
    return await _sign(pool, {"sub": user.id, "kind": "user", "name": user.username}, ttl)


async def exchange_api_key(pool: asyncpg.Pool, key: str, ttl: int) -> AccessToken:
    """A short-lived access token for the service account an API key authenticates (client credentials)."""
    found = await verify_api_key(pool, key)
    lifetime = max(1, min(ttl, int(found.expires_at - utc_now().timestamp())))
    claims = {"sub": found.id, "kind": "service_account", "key": found.key_id, "perms": found.permissions}
    return await _sign(pool, claims, lifetime)


# --- API keys ----------------------------------------------------------------------------------------


async def create_api_key(pool: asyncpg.Pool, actor: Actor, account_id: str, body: ApiKeyCreate) -> ApiKeyCreated:
    account = await get_service_account(pool, account_id)
    scope = api_key_scope(account.scope, body.scope)
    now = utc_now()
    key_id = uuid.uuid4()
    secret = _b64url(secrets.token_bytes(32))
    key = ApiKey(
        id=str(key_id),
        service_account_id=account.id,
        name=body.name,
        scope=scope,
        permissions=sorted(set(body.permissions)),
        expires_at=now + dt.timedelta(days=body.expires_in_days),
        created_at=now,
        revoked_at=None,
        last_used_at=None,
    )
    async with transaction(pool) as conn:
        if await store.get_service_account(conn, account.id, lock=True) is None:
            raise NotFoundError(f"no service account {account_id}")
        await store.insert_api_key(conn, key, hash_secret(secret))
        await write_event(conn, _key_event("created", actor, key, account.scope))
    return ApiKeyCreated(**msgspec.structs.asdict(key), key=f"{API_KEY_PREFIX}{key_id.hex}_{secret}")


def _key_event(verb: str, actor: Actor, key: ApiKey, scope: str):
    data = {
        "key_id": key.id,
        "service_account_id": key.service_account_id,
        "name": key.name,
        "scope": key.scope,
        "permissions": key.permissions,
        "expires_at": key.expires_at.isoformat(),
    }
    return new_event(
        f"identity.api_key.{verb}",
        source=SOURCE,
        actor=actor,
        scope=scope,
        resource=ResourceRef("api_key", key.id),
        data=data,
    )


async def list_api_keys(pool: asyncpg.Pool, account_id: str) -> ApiKeyList:
    account = await get_service_account(pool, account_id)
    async with pool.acquire() as conn:
        return ApiKeyList(await store.list_api_keys(conn, account.id))


async def revoke_api_key(pool: asyncpg.Pool, actor: Actor, account_id: str, key_id: str) -> None:
    """Revoke a key and every access token exchanged for it; revoking twice is a no-op."""
    account = await get_service_account(pool, account_id)
    async with transaction(pool) as conn:
        key = await store.get_api_key(conn, _as_uuid(key_id) or str(uuid.UUID(int=0)), lock=True)
        if key is None or key.service_account_id != account.id:
            raise NotFoundError(f"no key {key_id} of service account {account_id}")
        if key.revoked_at is not None:
            return
        revoked_at = await store.revoke_api_key(conn, key.id)
        event = await write_event(conn, _key_event("revoked", actor, key, account.scope))
        await store.record_revocation(conn, "api_key", key.id, max(revoked_at, event.time))


async def verify_api_key(pool: asyncpg.Pool, key: str) -> ApiKeyPrincipal:
    """Who `key` authenticates; AuthenticationError (one message for every reason) when nobody."""
    parsed = parse_api_key(key)
    refused = AuthenticationError("the API key is not valid")
    if parsed is None:
        raise refused
    key_id, secret = parsed
    key_uuid = _as_uuid(key_id)
    if key_uuid is None:
        raise refused
    async with pool.acquire() as conn:
        row = await store.api_key_for_login(conn, key_uuid)
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), hash_secret(secret)):
        raise refused
    if row["revoked_at"] is not None or row["expires_at"] <= utc_now() or not row["active"]:
        raise refused
    return ApiKeyPrincipal(
        key_id=row["id"],
        kind="service_account",
        id=row["account_id"],
        permissions=list(row["permissions"]),
        expires_at=row["expires_at"].timestamp(),
    )


# --- what verifiers ask ------------------------------------------------------------------------------


async def revocations(pool: asyncpg.Pool, since: float) -> RevocationList:
    async with pool.acquire() as conn:
        rows = await store.revocations_since(conn, dt.datetime.fromtimestamp(since, dt.UTC))
    return RevocationList([Revocation(kind, id_, at.timestamp()) for kind, id_, at in rows])


async def record_seen(pool: asyncpg.Pool, batch: SeenBatch) -> None:
    """One statement per principal kind for a whole batch of sightings."""
    async with transaction(pool) as conn:
        for table, seen in (("users", batch.users), ("service_accounts", batch.service_accounts)):
            valid = {i: dt.datetime.fromtimestamp(t, dt.UTC) for i, t in seen.items() if _as_uuid(i)}
            if valid:
                await store.touch_last_seen(conn, table, valid)


def _as_uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
