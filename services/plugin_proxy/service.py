"""Plugin-proxy use cases shared by the HTTP routes and the bus handlers: one transaction = store + outbox row."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

import asyncpg
import msgspec

from services.plugin_proxy import store
from services.plugin_proxy.model import (
    AgentCreate,
    AgentList,
    AgentView,
    Endpoint,
    EndpointCreate,
    EndpointPage,
    EndpointsFile,
    EndpointSpec,
    LiveAgent,
    MintedAgent,
    PageQuery,
    agent_status,
    check_name,
    check_spec,
    spec_of,
    view,
)
from shared.db import transaction
from shared.delegate_wire import Heartbeat, HeartbeatReply, agent_id_of_token
from shared.errors import AuthenticationError, ConflictError, InputError, NotAllowedError, NotFoundError
from shared.etag import check_if_match
from shared.events import SYSTEM, Actor, Event, ResourceRef, diff_fields, new_event
from shared.outbox import write_event, write_events
from shared.yamlsafe import YamlError, load_yaml_documents

SOURCE = "plugin_proxy"


def _event(type_: str, actor: Actor, kind: str, resource_id: str, data: dict) -> Event:
    return new_event(
        f"plugin_proxy.{kind}.{type_}", source=SOURCE, actor=actor, resource=ResourceRef(kind, resource_id), data=data
    )


# --- endpoints -----------------------------------------------------------------------------------------


async def get_endpoint(pool: asyncpg.Pool, name: str) -> Endpoint:
    async with pool.acquire() as conn:
        endpoint = await store.get_endpoint(conn, name)
    if endpoint is None:
        raise NotFoundError(f"no proxy endpoint {name}")
    return endpoint


async def list_endpoints(pool: asyncpg.Pool, query: PageQuery) -> EndpointPage:
    async with pool.acquire() as conn:
        found = await store.list_endpoints(conn, query.cursor, query.limit + 1)
    page = found[: query.limit]
    return EndpointPage([view(e) for e in page], page[-1].name if len(found) > query.limit else None)


async def create_endpoint(pool: asyncpg.Pool, actor: Actor, create: EndpointCreate) -> Endpoint:
    name, spec = check_name(create.name), check_spec(spec_of(create))
    try:
        async with transaction(pool) as conn:
            return await _insert(conn, actor, name, spec, "api")
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"proxy endpoint {name} already exists") from None


async def replace_endpoint(
    pool: asyncpg.Pool, actor: Actor, name: str, spec: EndpointSpec, if_match: str | None
) -> Endpoint:
    """Replace an endpoint's spec (`If-Match` honoured); an identical spec writes and emits nothing."""
    check_spec(spec)
    async with transaction(pool) as conn:
        current = await store.get_endpoint(conn, name, lock=True)
        if current is None:
            raise NotFoundError(f"no proxy endpoint {name}")
        check_if_match(if_match, str(current.version))
        return await _update(conn, actor, current, spec, "api")


async def delete_endpoint(pool: asyncpg.Pool, actor: Actor, name: str, if_match: str | None) -> None:
    async with transaction(pool) as conn:
        current = await store.get_endpoint(conn, name, lock=True)
        if current is None:
            raise NotFoundError(f"no proxy endpoint {name}")
        check_if_match(if_match, str(current.version))
        await _delete(conn, actor, current)


async def _insert(conn: asyncpg.Connection, actor: Actor, name: str, spec: EndpointSpec, origin: str) -> Endpoint:
    endpoint = await store.insert_endpoint(conn, name, spec, origin)
    data = {"endpoint": msgspec.to_builtins(spec), "origin": origin, "version": endpoint.version}
    await write_event(conn, _event("created", actor, "endpoint", name, data))
    return endpoint


async def _update(
    conn: asyncpg.Connection, actor: Actor, current: Endpoint, spec: EndpointSpec, origin: str
) -> Endpoint:
    if current.spec == spec and current.origin == origin:
        return current
    updated = await store.update_endpoint(conn, current.name, spec, origin)
    changes = diff_fields(msgspec.to_builtins(current.spec), msgspec.to_builtins(spec))
    data = {"changes": changes, "origin": origin, "version": updated.version}
    await write_event(conn, _event("updated", actor, "endpoint", current.name, data))
    return updated


async def _delete(conn: asyncpg.Connection, actor: Actor, current: Endpoint) -> None:
    await store.delete_endpoint(conn, current.name)
    data = {"endpoint": msgspec.to_builtins(current.spec), "origin": current.origin}
    await write_event(conn, _event("deleted", actor, "endpoint", current.name, data))


def parse_endpoints_file(text: str) -> list[EndpointCreate]:
    """The start-up file's endpoints, each checked like an API write; raises InputError naming the field."""
    try:
        documents = load_yaml_documents(text)
    except YamlError as exc:
        raise InputError.for_field("$", str(exc)) from exc
    if len(documents) > 1:
        raise InputError.for_field("$", "expected one YAML document")
    try:
        parsed = msgspec.convert(documents[0] if documents else {}, EndpointsFile)
    except msgspec.ValidationError as exc:
        raise InputError.for_field("$", str(exc)) from exc
    names = [e.name for e in parsed.endpoints]
    for i, endpoint in enumerate(parsed.endpoints):
        check_name(endpoint.name)
        check_spec(spec_of(endpoint), prefix=f"$.endpoints[{i}]")
        if names.count(endpoint.name) > 1:
            raise InputError.for_field(f"$.endpoints[{i}].name", f"{endpoint.name} appears twice")
    return parsed.endpoints


