"""A delegate agent: runs inside a private network, connects out to NATS only, and carries proxied requests to the
internal systems its own allowlist permits, with credentials it resolves itself.

Replicas started with the same token serve `idp.delegate.<agent>.open` as one queue group, so they share the load
and a replica that dies simply stops getting work. Each replica heartbeats to the plugin-proxy, which answers 401
or 403 once the token is unknown or revoked; the replica then stops. With `--health-address` it serves probes
of what its heartbeats show (services/delegate/health.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp
import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from yarl import URL

from services.delegate.health import Health, parse_address, serve_health
from shared import egress
from shared.bus import connect, request_rpc
from shared.delegate_wire import (
    ABORT,
    CHUNK_BYTES,
    WS_MESSAGE_BYTES,
    AbortedError,
    Accepted,
    Channel,
    ChannelSocket,
    Heartbeat,
    HeartbeatReply,
    Inboxes,
    OpenRequest,
    ResponseHead,
    agent_id_of_token,
    open_subject,
)
from shared.errors import AuthenticationError, NotAllowedError, ServiceUnavailableError
from shared.secretref import SecretError, SecretResolver, VaultSettings
from shared.socket_relay import AiohttpSocket, splice
from shared.telemetry import configure_logging

log = logging.getLogger(__name__)
EXIT_REVOKED = 3
Upstream = TypeVar("Upstream")
_decode_open = msgspec.msgpack.Decoder(OpenRequest).decode


@dataclass(frozen=True)
class AgentConfig:
    token: str
    nats_url: str
    tags: tuple[str, ...]
    policy: egress.AddressPolicy
    vault: VaultSettings | None = None
    max_exchanges: int = 256
    heartbeat_seconds: float = 2.0
    instance: str = ""
    health_address: str | None = None
    """`host:port` to serve `/healthz` and `/readyz` on, for the platform's probes; None serves nothing."""
    unhealthy_after: float = 60.0
    """Seconds without a working NATS connection after which `/healthz` fails."""

    @property
    def agent_id(self) -> str:
        agent = agent_id_of_token(self.token)
        assert agent is not None
        return agent


