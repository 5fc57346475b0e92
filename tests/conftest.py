"""Real PostgreSQL and NATS for every test that needs them.

PostgreSQL: one cluster per session from the embedded wheel (or `IDP_DATABASE_URL`), a fresh database per
test. NATS: a fresh `nats-server -js` per test on a free port (or `IDP_NATS_URL`, whose streams are
deleted before each test). Spans go to an in-memory exporter that tests can read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import nats
import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.bus import stream_configs
from shared.config import BaseSettings
from shared.embedded import EmbeddedNats, EmbeddedPostgres
from shared.telemetry import instrument_libraries

DEV_TOKEN = "test-dev-admin-token-0123456789"
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)
instrument_libraries()


def pytest_configure(config: pytest.Config) -> None:
    """A base temp directory of this session's own: pytest's shared default (`/tmp/pytest-of-<user>`) is
    pruned by every new session, which would delete the embedded servers of a session running beside it."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="idp-tests-")
        config.add_cleanup(lambda: shutil.rmtree(config.option.basetemp, ignore_errors=True))


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if os.environ.get("IDP_DATABASE_URL"):
        yield os.environ["IDP_DATABASE_URL"]
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"), fast=True).start()
    yield server.url()
    server.stop()


@pytest_asyncio.fixture
async def database_url(postgres_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for this test."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(postgres_admin_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def nats_server(tmp_path: Path) -> Any:
    """A NATS server for this test (None when `IDP_NATS_URL` is used)."""
    if os.environ.get("IDP_NATS_URL"):
        yield None
        return
    server = EmbeddedNats(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def nats_url(nats_server: EmbeddedNats | None) -> str:
    if nats_server is not None:
        return nats_server.url
    url = os.environ["IDP_NATS_URL"]
    nc = await nats.connect(url)
    js = nc.jetstream()
    for config in stream_configs(1):
        try:
            await js.delete_stream(config.name)
        except nats.js.errors.NotFoundError:
            pass
    await nc.close()
    return url


@pytest.fixture
def make_settings(database_url: str, nats_url: str) -> Callable[..., Any]:
    """Settings for a service under test: this test's database and NATS, a free port, the dev token."""

    def make(settings_type: type[BaseSettings] = BaseSettings, **overrides: Any) -> Any:
        values = {"database_url": database_url, "nats_url": nats_url, "http_port": 0, "dev_token": DEV_TOKEN}
        return settings_type(**{**values, **overrides})

    return make


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that sends the dev admin token."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {DEV_TOKEN}"}) as session:
        yield session


@pytest_asyncio.fixture
async def anonymous_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def spans() -> InMemorySpanExporter:
    SPANS.clear()
    return SPANS