async def sync_endpoints_file(pool: asyncpg.Pool, endpoints: list[EndpointCreate]) -> None:
    """Make the file's endpoints current: create or update them, delete file endpoints it no longer lists.

    An endpoint the API created is taken over by the file when the file names it; the file wins at each start.
    """
    wanted = {e.name: spec_of(e) for e in endpoints}
    async with transaction(pool) as conn:
        await store.lock_endpoints_file(conn)
        for previous in await store.endpoints_from(conn, "file"):
            if previous.name not in wanted:
                await _delete(conn, SYSTEM, previous)
        for name, spec in wanted.items():
            current = await store.get_endpoint(conn, name, lock=True)
            if current is None:
                await _insert(conn, SYSTEM, name, spec, "file")
            else:
                await _update(conn, SYSTEM, current, spec, "file")


# --- agents --------------------------------------------------------------------------------------------


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def mint_agent(pool: asyncpg.Pool, actor: Actor, create: AgentCreate) -> MintedAgent:
    """Register an agent and issue its token (`<id>.<secret>`), which is shown only in this answer."""
    token = f"{create.id}.{secrets.token_urlsafe(32)}"
    try:
        async with transaction(pool) as conn:
            row = await store.insert_agent(conn, create.id, create.description, token_hash(token))
            await write_event(conn, _event("created", actor, "agent", create.id, {"description": create.description}))
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"agent {create.id} already exists") from None
    agent = AgentView(id=row.id, description=row.description, status="pending", created_at=row.created_at)
    return MintedAgent(agent=agent, token=token)


async def revoke_agent(pool: asyncpg.Pool, actor: Actor, agent_id: str, offline_after: float) -> AgentView:
    async with transaction(pool) as conn:
        if await store.revoke_agent(conn, agent_id):
            await write_event(conn, _event("revoked", actor, "agent", agent_id, {}))
    return (await list_agents(pool, offline_after, agent_id)).items[0]


async def list_agents(pool: asyncpg.Pool, offline_after: float, agent_id: str | None = None) -> AgentList:
    async with pool.acquire() as conn:
        rows = await store.list_agents(conn, agent_id)
        replicas = await store.instances(conn, [r.id for r in rows])
    if agent_id is not None and not rows:
        raise NotFoundError(f"no agent {agent_id}")
    now = dt.datetime.now(dt.UTC)
    items = []
    for row in rows:
        known = replicas.get(row.id, [])
        latest = known[0] if known else None
        live = [i for i in known if (now - i.last_heartbeat).total_seconds() <= offline_after]
        items.append(
            AgentView(
                id=row.id,
                description=row.description,
                status=agent_status(row.revoked_at, latest and latest.last_heartbeat, now, offline_after),
                created_at=row.created_at,
                revoked_at=row.revoked_at,
                last_heartbeat=latest and latest.last_heartbeat,
                version=latest and latest.version,
                tags=sorted({t for i in live for t in i.tags}),
                instances=live,
            )
        )
    return AgentList(items)


async def record_heartbeat(pool: asyncpg.Pool, beat: Heartbeat, interval: float) -> HeartbeatReply:
    """Check the agent's token and note the replica alive; a replica that (re)connects is an event."""
    agent_id = agent_id_of_token(beat.token)
    if agent_id is None:
        raise AuthenticationError("not an agent token")
    async with transaction(pool) as conn:
        agent = await store.agent_by_token(conn, token_hash(beat.token))
        if agent is None or agent.id != agent_id:
            raise AuthenticationError("unknown agent token")
        if agent.revoked_at is not None:
            raise NotAllowedError(f"agent {agent.id}'s token was revoked")
        if await store.record_heartbeat(conn, agent.id, beat):
            data = {
                "instance": beat.instance,
                "version": beat.version,
                "tags": beat.tags,
                "allowlist_hash": beat.allowlist_hash,
            }
            await write_event(conn, _event("connected", Actor("service_account", agent.id), "agent", agent.id, data))
    return HeartbeatReply(agent=agent.id, interval_seconds=interval)


async def mark_silent_agents(pool: asyncpg.Pool, offline_after: float) -> int:
    """Replicas silent for longer than `offline_after` become `disconnected` events (one proxy replica wins each)."""
    async with transaction(pool) as conn:
        silent = await store.mark_silent_instances(conn, offline_after)
        if silent:
            events = [_event("disconnected", SYSTEM, "agent", agent, {"instance": i}) for agent, i in silent]
            await write_events(conn, events)
    return len(silent)


async def live_agents(pool: asyncpg.Pool, offline_after: float) -> list[LiveAgent]:
    async with pool.acquire() as conn:
        return [LiveAgent(agent, frozenset(tags)) for agent, tags in await store.live_agents(conn, offline_after)]


# --- access events -------------------------------------------------------------------------------------


async def record_access(pool: asyncpg.Pool, events: list[Event]) -> None:
    """Sampled `plugin_proxy.request.proxied` events, written in one transaction through the outbox."""
    async with transaction(pool) as conn:
        await write_events(conn, events)
