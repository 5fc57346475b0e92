"""Access tokens issued by identity-sync, verified locally by every service (design.md §3).

Two credentials reach a service as `Authorization: Bearer …`:

- **Access tokens**: EdDSA-signed JWTs with a `kid` header, checked against the keys identity-sync
  publishes (its JWKS, fetched over NATS rpc `idp.rpc.identity_sync.jwks`, cached, fetched again on an
  unknown `kid` and on an `identity.signing_key.rotated` event).
- **API keys** of service accounts (`idp_<key id>_<secret>`): checked by identity-sync over rpc
  (`verify_api_key`), the answer cached briefly.

Revocation: deactivating or deleting a principal, or revoking a key, emits an event that every verifier
receives on core NATS; tokens issued before it are refused from then on. The list of recent revocations
is also fetched at start and every `refresh_interval`, so a verifier that missed events catches up.

Principals seen are batched and reported to identity-sync (`seen`) so `last_seen` costs one write per
batch, not one per request.

Access tokens are checked with PyNaCl (libsodium's Ed25519, ~1 MB resident) rather than PyJWT, whose
`cryptography` costs every verifying process ~8 MB (the plugin proxy's memory target is 64 MB). Only the one
form identity-sync issues is accepted: a compact JWS, `alg` EdDSA, a `kid`, and the registered claims PyJWT
would check (`exp`, `iat`, `nbf`, `iss`, `aud`, `sub`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import msgspec
import nats.errors
from aiohttp import web
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from shared.auth import Principal, bearer_token
from shared.bus import request_rpc
from shared.errors import AuthenticationError, ProblemError, ServiceUnavailableError
from shared.events import DEFAULT_SCOPE, decode_event

log = logging.getLogger(__name__)
T = TypeVar("T")

IDENTITY_SERVICE = "identity_sync"
ISSUER = "seed-idp"
AUDIENCE = "seed-idp"
ALGORITHM = "EdDSA"
CLOCK_SKEW_SECONDS = 30.0
"""How far ahead of this host's clock a token's `iat` or `nbf` may be (identity-sync runs on another host)."""
API_KEY_PREFIX = "idp_"
PrincipalKind = Literal["user", "service_account"]

# Events after which tokens issued earlier must be refused, by the revocation kind they set.
REVOKING_EVENTS = {
    "identity.user.deactivated": "user",
    "identity.user.deleted": "user",
    "identity.service_account.deactivated": "service_account",
    "identity.service_account.deleted": "service_account",
    "identity.api_key.revoked": "api_key",
}
KEY_ROTATED_EVENT = "identity.signing_key.rotated"


# --- wire types of identity-sync's token rpc --------------------------------------------------------


class Jwks(msgspec.Struct, frozen=True):
    """RFC 7517 key set: the public keys that may have signed a live token."""

    keys: list[dict[str, Any]]


class Revocation(msgspec.Struct, frozen=True):
    kind: str
    """`user`, `service_account` or `api_key`."""
    id: str
    revoked_at: float
    """Unix time; credentials of `id` issued at or before it are refused."""


class RevocationList(msgspec.Struct, frozen=True):
    items: list[Revocation]


class RevocationsRequest(msgspec.Struct, frozen=True):
    since: float
    """Revocations after this Unix time (older ones only concern tokens that have expired)."""


class ApiKeyCheck(msgspec.Struct, frozen=True):
    key: str


class ApiKeyPrincipal(msgspec.Struct, frozen=True):
    """Who an API key authenticates, and until when."""

    key_id: str
    kind: str
    id: str
    permissions: list[str]
    expires_at: float
    scope: str = DEFAULT_SCOPE
    """How far the key's permissions reach (its service account's scope or one inside it)."""


class SeenBatch(msgspec.Struct, frozen=True):
    """Principals that used a token, with the Unix time each was last seen."""

    users: dict[str, float] = {}
    service_accounts: dict[str, float] = {}


class Empty(msgspec.Struct, frozen=True):
    pass


def parse_api_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) of an `idp_<key id>_<secret>` key, or None when `token` is not one."""
    if not token.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(API_KEY_PREFIX) :].partition("_")
    if not sep or len(key_id) != 32 or not secret:
        return None
    return key_id, secret


