"""Catalog benchmark on the shared generator's realistic organisation (../shared/bench/gen_entities.py).

    python bench/catalog.py --entities 100000 [--concurrency 50] [--seconds 10] [--data-dir DIR]

Starts NATS and PostgreSQL (embedded, or IDP_NATS_URL / IDP_DATABASE_URL) and the catalog as its own process,
registers the generated `location.yaml` (one `file:` Location whose targets hold all N entities) and times it
until the response, when every entity and relation is committed and queryable (checked afterwards: entities
served and relations in the served entities against the generator's manifest), with the CPU seconds the catalog
and the embedded PostgreSQL spent. Then it times the ingestion API setting one property on every component
(batches of 10,000; `--skip-ingest-api` leaves it out), waits until the outbox has published every event and the
VACUUM after the bulk read is done, and loads the catalog with `--concurrency` clients, then with one, for
`--seconds` each: `GET /entities/by-name` of random components, a filtered `by-query` (a random one of 54
filters: component type, lifecycle and language tag, at a random page of the first ten), a full-text `by-query`
(a random component's name prefix), ranked `GET /search` (name prefix, then a partial word inside a name) and
`GET /entity-facets` (one of the facets Backstage's catalog page asks for: kind, then type, lifecycle, owner, tags
and namespace of components); req/s, p50 and p99 of each. Every scenario draws its requests from 5,000 random
paths, so in-process caches see as many distinct entities and queries. Load comes from `wrk` when it is installed
(the tool of Backstage's baseline in ../shared/bench/README.md), else from an aiohttp client in this process. Peak
RSS is the catalog process's.

`--data-dir DIR` keeps the generated entities, NATS and PostgreSQL in DIR instead of a temporary directory; a
later run with the same DIR and `--entities` finds the location registered and goes straight to the load (the
ingest figures are then left out). `--scenarios` runs only the named load scenarios. `--warm` loads each scenario
once, unmeasured, before measuring it: the figures are then the steady state with the read caches holding the
scenario's paths, without the first fetch of each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import psutil
import stack

GENERATOR = stack.ROOT.parent / "shared" / "bench" / "gen_entities.py"
INGEST_BATCH = 10_000
WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
"""


class PeakRss(threading.Thread):
    """Samples a process's RSS every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.running = psutil.Process(pid), 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.1)


async def python_load(
    session: aiohttp.ClientSession, base: str, paths: list[str], args, clients: int
) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + args.seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(base + random.choice(paths)) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_load(wrk: str, base: str, paths: list[str], args, tmp: Path, clients: int) -> dict[str, float]:
    (tmp / "paths.txt").write_text("\n".join(paths) + "\n")
    (tmp / "paths.lua").write_text(WRK_SCRIPT)
    threads = min(2, clients)
    command = [wrk, f"-t{threads}", f"-c{clients}", f"-d{args.seconds}s", "--timeout", "60s", "--latency"]
    command += ["-s", str(tmp / "paths.lua")]
    output = subprocess.run(
        [*command, "-H", f"Authorization: Bearer {stack.DEV_TOKEN}", base],
        check=True,
        capture_output=True,
        text=True,
        env={"BENCH_PATHS": str(tmp / "paths.txt")},
    ).stdout
    assert "Non-2xx" not in output, output
    return {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", output).group(1)),
        "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", output).group(1)),
    }


def cpu_seconds(catalog_pid: int, postgres_dir: Path) -> dict[str, float]:
    """CPU time used so far by the catalog and by the embedded PostgreSQL's processes: on a shared machine it
    says what the work cost where wall time also says how busy the neighbours were."""
    used = {"catalog": sum(psutil.Process(catalog_pid).cpu_times()[:2])}
    pid_file = postgres_dir / "postmaster.pid"
    if pid_file.exists():
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        used["postgres"] = sum(sum(p.cpu_times()[:2]) for p in [postmaster, *postmaster.children()])
    return used


def progress(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, file=sys.stderr, flush=True)


async def served_counts(database_url: str) -> tuple[int, int]:
    """Entities served and relations in their served form, read straight from the catalog's schema."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS entities, sum(jsonb_array_length(final_entity::jsonb -> 'relations')) AS relations "
            "FROM catalog.entities WHERE final_entity IS NOT NULL"
        )
        return row["entities"], row["relations"]
    finally:
        await conn.close()


