"""The lifecycle every service shares: settings, telemetry, pool, migrations, NATS, streams, outbox relay,
background consumers and the HTTP server, opened in one `AsyncExitStack` and closed in reverse.

A service describes itself with a `ServiceDefinition`; `run_service` is its `main()`. Tests enter
`running_service` with their own settings and get the same wiring, on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from shared import bus, db
from shared.access import AccessReplica
from shared.auth import Authenticator, Principal, dev_token_authenticator, first_of
from shared.config import BaseSettings, ConfigError, load_settings
from shared.errors import NotAllowedError
from shared.events import DEFAULT_SCOPE, ResourceRef, new_event
from shared.http import ReadinessCheck, Routes, create_app
from shared.outbox import OutboxRelay, write_event
from shared.scopes import SCOPE
from shared.telemetry import setup_telemetry
from shared.tokens import TokenVerifier

log = logging.getLogger(__name__)
VERSION = "0.1.0"


@dataclass(frozen=True)
class Deps:
    """What a service's routes and consumers get: its settings and open connections."""

    service: str
    settings: Any
    pool: asyncpg.Pool
    nc: NatsClient
    js: JetStreamContext
    authenticate: Authenticator
    access: AccessReplica
    """This process's replica of roles, bindings and policies (shared/access.py)."""
    context: Any = None
    """What the service's own `open_context` opened (HTTP client pools, caches), or None."""


BackgroundTask = Callable[[Deps], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class ServiceDefinition:
    """Everything that differs between services; the rest of the lifecycle is shared."""

    name: str
    """Service name as used in events' `source` and `python -m services.<module>`."""
    schema: str
    """Its PostgreSQL schema."""
    settings_type: type[BaseSettings]
    routes: Callable[[Deps], Routes]
    """Builds the service's declared operations bound to its dependencies."""
    migrations: Path | None = None
    background: tuple[BackgroundTask, ...] = field(default=())
    """Long-running tasks (consumers, schedulers); one crashing stops the service."""
    open_context: Callable[[Deps], AbstractAsyncContextManager[Any]] | None = None
    """Per-process resources beyond the pool and NATS (HTTP client pools, caches), opened before the routes are
    built and closed after the HTTP server and tasks stop; routes and tasks reach them as `deps.context`."""
    cancel_on_disconnect: bool = False
    """Cancel a request's handler when its caller disconnects (aiohttp's `handler_cancellation`), for services
    whose handlers wait on someone else (a proxy) and must pass the hang-up on; off by default, since a cancelled
    handler stops at any await."""


@dataclass(frozen=True)
class RunningService:
    deps: Deps
    url: str
    tasks: list[asyncio.Task]
    verifier: TokenVerifier | None = None
    """This process's token verifier (tests flush its last-seen batch)."""


def build_app(definition: ServiceDefinition, deps: Deps) -> web.Application:
    async def database_ready() -> str | None:
        async with deps.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        pending = await db.pending_migrations(deps.pool, definition.schema, definition.migrations)
        return f"{pending} migrations pending" if pending else None

    async def nats_ready() -> str | None:
        return None if deps.nc.is_connected else "NATS is not connected"

    readiness: list[ReadinessCheck] = [database_ready, nats_ready]
    return create_app(
        service=definition.name,
        version=VERSION,
        routes=definition.routes(deps),
        authenticate=deps.authenticate,
        authorize=lambda principal, permission: (
            principal.may(permission) or deps.access.holds_anywhere(principal, permission)
        ),
        on_denied=lambda request, principal, permission, denied: _record_denial(
            deps, request, principal, permission, denied
        ),
        readiness=readiness,
        max_body_bytes=deps.settings.max_body_bytes,
    )


async def _record_denial(
    deps: Deps, request: web.Request, principal: Principal, permission: str, denied: NotAllowedError
) -> None:
    """`<service>.access.denied` through the outbox, so the audit trail shows who was refused what."""
    scope = request.query.get("scope", DEFAULT_SCOPE)
    event = new_event(
        f"{deps.service}.access.denied",
        source=deps.service,
        actor=principal.actor(),
        scope=scope if SCOPE.match(scope) else DEFAULT_SCOPE,
        resource=ResourceRef("operation", f"{request.method} {request.match_info.route.resource.canonical}"),
        data={
            "permission": permission,
            "detail": denied.detail,
            "path": request.path[:2000],
            "errors": [{"field": e.field, "message": e.message} for e in denied.errors],
        },
    )
    try:
        async with db.transaction(deps.pool) as conn:
            await write_event(conn, event)
    except (asyncpg.PostgresError, OSError) as exc:  # the 403 stands whether or not it could be recorded
        log.warning("could not record a denial: %s", exc)


@contextlib.asynccontextmanager
async def running_service(
    definition: ServiceDefinition, settings: BaseSettings, *, authenticate: Authenticator | None = None
) -> AsyncIterator[RunningService]:
    """Open every resource of the service, serve HTTP and run its tasks; close all on exit."""
    async with contextlib.AsyncExitStack() as stack:
        pool = await db.create_pool(settings.database_url, definition.schema, size=settings.db_pool_size)
        stack.push_async_callback(_close_pool, pool)
        applied = await db.apply_migrations(pool, definition.schema, definition.migrations)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        nc = await bus.connect(settings.nats_url, f"idp-{definition.name}")
        stack.push_async_callback(_close_nats, nc)
        js = nc.jetstream()
        await bus.ensure_streams(js, settings.stream_replicas)
        verifier = TokenVerifier(nc)
        await verifier.start()
        stack.push_async_callback(verifier.stop)
        deps = Deps(
            service=definition.name,
            settings=settings,
            pool=pool,
            nc=nc,
            js=js,
            authenticate=authenticate or first_of(dev_token_authenticator(settings.dev_token), verifier.authenticate),
            access=AccessReplica(owners_may_edit=settings.owners_may_edit),
        )
        if definition.open_context is not None:
            deps = replace(deps, context=await stack.enter_async_context(definition.open_context(deps)))
        runner = web.AppRunner(
            build_app(definition, deps),
            access_log=None,
            shutdown_timeout=5,
            handler_cancellation=definition.cancel_on_disconnect,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        host, port = runner.addresses[0][:2]
        relay = OutboxRelay(pool, js, definition.name)
        coroutines = [relay.run(), verifier.run(), deps.access.run(nc), *(task(deps) for task in definition.background)]
        tasks = [asyncio.create_task(c, name=f"{definition.name}-task-{i}") for i, c in enumerate(coroutines)]
        stack.push_async_callback(_cancel, tasks)
        # First thing at shutdown, while identity-sync (perhaps this very process) still answers.
        stack.push_async_callback(verifier.flush_seen)
        log.info("%s listening on http://%s:%s", definition.name, host, port)
        yield RunningService(deps=deps, url=f"http://{host}:{port}", tasks=tasks, verifier=verifier)


async def _close_pool(pool: asyncpg.Pool, timeout: float = 10.0) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout)
    except TimeoutError:
        log.error("database connections still in use after %.0fs; closing them", timeout)
        pool.terminate()


async def _close_nats(nc: NatsClient) -> None:
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), 5)
    except Exception as exc:  # draining is best effort at shutdown
        log.warning("nats drain failed: %s", exc)
        await nc.close()


