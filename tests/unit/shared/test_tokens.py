"""API-key format, access-token checks and the verifier's revocation rule, without I/O."""

from __future__ import annotations

import base64
import subprocess
import sys

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey

from shared.auth import Principal
from shared.errors import AuthenticationError
from shared.tokens import SignedToken, TokenVerifier, _Cached, parse_api_key, verify_key


def test_api_keys_parse_into_id_and_secret():
    key_id = "0123456789abcdef0123456789abcdef"
    assert parse_api_key(f"idp_{key_id}_se_cr_et") == (key_id, "se_cr_et")
    for bad in ("idp_short_secret", f"idp_{key_id}", f"idp_{key_id}_", "eyJ.a.b", f"xdp_{key_id}_s"):
        assert parse_api_key(bad) is None


def cached(issued_at: float, key_id: str | None = None) -> _Cached:
    return _Cached(Principal("user", "u1"), "user", "u1", issued_at, issued_at + 900, key_id)


def test_credentials_issued_before_a_revocation_are_refused():
    verifier = TokenVerifier(nc=None)  # type: ignore[arg-type]
    verifier._revoke("user", "u1", 100.0)
    assert verifier._is_revoked(cached(99.5)) and verifier._is_revoked(cached(100.0))
    assert not verifier._is_revoked(cached(100.001)), "a token issued after a reactivation is valid"
    verifier._revoke("user", "u1", 50.0)
    assert verifier._is_revoked(cached(99.5)), "an older revocation never moves the cutoff back"
    verifier._revoke("api_key", "k1", 10.0)
    assert verifier._is_revoked(_Cached(Principal("service_account", "s"), "service_account", "s", 200, 900, "k1"))


async def test_a_cached_api_key_is_checked_again_when_its_cache_entry_lapses():
    now = [1000.0]
    verifier = TokenVerifier(nc=None, clock=lambda: now[0], api_key_cache_seconds=30)  # type: ignore[arg-type]
    checks = []

    async def check(token):
        checks.append(token)
        return _Cached(Principal("service_account", "s"), "service_account", "s", now[0], 10_000, "k", now[0] + 30)

    verifier._check_api_key = check
    key = "idp_" + "0" * 32 + "_secret"
    await verifier.verify(key)
    now[0] += 10
    await verifier.verify(key)
    now[0] += 30
    assert (await verifier.verify(key)).id == "s" and len(checks) == 2


# --- access tokens: signed by PyJWT with cryptography exactly as identity-sync signs them, checked with PyNaCl ---

NOW = 1_800_000_000.0
CLAIMS = {"sub": "u1", "kind": "user", "iss": "seed-idp", "aud": "seed-idp", "iat": NOW - 10, "exp": NOW + 900}


def signing_key() -> tuple[Ed25519PrivateKey, VerifyKey]:
    private = Ed25519PrivateKey.generate()
    jwk = {"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": _b64url(private.public_key().public_bytes_raw())}
    return private, verify_key(jwk)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def issue(private: Ed25519PrivateKey, headers: dict | None = None, **claims) -> str:
    body = {k: v for k, v in {**CLAIMS, **claims}.items() if v is not None}
    return jwt.encode(body, private, algorithm="EdDSA", headers={"kid": "k1", **(headers or {})})


def refusal(token: str, key: VerifyKey, now: float = NOW) -> str:
    with pytest.raises(AuthenticationError) as raised:
        signed = SignedToken.parse(token)
        assert signed.key_id == "k1"
        signed.claims(key, now)
    return raised.value.detail


def test_an_identity_sync_token_verifies_with_its_published_key():
    private, key = signing_key()
    signed = SignedToken.parse(issue(private, perms=["catalog_entity_view"]))
    assert signed.key_id == "k1"
    claims = signed.claims(key, NOW)
    assert (claims.sub, claims.kind, claims.iat, claims.exp) == ("u1", "user", NOW - 10, NOW + 900)
    assert (claims.perms, claims.scope, claims.key) == (["catalog_entity_view"], "account", None)
    assert SignedToken.parse(issue(private, aud=["other", "seed-idp"])).claims(key, NOW).sub == "u1"


