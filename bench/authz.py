"""Access-control benchmark, in one process: permission checks and Rego policy evaluations.

    python bench/authz.py [--checks 200000] [--evaluations 5000] [--runs 5] [--seed 7]

Builds the organisation issue 5 names: 10,000 users, 1,000 groups nested 3 deep (each user in 2 groups),
200 roles, 5,000 role bindings across 50 orgs x 10 projects, with resource groups of every reach (own scope,
subtree, chosen projects, named resources). Then, per run:
- check latency: `AccessControl.check` for random (user, permission, resource) triples, each timed alone
  (perf_counter_ns around one call); p50/p99/max in microseconds, over warm principals (their grants compiled)
  and, separately, the first check of a principal after a state change (which compiles its grants);
- visibility: `AccessControl.visibility` (what a list endpoint turns into SQL) p50/p99;
- Rego: evaluations per second of a three-rule policy through `PolicyEngine.evaluate`.
Medians over runs are printed as a Markdown table for docs/benchmarks.md.

With `--propagation N`, it also starts NATS and PostgreSQL (bench/stack.py) and all six services in this
process, each with its own NATS connection and access replica, creates N role bindings one after another
through identity-sync's HTTP API, and times each from the request until every service's replica allows the
newly bound user: p50/p99/max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import random
import tempfile
import time
from pathlib import Path

import aiohttp
import stack

from shared.authz import (
    AccessControl,
    Resource,
    ResourceGroup,
    ResourceSelector,
    Role,
    RoleBinding,
    Snapshot,
    all_permissions,
    resource_type_of,
)
from shared.policy import Policy, PolicyEngine, PolicySet
from shared.service import running_service

USERS, GROUPS, ROLES, BINDINGS, ORGS, PROJECTS = 10_000, 1_000, 200, 5_000, 50, 10

POLICY = """package idp.bench
import rego.v1
deny contains msg if { input.entity.kind == "Component"; not input.entity.spec.owner; msg := "owner required" }
deny contains msg if { input.entity.kind == "Component"; not input.entity.spec.lifecycle; msg := "lifecycle required" }
warn contains msg if { count(object.get(input.entity.metadata, "tags", [])) == 0; msg := "no tags" }
"""


def organisation(rng: random.Random) -> tuple[Snapshot, list[str]]:
    orgs = [f"account.org{o}" for o in range(ORGS)]
    projects = [f"{org}.p{p}" for org in orgs for p in range(PROJECTS)]
    permissions = all_permissions()
    roles = [
        Role(f"role{r}", rng.choice(["account", *orgs]), f"role {r}", frozenset(rng.sample(permissions, 8)))
        for r in range(ROLES)
    ]
    # Groups nested 3 deep: 10 roots, 90 children, 900 grandchildren.
    group_parents: dict[str, list[str]] = {}
    for g in range(GROUPS):
        if g >= 100:
            group_parents[f"g{g}"] = [f"g{10 + (g - 100) // 10}"]
        elif g >= 10:
            group_parents[f"g{g}"] = [f"g{(g - 10) // 9}"]
    memberships = {f"user:u{u}": [f"g{rng.randrange(100, GROUPS)}", f"g{rng.randrange(GROUPS)}"] for u in range(USERS)}
    resource_groups, bindings = [], []
    for b in range(BINDINGS):
        scope = rng.choice(orgs) if b % 3 == 0 else rng.choice(projects)
        reach = b % 4
        if reach == 0:
            group = ResourceGroup(f"rg{b}", scope, "all", all_resources=True, include_child_scopes=True)
        elif reach == 1:
            group = ResourceGroup(f"rg{b}", scope, "own", selectors=(ResourceSelector("catalog_entity"),))
        elif reach == 2 and scope.count(".") == 1:
            chosen = tuple(f"{scope}.p{p}" for p in rng.sample(range(PROJECTS), 3))
            group = ResourceGroup(f"rg{b}", scope, "chosen", all_resources=True, child_scopes=chosen)
        else:
            names = frozenset(f"component:default/c{rng.randrange(1000)}" for _ in range(5))
            group = ResourceGroup(f"rg{b}", scope, "named", selectors=(ResourceSelector("catalog_entity", names),))
        role = rng.choice([r for r in roles if scope.startswith(r.scope)] or roles[:1])
        subject = f"group:g{rng.randrange(GROUPS)}" if b % 2 else f"user:u{rng.randrange(USERS)}"
        resource_groups.append(group)
        bindings.append(RoleBinding(f"b{b}", scope, subject, role.id, group.id))
    snapshot = Snapshot(roles, resource_groups, bindings, group_parents, memberships)
    return snapshot, projects


def random_query(rng: random.Random, projects: list[str]) -> tuple[str, str, Resource]:
    permission = rng.choice(all_permissions())
    resource_id = f"component:default/c{rng.randrange(1000)}"
    return (
        f"user:u{rng.randrange(USERS)}",
        permission,
        Resource(resource_type_of(permission), rng.choice(projects), resource_id),
    )


def granted_query(rng: random.Random, snapshot: Snapshot) -> tuple[str, str, Resource]:
    """A check some binding of a user allows: one of its role's permissions on what its resource group selects."""
    roles = {role.id: role for role in snapshot.roles}
    groups = {group.id: group for group in snapshot.resource_groups}
    while True:
        binding = rng.choice(snapshot.bindings)
        group = groups[binding.resource_group_id]
        selected_type = group.selectors[0].type if group.selectors else None
        permissions = sorted(
            p for p in roles[binding.role_id].permissions if selected_type in (None, resource_type_of(p))
        )
        if binding.subject.startswith("user:") and permissions:
            break
    permission = rng.choice(permissions)
    resource_id = next(iter(group.selectors[0].ids), "component:default/c1") if group.selectors else "c1"
    scope = group.child_scopes[0] if group.child_scopes else group.scope
    return binding.subject, permission, Resource(resource_type_of(permission), scope, resource_id)