async def settled(database_url: str) -> float:
    """Seconds until the catalog's outbox has published every event and its VACUUM after the bulk read is done."""
    started = time.perf_counter()
    conn = await asyncpg.connect(database_url)
    try:
        busy = True
        while busy:
            busy = await conn.fetchval(
                # `query` stays a connection's last statement while it idles in the pool: only a running VACUUM counts.
                "SELECT (SELECT count(*) FROM catalog.outbox WHERE sent_at IS NULL) + (SELECT count(*) "
                "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                "AND query ILIKE 'VACUUM%')"
            )
            await asyncio.sleep(0.5 if busy else 0)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def ingest_properties(session: aiohttp.ClientSession, url: str, refs: list[str]) -> float:
    """Seconds to set one annotation on every entity of `refs` through the ingestion API."""
    items = [{"entityRef": ref, "properties": {"metadata.annotations.bench/tier": "gold"}} for ref in refs]
    started = time.perf_counter()
    for start in range(0, len(items), INGEST_BATCH):
        async with session.post(f"{url}/api/catalog/ingest", json={"items": items[start : start + INGEST_BATCH]}) as r:
            assert r.status == 200, await r.text()
    return time.perf_counter() - started


async def registered(session: aiohttp.ClientSession, url: str, target: Path) -> dict | None:
    """The location already registered for `target` (a run on a kept `--data-dir`), or None."""
    async with session.get(f"{url}/api/catalog/locations") as r:
        assert r.status == 200, await r.text()
        return next((item["data"] for item in await r.json() if item["data"]["target"] == str(target)), None)


async def ingest_location(
    session: aiohttp.ClientSession, catalog: stack.ServiceProcess, data: Path, postgres_dir: Path, rss: PeakRss
) -> dict[str, object]:
    """Registers the generated location and times it until every entity and relation is served."""
    cpu_before = cpu_seconds(catalog.process.pid, postgres_dir)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    async with session.post(
        f"{catalog.url}/api/catalog/locations", json={"type": "file", "target": str(data / "location.yaml")}
    ) as r:
        body = await r.json()
        assert r.status == 201, body
    ingest_s = time.perf_counter() - started
    cpu_after = cpu_seconds(catalog.process.pid, postgres_dir)
    ingest_cpu = {k: round(v - cpu_before[k], 1) for k, v in cpu_after.items()}
    # The machine is shared: the 1-minute load average before and after says how busy it was.
    ingest_load = (round(load_before, 1), round(os.getloadavg()[0], 1))
    progress(f"location ingested in {ingest_s:.1f} s, CPU {ingest_cpu}, RSS {rss.peak / 2**20:.0f} MiB")
    return {
        "ingest_s": ingest_s,
        "ingest_cpu_s": ingest_cpu,
        "ingest_load_average": ingest_load,
        "location_errors": len(body["location"].get("errors", [])),
    }


# What Backstage's catalog page asks on every load: its pickers' facets.
CATALOG_PAGE_FACETS = (
    "facet=kind",
    *(
        f"facet={key}&filter=kind=component"
        for key in ("spec.type", "spec.lifecycle", "relations.ownedBy", "metadata.tags", "metadata.namespace")
    ),
)


def query_paths(names: list[str]) -> dict[str, Callable[[], str]]:
    """Each load scenario's random request path."""
    api = "/api/catalog/entities"

    def filtered() -> str:
        filter_ = ",".join(
            [
                "kind=component",
                f"spec.type={random.choice(('service', 'website', 'library'))}",
                f"spec.lifecycle={random.choice(('production', 'experimental', 'deprecated'))}",
                f"metadata.tags={random.choice(('java', 'go', 'python', 'typescript', 'rust', 'kotlin'))}",
            ]
        )
        return f"{api}/by-query?filter={filter_}&limit=100&offset={100 * random.randrange(10)}"

    return {
        "by_name": lambda: f"{api}/by-name/component/default/{random.choice(names)}",
        "filtered_by_query": filtered,
        "full_text_by_query": lambda: (
            f"{api}/by-query?fullTextFilterTerm={random.choice(names)[:6]}&fullTextFilterFields=metadata.name&limit=20"
        ),
        "search": lambda: f"/api/catalog/search?q={random.choice(names)[:6]}&limit=20",
        # The first word of a name less its first letter (`tidal-…` → `idal`): found by trigrams only.
        "infix_search": lambda: f"/api/catalog/search?q={random.choice(names).split('-')[0][1:6]}&limit=20",
        "facets": lambda: f"/api/catalog/entity-facets?{random.choice(CATALOG_PAGE_FACETS)}",
    }


