"""Access tokens and API keys: issued by identity-sync, verified by every service, revoked within a second."""

from __future__ import annotations

import time
import uuid

import aiohttp
import jwt
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.audit.app import DEFINITION as AUDIT
from services.audit.app import Settings as AuditSettings
from shared.service import running_service
from shared.tokens import hash_secret
from tests.helpers import eventually

API = "/api/identity"


@pytest_asyncio.fixture
async def audit(make_settings, identity):
    """Another service of the suite, which verifies identity-sync's tokens on its own."""
    async with running_service(AUDIT, make_settings(AuditSettings)) as service:
        yield service


def protected_urls(*services):
    """A route needing a permission on each service (identity's, or audit's)."""
    return [
        f"{s.url}{API}/users" if s.deps.service == "identity_sync" else f"{s.url}/api/audit/events" for s in services
    ]


async def call(url, token, method="GET", **kwargs):
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, headers={"Authorization": f"Bearer {token}"}, **kwargs) as r,
    ):
        return r.status, r.content_type, await r.read()


async def post_json(http, url, body=None, status=201):
    async with http.post(url, json=body) as r:
        assert r.status == status, await r.text()
        return await r.json()


async def new_user_token(http, identity, username="ada"):
    user = await post_json(http, f"{identity.url}{API}/users", {"username": username})
    token = await post_json(http, f"{identity.url}{API}/users/{user['id']}/tokens", status=200)
    return user, token["access_token"]


async def test_a_user_token_is_verified_by_other_services_and_revoked_on_deactivation(identity, audit, http):
    user, token = await new_user_token(http, identity)
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA" and jwt.get_unverified_header(token)["kid"]
    # Authenticated everywhere; without permissions a token is refused with 403, not 401.
    assert (await call(f"{audit.url}/api/audit/events", token))[0] == 403
    assert (await call(f"{identity.url}{API}/users", token))[0] == 403

    async with http.post(f"{identity.url}{API}/users/{user['id']}/deactivate") as r:
        assert r.status == 200

    async def rejected_everywhere():
        statuses = {(await call(url, token))[0] for url in protected_urls(audit, identity)}
        return statuses == {401}

    await eventually(rejected_everywhere, timeout=5)
    _, content_type, body = await call(f"{audit.url}/api/audit/events", token)
    assert content_type == "application/problem+json" and b"revoked" in body

    async with http.post(f"{identity.url}{API}/users/{user['id']}/tokens") as r:
        assert r.status == 409, "a deactivated user gets no token"
    async with http.post(f"{identity.url}{API}/users/{user['id']}/reactivate") as r:
        assert r.status == 200
    fresh = await post_json(http, f"{identity.url}{API}/users/{user['id']}/tokens", status=200)
    assert (await call(f"{audit.url}/api/audit/events", fresh["access_token"]))[0] == 403
    assert (await call(f"{audit.url}/api/audit/events", token))[0] == 401, "tokens from before stay revoked"


async def test_a_deleted_users_token_is_rejected(identity, audit, http):
    user, token = await new_user_token(http, identity)
    assert (await call(f"{audit.url}/api/audit/events", token))[0] == 403
    async with http.delete(f"{identity.url}{API}/users/{user['id']}") as r:
        assert r.status == 204

    async def rejected():
        return (await call(f"{audit.url}/api/audit/events", token))[0] == 401

    await eventually(rejected, timeout=5)


async def test_a_service_that_starts_later_loads_past_revocations(identity, http, make_settings):
    user, token = await new_user_token(http, identity)
    async with http.post(f"{identity.url}{API}/users/{user['id']}/deactivate") as r:
        assert r.status == 200
    async with running_service(AUDIT, make_settings(AuditSettings)) as audit:
        assert (await call(f"{audit.url}/api/audit/events", token))[0] == 401


async def test_forged_expired_and_unsigned_tokens_are_401_problems(identity, audit, http):
    _, token = await new_user_token(http, identity)
    kid = jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid})
    unsigned = jwt.encode({**claims, "kind": "user"}, None, algorithm="none", headers={"kid": kid})
    unknown_kid = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "nope"})
    tampered = token.rsplit(".", 1)[0][:-2] + "xx." + token.rsplit(".", 1)[1]
    for bad in (forged, unsigned, unknown_kid, tampered, "not-a-token", "a.b.c", "idp_" + "0" * 32 + "_secret"):
        status, content_type, _ = await call(f"{audit.url}/api/audit/events", bad)
        assert (status, content_type) == (401, "application/problem+json"), bad