def percentiles(samples_ns: list[int]) -> tuple[float, float, float]:
    ordered = sorted(samples_ns)
    return (
        ordered[len(ordered) // 2] / 1000,
        ordered[int(len(ordered) * 0.99)] / 1000,
        ordered[-1] / 1000,
    )


def one_run(checks: int, evaluations: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    snapshot, projects = organisation(rng)
    access = AccessControl()
    access.load(snapshot)
    queries = [random_query(rng, projects) if i % 2 else granted_query(rng, snapshot) for i in range(checks)]
    perf = time.perf_counter_ns

    # First checks after a change compile each principal's grants.
    access.put_binding(snapshot.bindings[0])
    cold = []
    for subject, permission, resource in queries[:2000]:
        started = perf()
        access.check(subject, permission, resource)
        cold.append(perf() - started)
    for subject, _, _ in queries:  # warm every principal
        access.subjects_of(subject)
    warm, allowed = [], 0
    for subject, permission, resource in queries:
        started = perf()
        decision = access.check(subject, permission, resource)
        warm.append(perf() - started)
        allowed += decision.allowed
    visible = []
    for subject, permission, _ in queries[:20000]:
        started = perf()
        access.visibility(subject, permission)
        visible.append(perf() - started)

    engine = PolicyEngine()
    engine.load(
        [Policy("p", "account", "bench", POLICY)],
        [PolicySet("s", "account", "bench", ("catalog_entity_create",), ("p",))],
    )
    documents = [
        {"entity": {"kind": "Component", "metadata": {"name": f"c{i}", "tags": []}, "spec": {"owner": "g"}}}
        for i in range(evaluations)
    ]
    started = time.perf_counter()
    for document in documents:
        engine.evaluate("catalog_entity_create", "account.org1.p1", document)
    rego_per_second = evaluations / (time.perf_counter() - started)

    warm_p50, warm_p99, warm_max = percentiles(warm)
    cold_p50, cold_p99, _ = percentiles(cold)
    vis_p50, vis_p99, _ = percentiles(visible)
    return {
        "check_p50": warm_p50,
        "check_p99": warm_p99,
        "check_max": warm_max,
        "first_check_p50": cold_p50,
        "first_check_p99": cold_p99,
        "visibility_p50": vis_p50,
        "visibility_p99": vis_p99,
        "allowed_share": allowed / len(queries),
        "rego_per_second": rego_per_second,
    }


PROPAGATION_SERVICES = ("identity_sync", "catalog", "workflow", "scorecard", "audit", "plugin_proxy")


async def propagation(changes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data_dir, stack.servers(Path(data_dir)) as servers:
        async with contextlib.AsyncExitStack() as services:
            running = []
            for module in PROPAGATION_SERVICES:
                definition = importlib.import_module(f"services.{module}.app").DEFINITION
                settings = definition.settings_type(
                    database_url=servers.database_url,
                    nats_url=servers.nats_url,
                    http_port=0,
                    dev_token=stack.DEV_TOKEN,
                    log_level="WARNING",
                )
                running.append(await services.enter_async_context(running_service(definition, settings)))
            identity = running[0].url
            replicas = [service.deps.access for service in running]
            await asyncio.gather(*(replica.caught_up(0, timeout=60) for replica in replicas))
            headers = {"Authorization": f"Bearer {stack.DEV_TOKEN}"}
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.post(
                    f"{identity}/api/identity/roles",
                    json={"scope": "account.acme", "name": "viewer", "permissions": ["catalog_entity_view"]},
                ) as r:
                    role = await r.json()
                async with http.post(
                    f"{identity}/api/identity/resource-groups",
                    json={"scope": "account.acme", "name": "all", "all_resources": True, "include_child_scopes": True},
                ) as r:
                    group = await r.json()
                resource = Resource("catalog_entity", "account.acme.pay", "component:default/web")
                samples = []
                for change in range(changes):
                    async with http.post(f"{identity}/api/identity/users", json={"username": f"u{change}"}) as r:
                        subject = f"user:{(await r.json())['id']}"
                    started = time.perf_counter()
                    async with http.post(
                        f"{identity}/api/identity/role-bindings",
                        json={
                            "scope": "account.acme",
                            "subject": subject,
                            "role_id": role["id"],
                            "resource_group_id": group["id"],
                        },
                    ) as r:
                        binding = await r.json()
                        assert r.status == 201, binding
                    await asyncio.gather(*(replica.caught_up(binding["version"], timeout=10) for replica in replicas))
                    samples.append((time.perf_counter() - started) * 1000)
                    assert all(replica.control.may(subject, "catalog_entity_view", resource) for replica in replicas)
    samples.sort()
    return {
        "propagation_ms_p50": samples[len(samples) // 2],
        "propagation_ms_p99": samples[int(len(samples) * 0.99)],
        "propagation_ms_max": samples[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200_000)
    parser.add_argument("--evaluations", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--propagation", type=int, default=0, help="binding changes to time across services")
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        result = one_run(args.checks, args.evaluations, args.seed + run)
        if args.propagation:
            result |= asyncio.run(propagation(args.propagation))
        results.append(result)
        stack.print_run(run + 1, result, ".3f")
    stack.print_medians(results, ".3f")


if __name__ == "__main__":
    main()