async def run(args: argparse.Namespace, data: Path, tmp: Path) -> dict[str, object]:
    manifest = json.loads((data / "manifest.json").read_text())
    names = manifest.get("component_names") or (data / "component-names.txt").read_text().split()
    wrk = shutil.which("wrk")
    postgres_dir = tmp / "postgres"  # where `stack.servers` puts the embedded cluster
    with stack.servers(tmp) as servers:
        catalog = stack.start_service(
            "catalog",
            servers,
            tmp / "catalog.log",
            IDP_FILE_LOCATION_ROOTS=str(data),
            IDP_REFRESH_INTERVAL_SECONDS="86400",
        )
        rss = PeakRss(catalog.process.pid)
        rss.start()
        try:
            headers = {"Authorization": f"Bearer {stack.DEV_TOKEN}"}
            timeout = aiohttp.ClientTimeout(total=None)
            connector = aiohttp.TCPConnector(limit=args.concurrency)
            async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as session:
                ingest: dict[str, object] = {}
                if await registered(session, catalog.url, data / "location.yaml") is None:
                    ingest = await ingest_location(session, catalog, data, postgres_dir, rss)
                else:
                    progress("location already ingested in the kept data directory")
                entities, relations = await served_counts(servers.database_url)
                if args.ingest_only:
                    return {
                        "entities": args.entities,
                        **ingest,
                        "entities_served": entities,
                        "relations_served": relations,
                        "relations_expected": manifest["expected_relations"],
                        "peak_rss_mib": rss.peak / 2**20,
                    }
                properties_s = None
                if ingest and not args.skip_ingest_api:
                    properties_s = await ingest_properties(session, catalog.url, [f"component:{n}" for n in names])
                    progress(f"ingestion API: {properties_s:.1f} s")
                settled_s = await settled(servers.database_url)
                progress(f"outbox drained and VACUUM done {settled_s:.1f} s later")

                async def load(make_path: Callable[[], str]) -> dict[str, dict[str, float]]:
                    """The scenario at `--concurrency` clients, then alone (one client: its own cost, no queue)."""
                    paths = [make_path() for _ in range(5000)]
                    result = {}
                    runs = (("loaded", args.concurrency), ("one_client", 1))
                    for name, clients in (("warm_up", args.concurrency), *runs) if args.warm else runs:
                        if wrk:
                            measure = functools.partial(wrk_load, wrk, catalog.url, paths, args, tmp, clients)
                            result[name] = await asyncio.to_thread(measure)
                        else:
                            result[name] = await python_load(session, catalog.url, paths, args, clients)
                    result.pop("warm_up", None)
                    progress(f"{paths[0]}: {result} (load average {os.getloadavg()[0]:.1f})")
                    return result

                scenarios = query_paths(names)
                results = {name: await load(scenarios[name]) for name in args.scenarios or scenarios}
        finally:
            rss.running = False
            catalog.stop()
    return {
        "entities": args.entities,
        "load_generator": "wrk" if wrk else "aiohttp",
        **ingest,
        "entities_served": entities,
        "relations_served": relations,
        "relations_expected": manifest["expected_relations"],
        "ingest_api_all_components_s": properties_s,
        "settled_after_s": settled_s,
        **results,
        "peak_rss_mib": rss.peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--skip-ingest-api", action="store_true", help="do not time the ingestion API")
    parser.add_argument("--data-dir", type=Path, help="keep entities, NATS and PostgreSQL here, to reuse them later")
    parser.add_argument("--scenarios", nargs="+", choices=list(query_paths([])), help="load only these scenarios")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="load each scenario once, unmeasured, before measuring it: the read caches then hold its paths",
    )
    parser.add_argument(
        "--ingest-only", action="store_true", help="stop after the location ingest (no outbox wait, no read load)"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as resources:
        if args.data_dir is None:
            tmp = Path(resources.enter_context(tempfile.TemporaryDirectory(prefix="idp-bench-catalog-")))
        else:
            tmp = args.data_dir.resolve()
        data = tmp / f"entities-{args.entities}"
        if not (data / "manifest.json").exists():
            subprocess.run(
                [sys.executable, str(GENERATOR), str(args.entities), str(data)], check=True, stdout=subprocess.DEVNULL
            )
        result = asyncio.run(run(args, data, tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