def test_forged_tampered_and_other_algorithms_are_refused():
    private, key = signing_key()
    token = issue(private)
    header, payload, signature = token.split(".")
    other = _b64url(msgspec.json.encode({**CLAIMS, "sub": "admin"}))
    assert "signature" in refusal(issue(Ed25519PrivateKey.generate()), key)
    assert "signature" in refusal(f"{header}.{other}.{signature}", key)
    short = _b64url(base64.urlsafe_b64decode(signature + "==")[:-3])
    assert "signature" in refusal(f"{header}.{payload}.{short}", key)
    unsigned = jwt.encode(CLAIMS, None, algorithm="none", headers={"kid": "k1"})
    assert "EdDSA" in refusal(unsigned, key)
    hmac_signed = jwt.encode(CLAIMS, "secret-that-is-long-enough-for-hs256!", algorithm="HS256", headers={"kid": "k1"})
    assert "EdDSA" in refusal(hmac_signed, key)
    # Extensions this verifier does not implement, a missing or odd `kid`, and headers too large to be ours.
    for headers in ({"crit": ["exp"]}, {"b64": False}):
        assert "malformed" in refusal(issue(private, headers=headers), key), headers
    numeric_kid = _b64url(b'{"alg": "EdDSA", "kid": 5}')
    nested = _b64url(b"[" * 100_000 + b"]" * 100_000)
    deep = _b64url(b'{"alg": "EdDSA", "kid": "k1", "x": ' + b"[" * 600 + b"]" * 600 + b"}")
    for malformed in ("a.b.c", f"{header}=.{payload}.{signature}", f"{header}.{payload}.{signature}!", "x.y", ".."):
        assert "malformed" in refusal(malformed, key), malformed
    for malformed in (f"{numeric_kid}.{payload}.{signature}", f"{nested}.{payload}.{signature}"):
        assert "malformed" in refusal(malformed, key)
    for malformed in (f"{nested}.{payload}.{signature}", f"{deep}.{payload}.{signature}"):
        assert "malformed" in refusal(malformed, key), "refused, not a RecursionError"
    # The unused low bits of the last character: the same signature written another way.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(signature[-1])
    twin = signature[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1]
    assert "malformed" in refusal(f"{header}.{payload}.{twin}", key)


def test_claims_are_checked_as_pyjwt_checks_them():
    private, key = signing_key()
    assert "expired" in refusal(issue(private, exp=NOW), key)
    assert "invalid" in refusal(issue(private, iss="someone-else"), key)
    assert "invalid" in refusal(issue(private, aud="another-audience"), key)
    assert "invalid" in refusal(issue(private, iat=NOW + 31), key), "issued in the future, beyond the clock skew"
    assert "invalid" in refusal(issue(private, nbf=NOW + 60), key)
    assert SignedToken.parse(issue(private, iat=NOW + 5)).claims(key, NOW), "within the clock skew"
    for name in ("exp", "iat", "sub", "iss", "aud"):
        assert "invalid" in refusal(issue(private, **{name: None}), key), f"{name} is required"
    odd = {"exp": True, "iat": str(NOW), "aud": ["seed-idp", 5], "perms": 5, "key": [1], "scope": 3, "sub": 7}
    for name, value in {**odd, "exp": 10**400}.items():
        assert "invalid" in refusal(issue(private, **{name: value}), key), f"{name}={value!r} is refused"


def test_only_ed25519_keys_are_used():
    for jwk in (
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "x": _b64url(b"1" * 32)},
        {"kty": "OKP", "crv": "Ed25519", "x": _b64url(b"1" * 31)},
        {"kty": "OKP", "crv": "Ed25519"},
    ):
        with pytest.raises(ValueError):
            verify_key(jwk)


def test_verifying_tokens_loads_neither_pyjwt_nor_cryptography():
    """The plugin proxy's 64 MB target: `cryptography` alone is ~8 MB resident."""
    check = (
        "import sys, services.plugin_proxy.app, shared.tokens; "
        "assert not {'jwt', 'cryptography'} & {m.split('.')[0] for m in sys.modules}, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
