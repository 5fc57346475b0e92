"""Identity-sync benchmark (issue 4): directory and SCIM sync, token verification, offboarding latency.

    python bench/identity.py [--users 10000] [--groups 1000] [--runs 3] [--scim-concurrency 8]

Per run, on fresh NATS and PostgreSQL (embedded, or IDP_NATS_URL / IDP_DATABASE_URL) with identity-sync and
the catalog as their own processes:
- ldap: a real slapd seeded with N users and G nested groups (each user in one group); wall time of
  `POST /api/identity/ldap/sync` (paged reads, then one transaction with every event in the outbox);
- scim: N users then G groups (members in the group's POST) created as a provisioning client does, with a
  `userName eq` lookup before each user, `--scim-concurrency` clients, a service-account API key; wall time;
- verify/s: access tokens verified by one process's `shared.tokens.TokenVerifier`, both the full check
  (EdDSA signature, claims, revocation) and a repeat of a token already checked (cached signature);
- offboarding: a SCIM `active: false` PATCH → the catalog refuses the user's token (401), and → the catalog's
  User entity carries `identity-status: inactive`; median of 5 users, after the catalog mirrored the sync.
Medians over runs are printed as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import stack
import yaml

sys.path.insert(0, str(stack.ROOT))
from shared import bus
from shared.tokens import TokenVerifier
from tests.integration.identity_sync.slapd import ADMIN_DN, ADMIN_PASSWORD, SUFFIX, Slapd

AUTH = {"Authorization": f"Bearer {stack.DEV_TOKEN}"}
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def seed_directory(slapd: Slapd, users: int, groups: int) -> None:
    """N inetOrgPersons and G groupOfNames: group i nests under group (i - 1) // 10, user j is in group j % G."""
    members: dict[int, list[str]] = {g: [] for g in range(groups)}
    for j in range(users):
        members[j % groups].append(f"uid=user{j},ou=people,{SUFFIX}")
    for g in range(1, groups):
        members[(g - 1) // 10].append(f"cn=group{g},ou=groups,{SUFFIX}")
    with slapd.connect() as conn:
        conn.add(SUFFIX, ["dcObject", "organization"], {"o": "Bench", "dc": "example"})
        for ou in ("people", "groups"):
            conn.add(f"ou={ou},{SUFFIX}", ["organizationalUnit"], {"ou": ou})
        for j in range(users):
            conn.add(
                f"uid=user{j},ou=people,{SUFFIX}",
                ["inetOrgPerson"],
                {"cn": f"User {j}", "sn": str(j), "uid": f"user{j}", "mail": f"user{j}@example.org"},
            )
        for g in range(groups):
            conn.add(f"cn=group{g},ou=groups,{SUFFIX}", ["groupOfNames"], {"cn": f"group{g}", "member": members[g]})


async def ldap_sync(session: aiohttp.ClientSession, identity: str) -> tuple[float, dict]:
    started = time.perf_counter()
    async with session.post(f"{identity}/api/identity/ldap/sync", headers=AUTH) as r:
        run = await r.json()
        assert r.status == 200, run
    return time.perf_counter() - started, run


async def scim_key(session: aiohttp.ClientSession, identity: str) -> str:
    async with session.post(f"{identity}/api/identity/service-accounts", json={"name": "idp-scim"}, headers=AUTH) as r:
        account = await r.json()
    body = {"name": "bench", "permissions": ["identity_scim_view", "identity_scim_edit"]}
    async with session.post(
        f"{identity}/api/identity/service-accounts/{account['id']}/keys", json=body, headers=AUTH
    ) as r:
        return (await r.json())["key"]


async def scim_sync(session: aiohttp.ClientSession, identity: str, key: str, users: int, groups: int, workers: int):
    """Wall time to provision `users` then `groups` through SCIM; returns it and the user ids."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/scim+json"}
    base = f"{identity}/scim/v2"
    ids: list[str] = [""] * users
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def provision_users() -> None:
        while not queue.empty():
            j = queue.get_nowait()
            name = f"scim{j}@example.org"
            async with session.get(f'{base}/Users?filter=userName eq "{name}"', headers=headers) as r:
                assert r.status == 200 and (await r.json())["totalResults"] == 0
            body = {"schemas": [CORE_USER], "userName": name, "displayName": f"Scim {j}", "active": True}
            async with session.post(f"{base}/Users", json=body, headers=headers) as r:
                created = await r.json()
                assert r.status == 201, created
                ids[j] = created["id"]

    async def provision_groups() -> None:
        while not queue.empty():
            g = queue.get_nowait()
            members = [{"value": ids[j]} for j in range(g, users, groups)]
            body = {"schemas": [CORE_GROUP], "displayName": f"Scim Group {g}", "members": members}
            async with session.post(f"{base}/Groups", json=body, headers=headers) as r:
                assert r.status == 201, await r.text()

    started = time.perf_counter()
    for j in range(users):
        queue.put_nowait(j)
    await asyncio.gather(*(provision_users() for _ in range(workers)))
    for g in range(groups):
        queue.put_nowait(g)
    await asyncio.gather(*(provision_groups() for _ in range(workers)))
    return time.perf_counter() - started, ids


async def user_token(session: aiohttp.ClientSession, identity: str, user_id: str) -> str:
    async with session.post(f"{identity}/api/identity/users/{user_id}/tokens", headers=AUTH) as r:
        return (await r.json())["access_token"]


async def verification_rates(nats_url: str, tokens: list[str], seconds: float = 3.0) -> tuple[float, float]:
    """(full verifications/s over distinct tokens, repeat verifications/s of one checked token)."""
    nc = await bus.connect(nats_url, "bench-verifier")
    try:
        full = TokenVerifier(nc, cache_size=0)
        cached = TokenVerifier(nc)
        await full.verify(tokens[0])
        await cached.verify(tokens[0])
        rates = []
        for verifier in (full, cached):
            count, deadline = 0, time.perf_counter() + seconds
            started = time.perf_counter()
            while time.perf_counter() < deadline:
                for token in tokens if verifier is full else tokens[:1] * 100:
                    await verifier.verify(token)
                count += len(tokens) if verifier is full else 100
            rates.append(count / (time.perf_counter() - started))
        return rates[0], rates[1]
    finally:
        await nc.close()


async def wait_mirrored(session: aiohttp.ClientSession, catalog: str, group: str, members: int) -> float:
    """Seconds until the catalog shows the last SCIM group with all its members: the mirror has caught up."""
    started = time.perf_counter()
    while time.perf_counter() - started < 1800:
        async with session.get(f"{catalog}/api/catalog/entities/by-name/group/default/{group}", headers=AUTH) as r:
            if r.status == 200 and len((await r.json())["spec"].get("members", [])) == members:
                return time.perf_counter() - started
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the catalog did not mirror {group}")


async def offboarding(session, identity: str, catalog: str, key: str, user_id: str, name: str) -> tuple[float, float]:
    """(PATCH active=false → catalog refuses the token, → catalog entity inactive), in seconds."""
    token = await user_token(session, identity, user_id)
    bearer = {"Authorization": f"Bearer {token}"}
    async with session.get(f"{catalog}/api/catalog/entities", headers=bearer, params={"limit": "1"}) as r:
        assert r.status == 403, r.status  # authenticated, no permissions
    body = {"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": False}]}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/scim+json"}
    started = time.perf_counter()
    async with session.patch(f"{identity}/scim/v2/Users/{user_id}", json=body, headers=headers) as r:
        assert r.status in (200, 204), await r.text()
    rejected = mirrored = None
    entity_url = f"{catalog}/api/catalog/entities/by-name/user/default/{name}"
    while rejected is None or mirrored is None:
        now = time.perf_counter() - started
        if rejected is None:
            async with session.get(f"{catalog}/api/catalog/entities", headers=bearer, params={"limit": "1"}) as r:
                rejected = now if r.status == 401 else None
        if mirrored is None:
            async with session.get(entity_url, headers=AUTH) as r:
                annotations = (await r.json())["metadata"].get("annotations", {}) if r.status == 200 else {}
                mirrored = now if annotations.get("seed-idp.dev/identity-status") == "inactive" else None
        if now > 60:
            raise TimeoutError("offboarding did not propagate within 60 s")
        await asyncio.sleep(0.005)
    return rejected, mirrored


async def one_run(args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    slapd = Slapd(data_dir / "slapd").start()
    try:
        seed_directory(slapd, args.users, args.groups)
        config = data_dir / "identity.yaml"
        ldap = {
            "url": slapd.url,
            "bind_dn": ADMIN_DN,
            "bind_password": ADMIN_PASSWORD,
            "user_base_dn": f"ou=people,{SUFFIX}",
            "group_base_dn": f"ou=groups,{SUFFIX}",
            "strategy": "keep",
        }
        config.write_text(yaml.safe_dump({"ldap": ldap}))
        with stack.servers(data_dir) as servers:
            catalog = stack.start_service("catalog", servers, data_dir / "catalog.log")
            identity = stack.start_service(
                "identity_sync",
                servers,
                data_dir / "identity.log",
                IDP_CONFIG=str(config),
                IDP_CATALOG_URL=catalog.url,
            )
            try:
                timeout = aiohttp.ClientTimeout(total=3600)
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    ldap_seconds, run = await ldap_sync(session, identity.url)
                    print(f"  ldap sync: {ldap_seconds:.1f} s ({run['created']} created)", flush=True)
                    key = await scim_key(session, identity.url)
                    scim_seconds, ids = await scim_sync(
                        session, identity.url, key, args.users, args.groups, args.scim_concurrency
                    )
                    print(f"  scim sync: {scim_seconds:.1f} s", flush=True)
                    tokens = [await user_token(session, identity.url, i) for i in ids[:200]]
                    full, cached = await verification_rates(servers.nats_url, tokens)
                    print(f"  verify/s: {full:,.0f} full, {cached:,.0f} cached", flush=True)
                    last = args.groups - 1
                    members = len(range(last, args.users, args.groups))
                    drained = await wait_mirrored(session, catalog.url, f"scim-group-{last}", members)
                    print(f"  catalog mirrored everything {drained:.1f} s after the SCIM sync", flush=True)
                    lags = [
                        await offboarding(session, identity.url, catalog.url, key, ids[j], f"scim{j}_example.org")
                        for j in range(5)
                    ]
                    print(f"  offboarding lags: {lags}", flush=True)
            finally:
                identity.stop()
                catalog.stop()
    finally:
        slapd.stop()
    return {
        "ldap_s": ldap_seconds,
        "scim_s": scim_seconds,
        "verify_full": full,
        "verify_cached": cached,
        "rejected_ms": statistics.median(r for r, _ in lags) * 1000,
        "mirrored_ms": statistics.median(m for _, m in lags) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scim-concurrency", type=int, default=8)
    args = parser.parse_args()
    results = []
    for run in range(1, args.runs + 1):
        print(f"run {run}/{args.runs}: {args.users} users, {args.groups} groups", flush=True)
        with tempfile.TemporaryDirectory(prefix="idp-bench-identity-") as tmp:
            results.append(asyncio.run(one_run(args, Path(tmp))))
    print(
        "\n| run | LDAP sync | SCIM sync | verify/s (full) | verify/s (cached) "
        "| deactivation → token refused | → catalog updated |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = [*enumerate(results, 1), ("**median**", {k: statistics.median(r[k] for r in results) for k in results[0]})]
    for label, r in rows:
        print(
            f"| {label} | {r['ldap_s']:.1f} s | {r['scim_s']:.1f} s | {r['verify_full']:,.0f} | "
            f"{r['verify_cached']:,.0f} | {r['rejected_ms']:.0f} ms | {r['mirrored_ms']:.0f} ms |"
        )


if __name__ == "__main__":
    main()
