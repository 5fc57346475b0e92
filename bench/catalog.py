"""Catalog benchmark on the shared generator's realistic organisation (../shared/bench/gen_entities.py).

    python bench/catalog.py --entities 10000 [--concurrency 50] [--seconds 10]

Starts NATS and PostgreSQL (embedded, or IDP_NATS_URL / IDP_DATABASE_URL) and the catalog as its own process,
registers the generated `location.yaml` (one `file:` Location whose targets hold all N entities) and times it
until the response, when every entity and relation is committed and queryable. Then, with `--concurrency`
clients for `--seconds` each: `GET /entities/by-name` of random components, a filtered `by-query`, and a
full-text `by-query`; reports req/s, p50 and p99, and the catalog's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import psutil
import stack

GENERATOR = stack.ROOT.parent / "shared" / "bench" / "gen_entities.py"


class PeakRss(threading.Thread):
    """Samples a process's RSS every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.running = psutil.Process(pid), 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.1)


async def load(session: aiohttp.ClientSession, make_url, concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.get(make_url()) as response:
                await response.read()
                assert response.status == 200, response.status
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def run(args: argparse.Namespace, data: Path, tmp: Path) -> dict[str, object]:
    names = (
        json.loads((data / "manifest.json").read_text()).get("component_names")
        or (data / "component-names.txt").read_text().split()
    )
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
                started = time.perf_counter()
                async with session.post(
                    f"{catalog.url}/api/catalog/locations", json={"type": "file", "target": str(data / "location.yaml")}
                ) as r:
                    body = await r.json()
                    assert r.status == 201, body
                ingest_s = time.perf_counter() - started
                async with session.get(f"{catalog.url}/api/catalog/entity-facets", params={"facet": "kind"}) as r:
                    counted = sum(v["count"] for v in (await r.json())["facets"]["kind"])
                base = f"{catalog.url}/api/catalog/entities"
                by_name = await load(
                    session,
                    lambda: f"{base}/by-name/component/default/{random.choice(names)}",
                    args.concurrency,
                    args.seconds,
                )
                filtered = await load(
                    session,
                    lambda: f"{base}/by-query?filter=kind=component,spec.type=service&limit=100",
                    args.concurrency,
                    args.seconds,
                )
                full_text = await load(
                    session,
                    lambda: (
                        f"{base}/by-query?fullTextFilterTerm="
                        f"{random.choice(names)[:6]}&fullTextFilterFields=metadata.name&limit=20"
                    ),
                    args.concurrency,
                    args.seconds,
                )
        finally:
            rss.running = False
            catalog.stop()
    return {
        "entities": args.entities,
        "ingest_s": ingest_s,
        "entities_served": counted,
        "location_errors": len(body["location"].get("errors", [])),
        "by_name": by_name,
        "filtered_by_query": filtered,
        "full_text": full_text,
        "peak_rss_mib": rss.peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="idp-bench-catalog-") as tmp:
        data = Path(tmp) / "entities"
        subprocess.run(
            [sys.executable, str(GENERATOR), str(args.entities), str(data)], check=True, stdout=subprocess.DEVNULL
        )
        result = asyncio.run(run(args, data, Path(tmp)))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
