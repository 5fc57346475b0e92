"""PostgreSQL access: a pool bound to one service's schema, and numbered SQL migrations.

Each service owns one schema. Migrations are `NNNN_name.sql` files applied in order, each in its own
transaction, under an advisory lock so replicas starting together apply them once. The shared
migrations (outbox, processed events) are applied to every schema before the service's own.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import msgspec

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=lambda v: _json_encode(v).decode(), decoder=_json_decode
        )


def like_escape(value: str) -> str:
    """`value` matched literally inside a LIKE pattern (`_` and `%` are wildcards there; scopes contain `_`)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")
    return schema


async def create_pool(database_url: str, schema: str, *, size: int = 10) -> asyncpg.Pool:
    """A pool whose connections use `schema` first on the search path and decode JSON with msgspec."""
    check_schema_name(schema)
    return await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=size,
        init=_init_connection,
        server_settings={"search_path": f"{schema},public", "application_name": f"idp-{schema}"},
        command_timeout=60,
        reset=_no_session_state,
    )


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release beyond what asyncpg always does (roll back an open transaction, drop
    listeners): our code keeps no session state (`SET LOCAL`, transaction-scoped advisory locks), so the default
    reset statement would be one more round trip per request for nothing (15 % of the catalog's by-name time)."""


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One connection in one transaction: committed on exit, rolled back on error."""
    async with pool.acquire() as conn, conn.transaction():
        yield conn


def migration_files(directory: Path) -> list[tuple[int, str, Path]]:
    """The numbered `.sql` files of a directory in order; a misnamed or repeated number is an error."""
    found: dict[int, tuple[int, str, Path]] = {}
    if not directory.is_dir():
        return []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} must be named NNNN_lower_snake.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations numbered {version} in {directory}")
        found[version] = (version, path.name, path)
    return [found[v] for v in sorted(found)]


async def apply_migrations(pool: asyncpg.Pool, schema: str, service_migrations: Path | None) -> list[str]:
    """Create `schema` and apply pending shared and service migrations; returns the names applied."""
    check_schema_name(schema)
    components = [("shared", SHARED_MIGRATIONS)]
    if service_migrations is not None:
        components.append(("service", service_migrations))
    applied: list[str] = []
    async with pool.acquire() as conn:
        # The lock key is per schema so services migrate in parallel but replicas of one wait.
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"idp-migrate:{schema}")
        try:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                        component text NOT NULL, version int NOT NULL, name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"""
            )
            for component, directory in components:
                done = {
                    r["version"]
                    for r in await conn.fetch(
                        f"SELECT version FROM {schema}.schema_migrations WHERE component = $1", component
                    )
                }
                for version, name, path in migration_files(directory):
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                        await conn.execute(path.read_text(encoding="utf-8"))
                        await conn.execute(
                            f"INSERT INTO {schema}.schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                            component,
                            version,
                            name,
                        )
                    applied.append(f"{component}/{name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"idp-migrate:{schema}")
    return applied


async def pending_migrations(pool: asyncpg.Pool, schema: str, service_migrations: Path | None) -> int:
    """How many known migrations are not applied yet (readiness reports 0)."""
    expected = {("shared", v) for v, _, _ in migration_files(SHARED_MIGRATIONS)}
    if service_migrations is not None:
        expected |= {("service", v) for v, _, _ in migration_files(service_migrations)}
    async with pool.acquire() as conn:
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.schema_migrations")
        if not exists:
            return len(expected)
        rows = await conn.fetch(f"SELECT component, version FROM {schema}.schema_migrations")
    return len(expected - {(r["component"], r["version"]) for r in rows})
