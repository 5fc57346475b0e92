"""Event pipeline benchmark: outbox -> relay -> JetStream -> audit, against the raw JetStream publish rate.

    python bench/event_pipeline.py [--events 100000] [--paced-rate 2000] [--paced-seconds 10] [--runs 3]
                                   [--audit-replicas 1]

Starts NATS and PostgreSQL from the wheels in a temporary directory (or uses IDP_NATS_URL /
IDP_DATABASE_URL), runs the audit service as its own process, and in this process plays an emitting
service: it writes events into its outbox in transactions of 1,000 while its relay publishes them.

Per run it reports:
- raw: JetStream publish rate of the same payloads (pipelined publish_async, acks awaited), no outbox;
- burst: N events written as fast as possible; persisted events/s = N / (first write -> N rows in audit);
  end-to-end lag (event time -> audit row committed) p50/p99, which here is mostly queueing;
- paced: events written at a steady rate below capacity; lag p50/p99 as a user would see it.
The medians over runs are printed as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg
import stack

from shared import bus, db
from shared.events import Actor, ResourceRef, encode_event, new_event
from shared.outbox import OutboxRelay, write_events

WRITE_BATCH = 1000


def make_events(n: int, offset: int = 0):
    return [
        new_event(
            "bench.entity.updated",
            source="bench",
            actor=Actor("user", f"user-{i % 97}"),
            resource=ResourceRef("entity", f"component:default/service-{offset + i}"),
            scope="account.bench",
            data={"changes": {"spec.lifecycle": {"before": "experimental", "after": "production"}}, "i": offset + i},
        )
        for i in range(n)
    ]


async def raw_publish_rate(nats_url: str, n: int) -> float:
    nc = await bus.connect(nats_url, "bench-raw")
    js = nc.jetstream()
    await js.add_stream(name="BENCH_RAW", subjects=["bench.raw.>"])
    payloads = [encode_event(e) for e in make_events(n)]
    started = time.perf_counter()
    futures = []
    for i, payload in enumerate(payloads):
        futures.append(await js.publish_async("bench.raw.entity", payload, headers={"Nats-Msg-Id": f"raw-{i}"}))
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCH_RAW")
    await nc.close()
    return n / elapsed


async def audit_count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT seq FROM audit.chain_head")


async def wait_for_count(conn: asyncpg.Connection, target: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while (count := await audit_count(conn)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"audit holds {count} of {target} events after {timeout}s")
        await asyncio.sleep(0.02)
    return time.perf_counter()


async def lag_percentiles(conn: asyncpg.Connection, after_seq: int) -> tuple[float, float]:
    row = await conn.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99
           FROM (SELECT extract(epoch FROM recorded_at - time) AS lag FROM audit.events WHERE seq > $1) t""",
        after_seq,
    )
    return row["p50"] * 1000, row["p99"] * 1000


async def write_through_outbox(pool: asyncpg.Pool, events, rate: float | None = None) -> None:
    started = time.perf_counter()
    for i in range(0, len(events), WRITE_BATCH if rate is None else 100):
        chunk = events[i : i + (WRITE_BATCH if rate is None else 100)]
        if rate is not None:
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            # Stamp the events when they are written, so lag excludes the pacing wait.
            chunk = make_events(len(chunk), offset=i)
        async with pool.acquire() as conn, conn.transaction():
            await write_events(conn, chunk)


async def one_run(nats_url: str, database_url: str, args: argparse.Namespace) -> dict[str, float]:
    raw = await raw_publish_rate(nats_url, args.events)
    pool = await db.create_pool(database_url, "bench", size=4)
    await db.apply_migrations(pool, "bench", None)
    nc = await bus.connect(nats_url, "bench")
    js = nc.jetstream()
    await bus.ensure_streams(js)
    relay_task = asyncio.create_task(OutboxRelay(pool, js, "bench").run())
    watch = await asyncpg.connect(database_url)
    try:
        base = await audit_count(watch)
        events = make_events(args.events)
        started = time.perf_counter()
        await write_through_outbox(pool, events)
        finished = await wait_for_count(watch, base + args.events)
        burst_rate = args.events / (finished - started)
        burst_p50, burst_p99 = await lag_percentiles(watch, base)

        base = await audit_count(watch)
        paced_n = int(args.paced_rate * args.paced_seconds)
        await write_through_outbox(pool, make_events(paced_n), rate=args.paced_rate)
        await wait_for_count(watch, base + paced_n)
        paced_p50, paced_p99 = await lag_percentiles(watch, base)
    finally:
        relay_task.cancel()
        await watch.close()
        await nc.close()
        await pool.close()
    return {
        "raw_publish_per_s": raw,
        "persisted_per_s": burst_rate,
        "ratio": burst_rate / raw,
        "burst_lag_p50_ms": burst_p50,
        "burst_lag_p99_ms": burst_p99,
        "paced_lag_p50_ms": paced_p50,
        "paced_lag_p99_ms": paced_p99,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--paced-rate", type=float, default=2000)
    parser.add_argument("--paced-seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--audit-replicas", type=int, default=1, help="audit processes sharing the durable consumer")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="idp-bench-") as tmp, stack.servers(Path(tmp)) as servers:
        audits = [
            stack.start_service("audit", servers, Path(tmp) / f"audit-{i}.log") for i in range(args.audit_replicas)
        ]
        try:
            results = []
            for run in range(args.runs):
                result = await one_run(servers.nats_url, servers.database_url, args)
                results.append(result)
                stack.print_run(run + 1, result)
        finally:
            for audit in audits:
                audit.stop()
    print(
        f"\nmedian of {args.runs} runs, N = {args.events:,}, paced {args.paced_rate:,.0f}/s, "
        f"{args.audit_replicas} audit replica(s):\n"
    )
    stack.print_medians(results)


if __name__ == "__main__":
    asyncio.run(main())
