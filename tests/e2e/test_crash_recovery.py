"""Crash tests (slow; `pytest -m slow`): audit killed with SIGKILL, or NATS restarted, in the middle of a
20,000-event load. Afterwards audit holds exactly 20,000 records and its chain verifies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from services.audit import service as audit_service
from shared import bus, db
from shared.db import transaction
from shared.embedded import free_port
from shared.outbox import OutboxRelay, write_events
from tests.helpers import eventually, sample_event

pytestmark = pytest.mark.slow
EVENTS = 20_000


def start_audit(database_url: str, nats_url: str, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "IDP_DATABASE_URL": database_url,
        "IDP_NATS_URL": nats_url,
        "IDP_HTTP_PORT": str(free_port()),
        "IDP_LOG_LEVEL": "WARNING",
    }
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.audit"], env=env, stdout=out, stderr=out)


async def audit_rows(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('audit.events') IS NOT NULL"):
            return 0
        return await conn.fetchval("SELECT count(*) FROM audit.events")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def emitting_service(database_url: str, nats_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A stand-in emitting service: its own schema, outbox and relay."""
    pool = await db.create_pool(database_url, "loadgen")
    await db.apply_migrations(pool, "loadgen", None)
    nc = await bus.connect(nats_url, "loadgen")
    await bus.ensure_streams(nc.jetstream())
    relay = asyncio.create_task(OutboxRelay(pool, nc.jetstream(), "loadgen", publish_timeout=2.0).run())
    try:
        yield pool
    finally:
        relay.cancel()
        await nc.close()
        await pool.close()


async def write_load(pool: asyncpg.Pool, events: list, pause_every: int = 2000) -> None:
    for start in range(0, len(events), 500):
        async with transaction(pool) as conn:
            await write_events(conn, events[start : start + 500])
        if start % pause_every == 0:
            await asyncio.sleep(0.05)


async def check_exact_and_verified(database_url: str) -> None:
    await eventually(lambda: _equals(audit_rows(database_url), EVENTS), timeout=180, interval=0.5)
    await asyncio.sleep(2)
    assert await audit_rows(database_url) == EVENTS
    pool = await db.create_pool(database_url, "audit")
    try:
        result = await audit_service.verify_chain(pool)
    finally:
        await pool.close()
    assert result.ok and result.checked == EVENTS, result


async def test_audit_killed_mid_load_recovers_every_event_exactly_once(database_url, nats_url, tmp_path):
    audit = start_audit(database_url, nats_url, tmp_path / "audit.log")
    try:
        await eventually(lambda: _table_exists(database_url), timeout=60)
        events = [sample_event(i) for i in range(EVENTS)]
        async with emitting_service(database_url, nats_url) as pool:
            load = asyncio.create_task(write_load(pool, events))
            await eventually(lambda: _at_least(audit_rows(database_url), 3000), timeout=120, interval=0.02)
            audit.send_signal(signal.SIGKILL)
            audit.wait()
            await asyncio.sleep(1)
            audit = start_audit(database_url, nats_url, tmp_path / "audit.log")
            await load
            await check_exact_and_verified(database_url)
    finally:
        audit.terminate()
        audit.wait(30)


async def test_nats_restarted_mid_load_loses_and_duplicates_nothing(database_url, nats_server, tmp_path):
    if nats_server is None:
        pytest.skip("needs the test's own NATS server to restart it")
    audit = start_audit(database_url, nats_server.url, tmp_path / "audit.log")
    try:
        await eventually(lambda: _table_exists(database_url), timeout=60)
        events = [sample_event(i) for i in range(EVENTS)]
        async with emitting_service(database_url, nats_server.url) as pool:
            load = asyncio.create_task(write_load(pool, events))
            await eventually(lambda: _at_least(audit_rows(database_url), 3000), timeout=120, interval=0.02)
            nats_server.stop()
            await asyncio.sleep(2)
            nats_server.start()  # same port and store; the fixture stops it
            await load
            await check_exact_and_verified(database_url)
    finally:
        audit.terminate()
        audit.wait(30)


async def _table_exists(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT to_regclass('audit.chain_head') IS NOT NULL")
    finally:
        await conn.close()


async def _equals(value, expected) -> bool:
    return (await value) == expected


async def _at_least(value, minimum) -> bool:
    return (await value) >= minimum