def hash_secret(secret: str) -> bytes:
    """API-key secrets are 256 random bits, so one SHA-256 suffices (no password stretching needed)."""
    return hashlib.sha256(secret.encode()).digest()


# --- access tokens: compact JWS signed with Ed25519 (RFC 7515, RFC 8037) -------------------------------

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
MAX_HEADER_CHARS = 1024
"""Our tokens' header is ~70 characters; a longer one is refused before it is decoded."""


def _base64url(part: str) -> bytes:
    """Unpadded base64url (RFC 7515 §2), strictly: any other character, or unused bits set in the last one (one
    token written several ways), is an error."""
    if not _BASE64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part.encode("ascii"):
        raise ValueError("not canonical base64url")
    return raw


def verify_key(jwk: dict[str, Any]) -> VerifyKey:
    """The Ed25519 public key of an RFC 8037 OKP JWK; ValueError for any other key."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("x"), str):
        raise ValueError("not an Ed25519 public key")
    return VerifyKey(_base64url(jwk["x"]))


class JoseHeader(msgspec.Struct, frozen=True):
    """An access token's protected header. `crit` and `b64` (RFC 7797) are extensions this verifier does not
    implement, so a header that sets either is refused."""

    alg: str
    kid: str
    crit: None = None
    b64: None = None


class AccessClaims(msgspec.Struct, frozen=True):
    """The claims identity-sync signs, typed: a claim of another type refuses the token. Others are ignored."""

    sub: str
    iss: str
    aud: str | list[str]
    iat: float
    exp: float
    nbf: float | None = None
    kind: str | None = None
    perms: list[str] = []
    scope: str = DEFAULT_SCOPE
    key: str | None = None
    """The API key a service account exchanged for this token, if it did (revoking the key revokes the token)."""
    jti: str | None = None


class SignedToken(msgspec.Struct, frozen=True):
    """A compact JWS split into its parts; nothing in it is trusted before `claims` has checked the signature."""

    header: JoseHeader
    signing_input: bytes
    payload: bytes
    signature: bytes

    @classmethod
    def parse(cls, token: str) -> SignedToken:
        try:
            header_part, payload_part, signature_part = token.split(".")
            if len(header_part) > MAX_HEADER_CHARS:
                raise ValueError("header too long")
            header = msgspec.json.decode(_base64url(header_part), type=JoseHeader)
            payload, signature = _base64url(payload_part), _base64url(signature_part)
        except (ValueError, binascii.Error, msgspec.DecodeError, RecursionError):
            raise AuthenticationError("the bearer token is malformed") from None
        signing_input = f"{header_part}.{payload_part}".encode("ascii")
        return cls(header=header, signing_input=signing_input, payload=payload, signature=signature)

    @property
    def key_id(self) -> str:
        """The `kid` of an EdDSA token; tokens of any other algorithm are refused."""
        if self.header.alg != ALGORITHM:
            raise AuthenticationError(f"access tokens must be signed with {ALGORITHM} and name their key")
        return self.header.kid

    def claims(self, key: VerifyKey, now: float) -> AccessClaims:
        """The claims, once the signature is `key`'s and the token is valid at `now` for this issuer and audience."""
        try:
            key.verify(self.signing_input, self.signature)
            claims = msgspec.json.decode(self.payload, type=AccessClaims)
        except (CryptoError, ValueError, msgspec.DecodeError, RecursionError):
            raise AuthenticationError("the token's signature or claims are invalid") from None
        if claims.exp <= now:
            raise AuthenticationError("the token has expired")
        not_before = claims.iat if claims.nbf is None else max(claims.iat, claims.nbf)
        audience = [claims.aud] if isinstance(claims.aud, str) else claims.aud
        if not_before > now + CLOCK_SKEW_SECONDS or claims.iss != ISSUER or AUDIENCE not in audience:
            raise AuthenticationError("the token's signature or claims are invalid")
        return claims


# --- the verifier ------------------------------------------------------------------------------------


class _Cached(msgspec.Struct):
    principal: Principal
    kind: str
    sub: str
    issued_at: float
    expires_at: float
    key_id: str | None
    recheck_at: float = float("inf")
    """When the credential must be checked again from scratch (API keys: identity-sync is asked again)."""