async def _cancel(tasks: list[asyncio.Task], timeout: float = 10.0) -> None:
    for task in tasks:
        task.cancel()
    _, stuck = await asyncio.wait(tasks, timeout=timeout)
    for task in stuck:
        log.error("task %s did not stop within %.0fs of cancellation", task.get_name(), timeout)


async def _serve_until_stopped(definition: ServiceDefinition, settings: BaseSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_service(definition, settings) as service:
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *service.tasks], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        crashed = [t for t in done if t is not stopper]
        for task in crashed:
            exc = task.exception() if not task.cancelled() else None
            log.error("background task %s stopped: %r", task.get_name(), exc)
        log.info("%s shutting down", definition.name)
        return 1 if crashed else 0


def run_service(definition: ServiceDefinition) -> None:
    """`python -m services.<name>`: load settings (one line and exit 2 when wrong), then serve."""
    try:
        settings = load_settings(definition.settings_type)
    except ConfigError as exc:
        print(f"{definition.name}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_telemetry(definition.name, settings.log_level)
    try:
        code = asyncio.run(_serve_until_stopped(definition, settings))
    except ConfigError as exc:  # raised by a service's `open_context`, e.g. a bad file it names
        print(f"{definition.name}: configuration error: {exc}", file=sys.stderr)
        code = 2
    except (OSError, asyncpg.PostgresError) as exc:
        log.error("%s could not start: %s", definition.name, exc)
        code = 1
    raise SystemExit(code)


def skeleton_definition(name: str, schema: str) -> ServiceDefinition:
    """A service whose domain is not built yet: standard routes, schema and bus connection only."""
    return ServiceDefinition(name=name, schema=schema, settings_type=BaseSettings, routes=lambda deps: Routes(tag=name))
