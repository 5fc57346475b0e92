"""Filtered catalog list latency with RBAC on vs off (issue 5's target: on ≤ 1.5x off).

    python bench/catalog_rbac.py [--projects 500] [--per-project 40] [--slices 10] [--slice-seconds 3] [--runs 3]

Starts NATS, PostgreSQL, identity-sync and the catalog as their own processes (bench/stack.py), registers one
`file:` location per project scope (50 orgs x 10 projects by default, 40 entities each: 20,000 entities, one in
ten tagged `private` and owned by a team), then times `GET /api/catalog/entities/by-query` (kind=component,
100 a page, with `totalItems`, across every scope: `scope=account&includeChildren=true`) one request at a time,
after `VACUUM ANALYZE` (the steady state autovacuum keeps) and with periodic location refresh off, in slices of a
few seconds per caller taken in turn so that all three see the same machine noise:

- **off**: the dev administrator token (no visibility condition at all);
- **on, account viewer**: a user bound to Viewer at the account (every scope; restricted entities filtered to
  the ones its team owns);
- **on, 5 orgs**: a user bound to Viewer on 5 orgs' subtrees plus named entities (scope conditions and the
  restricted filter).

Prints req/s, p50 and p99 per caller and the latency ratios to off, per run, and the medians over runs as a
Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import stack

ORGS = 50
QUERY = {"filter": "kind=component", "limit": "100", "scope": "account", "includeChildren": "true"}


def write_locations(root: Path, projects: int, per_project: int) -> list[tuple[str, Path]]:
    """One YAML file per project scope: components, one in ten private to team-<org>."""
    files = []
    for index in range(projects):
        org, project = index % ORGS, index // ORGS
        scope = f"account.org{org}.p{project}"
        documents = []
        for n in range(per_project):
            private = n % 10 == 0
            documents.append(
                "apiVersion: backstage.io/v1alpha1\nkind: Component\n"
                f"metadata: {{name: svc-{index}-{n}, tags: [{'private' if private else 'public'}]}}\n"
                f"spec: {{type: service, lifecycle: production, owner: group:team-org{org}}}\n"
            )
        path = root / f"{scope}.yaml"
        path.write_text("---\n".join(documents))
        files.append((scope, path))
    return files


async def request_json(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> dict:
    async with http.request(method, url, **kwargs) as response:
        body = await response.json()
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: {response.status} {body}")
        return body


async def user_token(http: aiohttp.ClientSession, identity: str, name: str) -> tuple[str, str]:
    user = await request_json(http, "POST", f"{identity}/api/identity/users", json={"username": name})
    token = await request_json(http, "POST", f"{identity}/api/identity/users/{user['id']}/tokens")
    return user["id"], token["access_token"]


async def bind(http: aiohttp.ClientSession, identity: str, subject: str, scope: str, **reach) -> int:
    group = await request_json(
        http,
        "POST",
        f"{identity}/api/identity/resource-groups",
        json={"scope": scope, "name": f"{subject} at {scope}", **reach},
    )
    binding = await request_json(
        http,
        "POST",
        f"{identity}/api/identity/role-bindings",
        json={"scope": scope, "subject": subject, "role_id": "_viewer", "resource_group_id": group["id"]},
    )
    return binding["version"]


async def one_run(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, stack.servers(Path(tmp)) as servers:
        locations = Path(tmp) / "locations"
        locations.mkdir()
        identity = stack.start_service("identity_sync", servers, Path(tmp) / "identity.log")
        catalog = stack.start_service(
            "catalog",
            servers,
            Path(tmp) / "catalog.log",
            IDP_FILE_LOCATION_ROOTS=str(locations),
            IDP_REFRESH_INTERVAL_SECONDS="86400",  # no periodic re-read of the 500 locations while measuring
        )
        try:
            admin = {"Authorization": f"Bearer {stack.DEV_TOKEN}"}
            async with aiohttp.ClientSession(headers=admin) as http:
                started = time.perf_counter()
                for scope, path in write_locations(locations, args.projects, args.per_project):
                    await request_json(
                        http,
                        "POST",
                        f"{catalog.url}/api/catalog/locations",
                        params={"scope": scope},
                        json={"type": "file", "target": str(path)},
                    )
                print(f"  {args.projects * args.per_project} entities in {time.perf_counter() - started:.0f} s")
                # The teams own the private entities; the mirror writes them into the catalog as Group entities.
                viewer_id, viewer = await user_token(http, identity.url, "viewer")
                scoped_id, scoped = await user_token(http, identity.url, "scoped")
                for org in range(ORGS):
                    team = await request_json(
                        http, "POST", f"{identity.url}/api/identity/groups", json={"name": f"team-org{org}"}
                    )
                    if org < 5:
                        for member in (viewer_id, scoped_id):
                            url = f"{identity.url}/api/identity/groups/{team['id']}/members/{member}"
                            async with http.put(url) as response:
                                assert response.status == 204
                await bind(
                    http, identity.url, f"user:{viewer_id}", "account", all_resources=True, include_child_scopes=True
                )
                for org in range(5):
                    await bind(
                        http,
                        identity.url,
                        f"user:{scoped_id}",
                        f"account.org{org}",
                        all_resources=True,
                        include_child_scopes=True,
                    )
                await bind(
                    http,
                    identity.url,
                    f"user:{scoped_id}",
                    "account.org9.p0",
                    selectors=[{"type": "catalog_entity", "ids": [f"component:default/svc-9-{n}" for n in range(5)]}],
                )
                await asyncio.sleep(3)  # the catalog's replica and mirror catch up
                # Steady state, as autovacuum leaves it: fresh statistics and no GIN pending list from the load.
                conn = await asyncpg.connect(servers.database_url)
                await conn.execute("VACUUM ANALYZE catalog.entities")
                await conn.close()
                callers = {"off": stack.DEV_TOKEN, "account viewer": viewer, "5 orgs": scoped}
                samples: dict[str, list[float]] = {name: [] for name in callers}
                totals = {}
                url = f"{catalog.url}/api/catalog/entities/by-query"
                # Short slices per caller in turn, so that each sees the same machine noise.
                for _ in range(args.slices):
                    for name, token in callers.items():
                        headers = {"Authorization": f"Bearer {token}"}
                        ends = time.perf_counter() + args.slice_seconds
                        while (began := time.perf_counter()) < ends:
                            async with http.get(url, params=QUERY, headers=headers) as r:
                                body = await r.json()
                                assert r.status == 200, body
                            samples[name].append((time.perf_counter() - began) * 1000)
                            totals[name] = body["totalItems"]
                print(f"  totalItems: {totals}")
        finally:
            catalog.stop()
            identity.stop()
    result = {}
    for name, values in samples.items():
        result[f"{name} req/s"] = len(values) / (args.slices * args.slice_seconds)
        values.sort()
        result[f"{name} p50 ms"] = values[len(values) // 2]
        result[f"{name} p99 ms"] = values[int(len(values) * 0.99)]
    for name in ("account viewer", "5 orgs"):
        result[f"{name} / off p50"] = result[f"{name} p50 ms"] / result["off p50 ms"]
        result[f"{name} / off p99"] = result[f"{name} p99 ms"] / result["off p99 ms"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=500)
    parser.add_argument("--per-project", type=int, default=40)
    parser.add_argument("--slices", type=int, default=10, help="slices per caller, in turn")
    parser.add_argument("--slice-seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        result = asyncio.run(one_run(args))
        results.append(result)
        stack.print_run(run + 1, result)
    stack.print_medians(results)


if __name__ == "__main__":
    main()