class TokenVerifier:
    """Authenticates bearer JWTs and API keys for one service process.

    `authenticate` returns the principal, None for a credential it does not recognise, or raises
    `AuthenticationError` for one that is expired, forged, revoked or otherwise invalid.
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        refresh_interval: float = 30.0,
        seen_flush_interval: float = 5.0,
        api_key_cache_seconds: float = 30.0,
        revocation_horizon: float = 24 * 3600.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._nc = nc
        self._refresh_interval = refresh_interval
        self._seen_flush_interval = seen_flush_interval
        self._api_key_cache_seconds = api_key_cache_seconds
        self._revocation_horizon = revocation_horizon
        self._cache_size = cache_size
        self._clock = clock
        self._keys: dict[str, VerifyKey] = {}
        self._keys_fetched_at = 0.0
        self._revoked: dict[tuple[str, str], float] = {}
        self._revocations_loaded = False
        self._tokens: OrderedDict[str, _Cached] = OrderedDict()
        self._seen: dict[str, dict[str, float]] = {"user": {}, "service_account": {}}
        self._subscriptions: list[Any] = []
        self._refresh_lock = asyncio.Lock()

    async def start(self) -> None:
        """Listen for revocations and key rotations; keys and the revocation list load on first use."""
        for event_type in (*REVOKING_EVENTS, KEY_ROTATED_EVENT):
            self._subscriptions.append(await self._nc.subscribe(f"idp.evt.{event_type}", cb=self._on_event))

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        self._subscriptions.clear()
        await self.flush_seen()

    async def run(self) -> None:
        """Background upkeep until cancelled: report principals seen, refresh revocations and keys."""
        last_refresh = self._clock()
        while True:
            await asyncio.sleep(self._seen_flush_interval)
            await self.flush_seen()
            if self._clock() - last_refresh >= self._refresh_interval:
                last_refresh = self._clock()
                try:
                    await self._load_revocations()
                    if self._keys:  # a process that never saw a JWT has no keys to keep fresh
                        await self._load_keys()
                except (ProblemError, nats.errors.Error) as exc:  # NATS or identity-sync away: next time
                    log.warning("token verifier refresh failed: %s", exc)

    async def authenticate(self, request: web.Request) -> Principal | None:
        token = bearer_token(request)
        return None if token is None else await self.verify(token)

    async def verify(self, token: str) -> Principal | None:
        cached = self._tokens.get(token)
        if cached is not None and cached.recheck_at <= self._clock():
            del self._tokens[token]
            cached = None
        if cached is None:
            if token.startswith(API_KEY_PREFIX):
                cached = await self._check_api_key(token)
            elif token.count(".") == 2:
                cached = await self._decode_jwt(token)
            else:
                return None
            self._remember(token, cached)
        now = self._clock()
        if cached.expires_at <= now:
            self._tokens.pop(token, None)
            raise AuthenticationError("the token has expired")
        if self._is_revoked(cached):
            raise AuthenticationError("the token has been revoked")
        self._seen[cached.kind][cached.sub] = now
        return cached.principal

    def _is_revoked(self, cached: _Cached) -> bool:
        cutoff = self._revoked.get((cached.kind, cached.sub))
        if cutoff is not None and cached.issued_at <= cutoff:
            return True
        return cached.key_id is not None and ("api_key", cached.key_id) in self._revoked

    def _remember(self, token: str, cached: _Cached) -> None:
        self._tokens[token] = cached
        if len(self._tokens) > self._cache_size:
            self._tokens.popitem(last=False)

    async def _decode_jwt(self, token: str) -> _Cached:
        signed = SignedToken.parse(token)
        kid = signed.key_id
        await self._ensure_revocations()
        key = self._keys.get(kid) or await self._key_after_refresh(kid)
        if key is None:
            raise AuthenticationError("the token is signed with an unknown key")
        claims = signed.claims(key, self._clock())
        if claims.kind not in ("user", "service_account"):
            raise AuthenticationError("the token names no principal kind")
        return _Cached(
            principal=Principal(
                kind=claims.kind, id=claims.sub, permissions=frozenset(claims.perms), scope=claims.scope
            ),
            kind=claims.kind,
            sub=claims.sub,
            issued_at=claims.iat,
            expires_at=claims.exp,
            key_id=claims.key,
        )

    async def _check_api_key(self, token: str) -> _Cached:
        if parse_api_key(token) is None:
            raise AuthenticationError("the API key is malformed")
        await self._ensure_revocations()
        found = await self._ask("verify_api_key", ApiKeyCheck(token), ApiKeyPrincipal)
        now = self._clock()
        return _Cached(
            principal=Principal(
                kind=found.kind, id=found.id, permissions=frozenset(found.permissions), scope=found.scope
            ),
            kind=found.kind,
            sub=found.id,
            issued_at=now,
            expires_at=found.expires_at,
            key_id=found.key_id,
            # Cached briefly: identity-sync checks the key again (expiry, revocation, account) after that.
            recheck_at=now + self._api_key_cache_seconds,
        )

    async def _ask(self, method: str, request: Any, response_type: type[T], timeout: float = 5.0) -> T:
        """Identity-sync's answer; a NATS connection that is down or reconnecting is a 503, not a crash."""
        try:
            return await request_rpc(self._nc, IDENTITY_SERVICE, method, request, response_type, timeout=timeout)
        except nats.errors.Error as exc:
            raise ServiceUnavailableError(f"identity-sync is unreachable: {type(exc).__name__}") from None

    async def _key_after_refresh(self, kid: str) -> VerifyKey | None:
        """The key `kid` after fetching the key set again: a token may be signed by a key rotated in just now.

        Fetches happen at most once a second, so tokens naming made-up keys cannot flood identity-sync.
        """
        async with self._refresh_lock:
            if kid not in self._keys:
                await asyncio.sleep(max(0.0, self._keys_fetched_at + 1.0 - self._clock()))
                await self._fetch_keys()
            return self._keys.get(kid)

    async def _load_keys(self) -> None:
        async with self._refresh_lock:
            await self._fetch_keys()

    async def _fetch_keys(self) -> None:
        jwks = await self._ask("jwks", Empty(), Jwks)
        keys = {}
        for jwk in jwks.keys:
            try:
                keys[jwk["kid"]] = verify_key(jwk)
            except (ValueError, KeyError) as exc:
                log.warning("ignoring an unusable published key: %s", exc)
        self._keys = keys
        self._keys_fetched_at = self._clock()

    async def _ensure_revocations(self) -> None:
        """Fail closed: no credential is accepted before the revocation list has been loaded once."""
        if not self._revocations_loaded:
            await self._load_revocations()

    async def _load_revocations(self) -> None:
        since = self._clock() - self._revocation_horizon
        found = await self._ask("revocations", RevocationsRequest(since), RevocationList)
        for item in found.items:
            self._revoke(item.kind, item.id, item.revoked_at)
        self._revocations_loaded = True

    def _revoke(self, kind: str, id_: str, at: float) -> None:
        key = (kind, id_)
        self._revoked[key] = max(at, self._revoked.get(key, at))
        if kind == "api_key":
            for token in [t for t, c in self._tokens.items() if c.key_id == id_]:
                del self._tokens[token]

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("token verifier: undecodable event on %s", msg.subject)
            return
        kind = REVOKING_EVENTS.get(event.type)
        if kind is not None:
            revoked_id = event.data.get("key_id", event.resource.id) if kind == "api_key" else event.resource.id
            self._revoke(kind, revoked_id, event.time.timestamp())
        elif event.type == KEY_ROTATED_EVENT:
            try:
                await self._load_keys()
            except (ProblemError, nats.errors.Error) as exc:
                log.warning("could not fetch the rotated keys: %s", exc)

    async def flush_seen(self) -> None:
        """Report the principals seen since the last flush; kept for the next one if identity-sync is away."""
        if not any(self._seen.values()):
            return
        batch = SeenBatch(users=self._seen["user"], service_accounts=self._seen["service_account"])
        self._seen = {"user": {}, "service_account": {}}
        try:
            await self._ask("seen", batch, Empty, timeout=2.0)
        except (ProblemError, nats.errors.Error) as exc:
            log.warning("could not report last-seen times: %s", exc)
            for kind, seen in (("user", batch.users), ("service_account", batch.service_accounts)):
                for id_, at in seen.items():
                    self._seen[kind][id_] = max(at, self._seen[kind].get(id_, at))