async def test_an_expired_token_is_refused(make_settings, http):
    from services.identity_sync.app import DEFINITION, Settings

    async with running_service(DEFINITION, make_settings(Settings, access_token_ttl_seconds=30)) as identity:
        user, _ = await new_user_token(http, identity)
        async with identity.deps.pool.acquire() as conn:
            private = await conn.fetchval("SELECT private_key FROM signing_keys")
            kid = await conn.fetchval("SELECT kid FROM signing_keys")
        now = time.time()
        claims = {"sub": user["id"], "kind": "user", "iss": "seed-idp", "aud": "seed-idp", "iat": now - 120}
        expired = jwt.encode(
            {**claims, "exp": int(now) - 60},
            Ed25519PrivateKey.from_private_bytes(private),
            algorithm="EdDSA",
            headers={"kid": kid},
        )
        status, _, body = await call(f"{identity.url}{API}/users", expired)
        assert status == 401 and b"expired" in body


async def test_api_keys_are_shown_once_stored_hashed_scoped_and_revocable(identity, audit, http):
    account = await post_json(http, f"{identity.url}{API}/service-accounts", {"name": "scim", "scope": "account.acme"})
    keys_url = f"{identity.url}{API}/service-accounts/{account['id']}/keys"
    async with http.post(keys_url, json={"name": "k1", "scope": "account.other"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "$.scope"
    async with http.post(keys_url, json={"name": "k1", "permissions": ["catalog_entity_delete"]}) as r:
        assert r.status == 400
    created = await post_json(http, keys_url, {"name": "k1", "permissions": ["identity_user_view"]})
    key = created["key"]
    async with http.get(keys_url) as r:
        listed = await r.json()
        assert "key" not in listed["items"][0] and listed["items"][0]["scope"] == "account.acme"
    async with identity.deps.pool.acquire() as conn:
        stored = await conn.fetchval("SELECT secret_hash FROM api_keys")
    assert bytes(stored) == hash_secret(key.split("_", 2)[2]) and key.encode() not in bytes(stored)

    assert (await call(f"{identity.url}{API}/users", key))[0] == 200, "the key holds identity_user_view"
    assert (await call(f"{identity.url}{API}/groups", key))[0] == 403
    assert (await call(f"{audit.url}/api/audit/events", key))[0] == 403

    exchanged = await post_json(http, f"{identity.url}{API}/token", {"api_key": key}, status=200)
    access = exchanged["access_token"]
    assert (await call(f"{identity.url}{API}/users", access))[0] == 200
    async with http.post(f"{identity.url}{API}/token", json={"api_key": key[:-3] + "abc"}) as r:
        assert r.status == 401

    async with http.delete(f"{keys_url}/{created['id']}") as r:
        assert r.status == 204

    async def both_rejected():
        return {(await call(url, t))[0] for url in protected_urls(identity, audit) for t in (key, access)} == {401}

    await eventually(both_rejected, timeout=5)
    async with identity.deps.pool.acquire() as conn:
        payloads = [bytes(r["payload"]) for r in await conn.fetch("SELECT payload FROM outbox")]
    assert not any(key.split("_", 2)[2].encode() in p for p in payloads), "no secret in any event"


async def test_rotation_keeps_old_tokens_valid_and_new_ones_verify_everywhere(identity, audit, http):
    _, before = await new_user_token(http, identity, "bo")
    assert (await call(f"{audit.url}/api/audit/events", before))[0] == 403
    rotated = await post_json(http, f"{identity.url}{API}/signing-keys/rotate")
    _, after = await new_user_token(http, identity, "cy")
    assert jwt.get_unverified_header(after)["kid"] == rotated["kid"] != jwt.get_unverified_header(before)["kid"]
    assert (await call(f"{audit.url}/api/audit/events", after))[0] == 403
    assert (await call(f"{audit.url}/api/audit/events", before))[0] == 403
    async with aiohttp.ClientSession() as session, session.get(f"{identity.url}{API}/.well-known/jwks.json") as r:
        assert {k["kid"] for k in (await r.json())["keys"]} == {
            jwt.get_unverified_header(t)["kid"] for t in (before, after)
        }


async def test_last_seen_is_recorded_in_batches(identity, audit, http):
    user, token = await new_user_token(http, identity)
    for _ in range(3):
        await call(f"{audit.url}/api/audit/events", token)
    await audit.verifier.flush_seen()
    async with http.get(f"{identity.url}{API}/users/{user['id']}") as r:
        assert (await r.json())["last_seen"] is not None
    assert (await call(f"{identity.url}{API}/users/{uuid.uuid4()}", token))[0] == 403
