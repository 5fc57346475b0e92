"""OpenID Connect login against a small provider started on loopback: JIT provisioning and group claims."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from urllib.parse import urlencode

import jwt
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from services.identity_sync.app import DEFINITION, Settings
from services.identity_sync.sso import OidcSettings
from shared.embedded import free_port
from shared.service import running_service

API = "/api/identity"
CLIENT_ID, CLIENT_SECRET = "seed-idp", "provider-client-secret-42"


class Provider:
    """Authorization code + PKCE, auto-consenting as `user`, ID tokens signed RS256."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signing_key = self.key
        self.user: dict = {}
        self.codes: dict[str, dict] = {}
        self.nonce_override: str | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self.discovery)
        app.router.add_get("/authorize", self.authorize)
        app.router.add_post("/token", self.token)
        app.router.add_get("/jwks", self.jwks)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/authorize",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
            }
        )

    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        assert q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q["nonce"], "challenge": q["code_challenge"], "redirect": q["redirect_uri"]}
        raise web.HTTPFound(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}")

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant = self.codes.pop(form["code"], None)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(form["code_verifier"].encode()).digest()).rstrip(b"=")
        if grant is None or form["client_secret"] != CLIENT_SECRET or challenge.decode() != grant["challenge"]:
            return web.json_response({"error": "invalid_grant"}, status=400)
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce_override or grant["nonce"],
            **self.user,
        }
        id_token = jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": "k1"})
        return web.json_response({"id_token": id_token, "access_token": "x", "token_type": "Bearer"})

    async def jwks(self, request: web.Request) -> web.Response:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return web.json_response({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]})


@pytest_asyncio.fixture
async def provider():
    provider = Provider()
    runner = web.AppRunner(provider.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    provider.url = f"http://{host}:{port}"
    yield provider
    await runner.cleanup()


@pytest_asyncio.fixture
async def identity(make_settings, provider):
    port = free_port()
    oidc = OidcSettings(
        issuer=provider.url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_uri=f"http://127.0.0.1:{port}{API}/sso/callback",
        group_scope="account.acme",
    )
    async with running_service(DEFINITION, make_settings(Settings, http_port=port, oidc=oidc)) as service:
        yield service


async def login(session, identity, status=200):
    async with session.get(f"{identity.url}{API}/sso/login") as r:
        body = await r.json()
        assert r.status == status, body
        return body


async def test_first_login_provisions_the_user_and_its_groups(identity, provider, anonymous_http, http):
    provider.user = {
        "sub": "abc-1",
        "preferred_username": "ada",
        "email": "ada@acme.org",
        "name": "Ada",
        "groups": ["Platform", "SRE"],
    }
    token = (await login(anonymous_http, identity))["access_token"]
    async with anonymous_http.get(f"{identity.url}{API}/users", headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 403, "authenticated, without permissions"
    async with http.get(f"{identity.url}{API}/users", params={"username": "ada"}) as r:
        (ada,) = (await r.json())["items"]
    assert (ada["external_id"], ada["source"], ada["emails"]) == ("abc-1", "oidc:oidc", ["ada@acme.org"])
    async with http.get(f"{identity.url}{API}/groups", params={"scope": "account.acme"}) as r:
        groups = {g["name"]: g["id"] for g in (await r.json())["items"]}
    assert set(groups) == {"platform", "sre"} and sorted(ada["groups"]) == sorted(groups.values())

    provider.user["groups"] = ["SRE"]
    await login(anonymous_http, identity)
    async with http.get(f"{identity.url}{API}/users/{ada['id']}") as r:
        assert (await r.json())["groups"] == [groups["sre"]]
    async with http.get(f"{identity.url}{API}/users", params={"q": "ada"}) as r:
        assert (await r.json())["totalItems"] == 1


async def test_a_deactivated_user_cannot_sign_in(identity, provider, anonymous_http, http):
    provider.user = {"sub": "abc-2", "preferred_username": "bo"}
    await login(anonymous_http, identity)
    async with http.get(f"{identity.url}{API}/users", params={"username": "bo"}) as r:
        bo = (await r.json())["items"][0]
    async with http.post(f"{identity.url}{API}/users/{bo['id']}/deactivate") as r:
        assert r.status == 200
    problem = await login(anonymous_http, identity, status=403)
    assert problem["status"] == 403


async def test_forged_tokens_replayed_states_and_wrong_nonces_are_refused(identity, provider, anonymous_http):
    provider.user = {"sub": "abc-3", "preferred_username": "cy"}
    provider.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (await login(anonymous_http, identity, status=401))["status"] == 401
    provider.signing_key = provider.key
    provider.nonce_override = "replayed"
    assert (await login(anonymous_http, identity, status=401))["status"] == 401
    async with anonymous_http.get(f"{identity.url}{API}/sso/callback", params={"code": "x", "state": "made-up"}) as r:
        assert r.status == 400 and (await r.json())["errors"][0]["field"] == "query.state"
    async with anonymous_http.get(
        f"{identity.url}{API}/sso/callback", params={"error": "access_denied", "state": "s"}
    ) as r:
        assert r.status == 401
