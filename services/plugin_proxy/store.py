"""Every SQL statement of the plugin-proxy service. Functions take a connection; callers own transactions."""

from __future__ import annotations

import datetime as dt

import asyncpg
import msgspec

from services.plugin_proxy.model import AgentInstance, Endpoint, EndpointSpec
from shared.delegate_wire import Heartbeat

_ENDPOINT_COLUMNS = "name, spec, origin, version, created_at, updated_at"


def _endpoint(row: asyncpg.Record) -> Endpoint:
    return Endpoint(
        name=row["name"],
        spec=msgspec.convert(row["spec"], EndpointSpec),
        origin=row["origin"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _spec_json(spec: EndpointSpec) -> dict:
    return msgspec.to_builtins(spec)


async def get_endpoint(conn: asyncpg.Connection, name: str, *, lock: bool = False) -> Endpoint | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE name = $1{suffix}", name)
    return _endpoint(row) if row else None


async def list_endpoints(conn: asyncpg.Connection, after: str | None, limit: int) -> list[Endpoint]:
    rows = await conn.fetch(
        f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE $1::text IS NULL OR name > $1 ORDER BY name LIMIT $2",
        after,
        limit,
    )
    return [_endpoint(r) for r in rows]


async def lock_endpoints_file(conn: asyncpg.Connection) -> None:
    """Serialise start-up file syncs of replicas starting together, until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('idp-proxy:endpoints-file'))")


async def endpoints_from(conn: asyncpg.Connection, origin: str) -> list[Endpoint]:
    rows = await conn.fetch(f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE origin = $1 FOR UPDATE", origin)
    return [_endpoint(r) for r in rows]


async def insert_endpoint(conn: asyncpg.Connection, name: str, spec: EndpointSpec, origin: str) -> Endpoint:
    row = await conn.fetchrow(
        f"INSERT INTO endpoints (name, spec, origin, version) VALUES ($1, $2, $3, 1) RETURNING {_ENDPOINT_COLUMNS}",
        name,
        _spec_json(spec),
        origin,
    )
    return _endpoint(row)


async def update_endpoint(conn: asyncpg.Connection, name: str, spec: EndpointSpec, origin: str) -> Endpoint:
    row = await conn.fetchrow(
        f"""UPDATE endpoints SET spec = $2, origin = $3, version = version + 1, updated_at = now()
            WHERE name = $1 RETURNING {_ENDPOINT_COLUMNS}""",
        name,
        _spec_json(spec),
        origin,
    )
    return _endpoint(row)


async def delete_endpoint(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute("DELETE FROM endpoints WHERE name = $1", name)


# --- agents --------------------------------------------------------------------------------------------


class AgentRow(msgspec.Struct, frozen=True):
    id: str
    description: str
    created_at: dt.datetime
    revoked_at: dt.datetime | None


async def insert_agent(conn: asyncpg.Connection, agent_id: str, description: str, token_hash: bytes) -> AgentRow:
    row = await conn.fetchrow(
        """INSERT INTO agents (id, description, token_hash) VALUES ($1, $2, $3)
           RETURNING id, description, created_at, revoked_at""",
        agent_id,
        description,
        token_hash,
    )
    return AgentRow(**dict(row))


async def list_agents(conn: asyncpg.Connection, agent_id: str | None = None) -> list[AgentRow]:
    rows = await conn.fetch(
        "SELECT id, description, created_at, revoked_at FROM agents WHERE $1::text IS NULL OR id = $1 ORDER BY id",
        agent_id,
    )
    return [AgentRow(**dict(r)) for r in rows]


async def revoke_agent(conn: asyncpg.Connection, agent_id: str) -> AgentRow | None:
    """Revoke once; returns the row only when this call revoked it."""
    row = await conn.fetchrow(
        """UPDATE agents SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
           RETURNING id, description, created_at, revoked_at""",
        agent_id,
    )
    return AgentRow(**dict(row)) if row else None


async def agent_by_token(conn: asyncpg.Connection, token_hash: bytes) -> AgentRow | None:
    row = await conn.fetchrow(
        "SELECT id, description, created_at, revoked_at FROM agents WHERE token_hash = $1", token_hash
    )
    return AgentRow(**dict(row)) if row else None


async def record_heartbeat(conn: asyncpg.Connection, agent_id: str, beat: Heartbeat) -> bool:
    """Upsert the replica's row; True when it is new or was marked disconnected (it just connected)."""
    return await conn.fetchval(
        """INSERT INTO agent_instances (agent_id, instance, version, tags, allowlist_hash)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (agent_id, instance) DO UPDATE
              SET version = excluded.version, tags = excluded.tags, allowlist_hash = excluded.allowlist_hash,
                  last_heartbeat = now(), disconnected_at = NULL
           RETURNING xmax = 0 OR (SELECT disconnected_at IS NOT NULL FROM agent_instances
                                  WHERE agent_id = $1 AND instance = $2)""",
        agent_id,
        beat.instance,
        beat.version,
        beat.tags,
        beat.allowlist_hash,
    )


async def mark_silent_instances(conn: asyncpg.Connection, silent_for: float) -> list[tuple[str, str]]:
    """Mark replicas without a heartbeat for `silent_for` seconds as disconnected; returns (agent, instance)."""
    rows = await conn.fetch(
        """UPDATE agent_instances SET disconnected_at = now()
           WHERE disconnected_at IS NULL AND last_heartbeat < now() - make_interval(secs => $1)
           RETURNING agent_id, instance""",
        silent_for,
    )
    return [(r["agent_id"], r["instance"]) for r in rows]


async def instances(conn: asyncpg.Connection, agent_ids: list[str]) -> dict[str, list[AgentInstance]]:
    """Every known replica of these agents, newest heartbeat first."""
    rows = await conn.fetch(
        """SELECT agent_id, instance, version, tags, allowlist_hash, connected_at, last_heartbeat
           FROM agent_instances WHERE agent_id = ANY($1::text[]) ORDER BY last_heartbeat DESC""",
        agent_ids,
    )
    found: dict[str, list[AgentInstance]] = {}
    for r in rows:
        found.setdefault(r["agent_id"], []).append(
            AgentInstance(
                r["instance"],
                r["version"],
                list(r["tags"]),
                r["allowlist_hash"],
                r["connected_at"],
                r["last_heartbeat"],
            )
        )
    return found


async def live_agents(conn: asyncpg.Connection, heard_within: float) -> list[tuple[str, list[str]]]:
    """(agent id, union of its live replicas' tags) for unrevoked agents heard from recently."""
    rows = await conn.fetch(
        """SELECT a.id, array_agg(DISTINCT t) AS tags
           FROM agents a JOIN agent_instances i ON i.agent_id = a.id
           LEFT JOIN LATERAL unnest(i.tags) AS t ON true
           WHERE a.revoked_at IS NULL AND i.disconnected_at IS NULL
             AND i.last_heartbeat >= now() - make_interval(secs => $1)
           GROUP BY a.id""",
        heard_within,
    )
    return [(r["id"], [t for t in r["tags"] if t is not None]) for r in rows]