def parse_args(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Flags win over `IDP_DELEGATE_*`, `IDP_NATS_URL` and Vault's own `VAULT_ADDR`/`VAULT_TOKEN`."""
    env = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(prog="idp delegate run", description="Run a delegate agent")
    parser.add_argument("--token", default=env.get("IDP_DELEGATE_TOKEN"), help="agent token (IDP_DELEGATE_TOKEN)")
    parser.add_argument("--nats", default=env.get("IDP_NATS_URL"), help="NATS URL(s) to connect out to")
    parser.add_argument("--tag", action="append", default=None, help="a selector tag (repeatable)")
    parser.add_argument(
        "--allow", action="append", default=None, help="a host (git.corp, *.corp) or CIDR this agent may reach"
    )
    parser.add_argument("--vault-address", default=env.get("VAULT_ADDR"))
    parser.add_argument("--max-exchanges", type=int, default=256, help="concurrent requests per replica")
    parser.add_argument("--instance", default=f"{os.uname().nodename[:40]}-{uuid.uuid4().hex[:8]}")
    parser.add_argument(
        "--health-address",
        default=env.get("IDP_DELEGATE_HEALTH_ADDRESS"),
        help="host:port for the /healthz and /readyz probes (IDP_DELEGATE_HEALTH_ADDRESS); none by default",
    )
    parser.add_argument(
        "--unhealthy-after",
        type=float,
        default=env.get("IDP_DELEGATE_UNHEALTHY_AFTER_SECONDS", "60"),  # argparse converts string defaults
        help="seconds without a working NATS connection before /healthz fails (IDP_DELEGATE_UNHEALTHY_AFTER_SECONDS)",
    )
    args = parser.parse_args(argv)
    if not args.token or agent_id_of_token(args.token) is None:
        parser.error("--token must be an agent token minted by POST /api/proxy/agents")
    if not args.nats:
        parser.error("--nats (or IDP_NATS_URL) is required")
    if args.health_address:
        try:
            parse_address(args.health_address)
        except ValueError as exc:
            parser.error(f"--health-address: {exc}")
    if args.unhealthy_after <= 0:
        parser.error("--unhealthy-after must be positive")
    tags = args.tag if args.tag is not None else _split(env.get("IDP_DELEGATE_TAGS", ""))
    allow = args.allow if args.allow is not None else _split(env.get("IDP_DELEGATE_ALLOW", ""))
    try:
        policy = egress.AddressPolicy.from_entries(allow, allow_public=False)
    except ValueError as exc:
        parser.error(f"--allow: {exc}")
    vault_token = env.get("VAULT_TOKEN")
    vault = VaultSettings(args.vault_address, vault_token) if args.vault_address and vault_token else None
    return AgentConfig(
        token=args.token,
        nats_url=args.nats,
        tags=tuple(tags),
        policy=policy,
        vault=vault,
        max_exchanges=args.max_exchanges,
        instance="".join(c if c.isalnum() or c in "-_" else "-" for c in args.instance)[:64],
        health_address=args.health_address,
        unhealthy_after=args.unhealthy_after,
    )


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class Agent:
    """One replica: serves exchanges from the queue group and heartbeats until stopped or revoked."""

    def __init__(self, config: AgentConfig, nc: NatsClient, health: Health) -> None:
        self.config = config
        self.nc = nc
        self.health = health
        self.secrets = SecretResolver(vault=config.vault)
        self.session = egress.client_session(config.policy)
        self.inboxes = Inboxes(nc)
        self.exchanges: set[asyncio.Task] = set()
        self.version = importlib.metadata.version("seed-idp")

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until `stop` is set (0) or the token is refused (EXIT_REVOKED)."""
        subject = open_subject(self.config.agent_id)
        await self.inboxes.start()
        subscription = await self.nc.subscribe(subject, queue=f"delegate-{self.config.agent_id}", cb=self._on_open)
        heartbeats = asyncio.create_task(self._heartbeat())
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([heartbeats, stopper], return_when=asyncio.FIRST_COMPLETED)
            code = heartbeats.result() if heartbeats.done() else 0
        finally:
            stopper.cancel()
            heartbeats.cancel()
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
            if self.exchanges:  # let exchanges in flight finish, within reason
                await asyncio.wait(self.exchanges, timeout=10)
            for task in self.exchanges:
                task.cancel()
            await self.inboxes.stop()
            await self.session.close()
            await self.secrets.close()
        return code

    async def _heartbeat(self) -> int:
        beat = Heartbeat(
            token=self.config.token,
            instance=self.config.instance,
            version=self.version,
            tags=list(self.config.tags),
            allowlist_hash=self.config.policy.fingerprint(),
        )
        interval = self.config.heartbeat_seconds
        while True:
            try:
                reply = await request_rpc(self.nc, "plugin_proxy", "agent_heartbeat", beat, HeartbeatReply)
                interval = reply.interval_seconds
                self.health.heartbeat_answered(interval)
            except (AuthenticationError, NotAllowedError) as exc:
                log.error("the plugin-proxy refused this agent's token: %s; stopping", exc.detail)
                return EXIT_REVOKED
            except (ServiceUnavailableError, nats.errors.Error) as exc:
                if isinstance(exc.__cause__, nats.errors.NoRespondersError):
                    self.health.proxy_absent()
                log.warning("heartbeat not answered: %s", exc)
            await asyncio.sleep(interval)

    async def _on_open(self, msg: Msg) -> None:
        if len(self.exchanges) >= self.config.max_exchanges:
            await msg.respond(ABORT)
            return
        try:
            request = _decode_open(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("undecodable exchange request: %s", exc)
            await msg.respond(ABORT)
            return
        # A WebSocket's proxy side keeps alive while the socket is open, so its death is noticed here too.
        channel = self.inboxes.open(idle_timeout=request.timeout, peer_keeps_alive=request.websocket)
        channel.attach(request.reply_to)
        await msg.respond(msgspec.msgpack.encode(Accepted(channel.inbox)))
        # The proxy aborts when its caller goes away, on timeout, or when the request body is refused: the
        # upstream call is cancelled then.
        forward = self._forward_socket if request.websocket else self._forward
        task = asyncio.create_task(forward(channel, request))
        keepalive = asyncio.create_task(channel.keep_alive())
        channel.on_abort = task.cancel
        self.exchanges.add(task)

        def finished(_: asyncio.Task) -> None:
            keepalive.cancel()
            self.exchanges.discard(task)
            channel.close()

        task.add_done_callback(finished)

    async def _forward(self, channel: Channel, request: OpenRequest) -> None:
        body = channel.receive_body() if request.has_body else None

        def send(headers: list[tuple[str, str]]) -> Awaitable[aiohttp.ClientResponse]:
            url = URL(request.url, encoded=True)
            return egress.send(self.session, self.config.policy, request.method, url, headers, body, request.timeout)

        response = await self._reach_upstream(channel, request, send)
        if response is None:
            return
        async with response:
            try:
                await _relay_response(channel, response)
            except TimeoutError:
                await channel.abort(504, f"the upstream stalled for {request.timeout:g}s")
            except aiohttp.ClientError as exc:
                await channel.abort(502, f"the upstream broke off ({type(exc).__name__})")
            except AbortedError as exc:
                log.info("exchange ended by the proxy: %s", exc.detail)

    async def _forward_socket(self, channel: Channel, request: OpenRequest) -> None:
        """A WebSocket: the handshake upstream, a 101 head naming the chosen subprotocol, then messages both ways
        until either side closes (or the proxy falls silent)."""

        def connect(headers: list[tuple[str, str]]) -> Awaitable[aiohttp.ClientWebSocketResponse]:
            url = URL(request.url, encoded=True)
            return egress.connect_websocket(
                self.session, self.config.policy, url, headers, request.protocols, request.timeout, WS_MESSAGE_BYTES
            )

        ws = await self._reach_upstream(channel, request, connect)
        if ws is None:
            return
        try:
            await channel.send_head(ResponseHead(101, [("Sec-WebSocket-Protocol", ws.protocol)] if ws.protocol else []))
            channel.hold_open()
            await splice(ChannelSocket(channel), AiohttpSocket(ws))
        finally:
            await ws.close()

    async def _reach_upstream(
        self,
        channel: Channel,
        request: OpenRequest,
        call: Callable[[list[tuple[str, str]]], Awaitable[Upstream]],
    ) -> Upstream | None:
        """`call` with the request's headers and its resolved credentials; on failure the proxy is told why."""
        try:
            credentials = await self.secrets.headers(request.credentials)
            return await call(request.headers + credentials)
        except egress.EgressDeniedError as exc:
            await channel.abort(502, f"this agent's allowlist refuses the destination: {exc}")
        except SecretError as exc:
            log.warning("credential unavailable: %s", exc)
            await channel.abort(502, "a credential of this endpoint is unavailable at the agent")
        except TimeoutError:
            await channel.abort(504, f"the upstream did not answer within {request.timeout:g}s")
        except aiohttp.WSServerHandshakeError as exc:
            await channel.abort(502, f"the upstream refused the WebSocket handshake ({exc.status})")
        except (aiohttp.ClientError, AbortedError) as exc:
            await channel.abort(502, f"the upstream could not be reached ({type(exc).__name__})")
        return None


async def _relay_response(channel: Channel, response: aiohttp.ClientResponse) -> None:
    """The upstream's status, end-to-end headers and body back to the proxy."""
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in response.raw_headers
        if k.decode("latin-1").lower() not in egress.HOP_BY_HOP
    ]
    if response.content_length is not None and response.content_length <= CHUNK_BYTES:
        body = await response.read()  # small: one message instead of head, chunk and end
        await channel.send_head(ResponseHead(response.status, headers, body, complete=True))
        return
    await channel.send_head(ResponseHead(response.status, headers))
    await channel.send_body(response.content.iter_chunked(CHUNK_BYTES))


async def run_agent(config: AgentConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    health = Health(config.unhealthy_after)
    nc: NatsClient | None = None
    async with contextlib.AsyncExitStack() as stack:
        if config.health_address:  # served from the start, so a first connection that hangs shows too
            probes = serve_health(health, lambda: nc is not None and nc.is_connected, config.health_address)
            log.info("probes at %s/healthz and /readyz", await stack.enter_async_context(probes))
        nc = await connect(config.nats_url, f"idp-delegate-{config.agent_id}-{config.instance}")
        try:
            log.info(
                "delegate agent %s (%s) serving tags %s, allowlist %s",
                config.agent_id,
                config.instance,
                ",".join(config.tags),
                config.policy.fingerprint(),
            )
            return await Agent(config, nc, health).run(stop)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)


def main(argv: list[str] | None = None) -> None:
    """`idp delegate run …` and `python -m services.delegate …`."""
    config = parse_args(argv)
    configure_logging("delegate", os.environ.get("IDP_LOG_LEVEL", "INFO"))
    try:
        code = asyncio.run(run_agent(config))
    except (OSError, nats.errors.Error) as exc:
        print(f"delegate: cannot start (NATS at {config.nats_url}): {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)
