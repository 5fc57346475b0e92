"""API-key format and the verifier's revocation rule, without I/O."""

from __future__ import annotations

from shared.auth import Principal
from shared.tokens import TokenVerifier, _Cached, parse_api_key


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
