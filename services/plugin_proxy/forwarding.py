"""Sending a checked request upstream, directly or through a delegate agent, and what the proxy process keeps for
that: client pools, the secret resolver, the endpoint and agent caches, and the sampled access events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from prometheus_client import Counter
from yarl import URL

from services.plugin_proxy import service
from services.plugin_proxy.model import Endpoint, EndpointSpec, LiveAgent, direct_policy, matching_agents
from shared import egress
from shared.auth import Principal
from shared.delegate_wire import (
    ABORT,
    CHUNK_BYTES,
    WS_MESSAGE_BYTES,
    AbortedError,
    Accepted,
    Channel,
    ChannelSocket,
    Inboxes,
    OpenRequest,
    ResponseHead,
    open_subject,
)
from shared.errors import (
    ERRORS_BY_STATUS,
    BadGatewayError,
    GatewayTimeoutError,
    PayloadTooLargeError,
    ServiceUnavailableError,
)
from shared.events import Actor, Event, ResourceRef, new_event
from shared.secretref import SecretError, SecretResolver
from shared.socket_relay import AiohttpSocket, Socket

log = logging.getLogger(__name__)
EndpointGuard = Callable[[Principal, Endpoint], bool]
ACCESS_EVENTS_DROPPED = Counter(
    "idp_proxy_access_events_dropped", "Sampled access events dropped because the buffer was full"
)
_encode = msgspec.msgpack.encode
_decode_accepted = msgspec.msgpack.Decoder(Accepted).decode


@dataclass
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]
    body: AsyncIterator[bytes]
    close: Callable[[], Awaitable[None]]
    agent: str | None = None


@dataclass
class UpstreamSocket:
    """An open upstream WebSocket (direct, or through an agent) and what the caller's side must match."""

    socket: Socket
    protocol: str | None
    """The subprotocol the upstream chose."""
    max_message_bytes: int
    close: Callable[[], Awaitable[None]]
    agent: str | None = None


class AccessLog:
    """Samples proxied calls into `plugin_proxy.request.proxied` events, flushed in batches through the outbox."""

    def __init__(self, sample_rate: float, capacity: int = 10_000) -> None:
        self.sample_rate = sample_rate
        self.capacity = capacity
        self.pending: list[Event] = []

    def record(
        self, *, method: str, endpoint: str, status: int, duration: float, caller: Actor, agent: str | None
    ) -> None:
        if self.sample_rate <= 0 or random.random() >= self.sample_rate:
            return
        if len(self.pending) >= self.capacity:
            ACCESS_EVENTS_DROPPED.inc()
            return
        data = {
            "method": method,
            "endpoint": endpoint,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
            "mode": "delegate" if agent else "direct",
            "sample_rate": self.sample_rate,
        }
        if agent:
            data["agent"] = agent
        self.pending.append(
            new_event(
                "plugin_proxy.request.proxied",
                source=service.SOURCE,
                actor=caller,
                resource=ResourceRef("endpoint", endpoint),
                data=data,
            )
        )

    def take(self) -> list[Event]:
        taken, self.pending = self.pending, []
        return taken


@dataclass
class ProxyContext:
    """Per-process state of the proxy, opened by `open_proxy_context` for the service's lifetime."""

    pool: asyncpg.Pool
    nc: NatsClient
    inboxes: Inboxes
    secrets: SecretResolver
    access: AccessLog
    open_timeout: float
    may_use: EndpointGuard
    sessions: egress.SessionPool = field(default_factory=egress.SessionPool)
    agents: list[LiveAgent] = field(default_factory=list)
    """Unrevoked agents with a live replica, refreshed every second by `handlers.track_agents`."""
    _endpoints: dict[str, tuple[float, Endpoint]] = field(default_factory=dict)

    ENDPOINT_TTL = 1.0
    """How long a replica serves an endpoint from memory; another replica's change shows within this."""

    async def endpoint(self, name: str) -> Endpoint:
        cached = self._endpoints.get(name)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        endpoint = await service.get_endpoint(self.pool, name)
        self._endpoints[name] = (time.monotonic() + self.ENDPOINT_TTL, endpoint)
        return endpoint

    def forget_endpoint(self, name: str) -> None:
        self._endpoints.pop(name, None)

    async def close(self) -> None:
        await self.sessions.close()
        await self.secrets.close()

    async def send(
        self, endpoint: Endpoint, method: str, url: URL, headers: list[tuple[str, str]], body: BodyReader | None
    ) -> UpstreamResponse:
        """Open the upstream exchange; errors become 413, 502, 503 or 504 problems."""
        spec = endpoint.spec
        try:
            if spec.delegate is None:
                return await self._send_direct(spec, method, url, headers, body)
            return await self._send_delegated(endpoint, method, url, headers, body)
        except Exception:
            if body is not None and body.too_large:
                raise PayloadTooLargeError(f"request body exceeds {spec.max_body_bytes} bytes") from None
            raise

    async def _send_direct(
        self, spec: EndpointSpec, method: str, url: URL, headers: list[tuple[str, str]], body: BodyReader | None
    ) -> UpstreamResponse:
        policy = direct_policy(spec)
        credentials = await self._credentials(spec)
        with _direct_errors(spec):
            response = await egress.send(
                self.sessions.session(policy),
                policy,
                method,
                url,
                headers + credentials,
                body.chunks() if body else None,
                spec.timeout_seconds,
            )

        async def close() -> None:
            response.release()

        headers_out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        return UpstreamResponse(response.status, headers_out, _direct_body(response, spec.timeout_seconds), close)

    async def _credentials(self, spec: EndpointSpec) -> list[tuple[str, str]]:
        try:
            return await self.secrets.headers(spec.credentials)
        except SecretError as exc:
            log.warning("credential unavailable: %s", exc)
            raise BadGatewayError("a credential of this endpoint is unavailable") from None

    async def open_socket(
        self, endpoint: Endpoint, url: URL, headers: list[tuple[str, str]], protocols: list[str]
    ) -> UpstreamSocket:
        """Open the upstream WebSocket, directly or through an agent; errors become 502, 503 or 504 problems."""
        spec = endpoint.spec
        if spec.delegate is not None:
            return await self._open_delegated_socket(endpoint, url, headers, protocols)
        policy = direct_policy(spec)
        credentials = await self._credentials(spec)
        with _direct_errors(spec):
            ws = await egress.connect_websocket(
                self.sessions.session(policy),
                policy,
                url,
                headers + credentials,
                protocols,
                spec.timeout_seconds,
                spec.max_body_bytes,
            )

        async def close() -> None:
            await ws.close()

        return UpstreamSocket(AiohttpSocket(ws), ws.protocol, spec.max_body_bytes, close)

    async def _send_delegated(
        self, endpoint: Endpoint, method: str, url: URL, headers: list[tuple[str, str]], body: BodyReader | None
    ) -> UpstreamResponse:
        request = OpenRequest(
            reply_to="",
            method=method,
            url=str(url),
            headers=headers,
            credentials=endpoint.spec.credentials,
            timeout=endpoint.spec.timeout_seconds,
            has_body=body is not None,
        )
        agent, channel, head, sender = await self._exchange(endpoint, request, body)
        finished = head.complete

        async def response_body() -> AsyncIterator[bytes]:
            nonlocal finished
            if head.complete:
                yield head.body
                return
            async for chunk in channel.receive_body():
                yield chunk
            finished = True

        async def close() -> None:
            await _stop_sender(sender)
            if not finished:
                await channel.abort(499, "the caller went away")
            channel.close()

        return UpstreamResponse(head.status, head.headers, response_body(), close, agent=agent)

    async def _open_delegated_socket(
        self, endpoint: Endpoint, url: URL, headers: list[tuple[str, str]], protocols: list[str]
    ) -> UpstreamSocket:
        spec = endpoint.spec
        request = OpenRequest(
            reply_to="",
            method="GET",
            url=str(url),
            headers=headers,
            credentials=spec.credentials,
            timeout=spec.timeout_seconds,
            has_body=False,
            websocket=True,
            protocols=protocols,
        )
        agent, channel, head, _ = await self._exchange(endpoint, request, None)
        if head.status != 101:
            await channel.abort(502, "not a WebSocket")
            channel.close()
            raise BadGatewayError(f"agent {agent}: the upstream refused the WebSocket handshake ({head.status})")
        channel.hold_open()  # an open WebSocket may idle; keepalives both ways show that each side lives
        keepalive = asyncio.create_task(channel.keep_alive())
        socket = ChannelSocket(channel)

        async def close() -> None:
            keepalive.cancel()
            if not socket.closed:
                await channel.abort(499, "the caller went away")
            channel.close()

        protocol = next((v for k, v in head.headers if k.lower() == "sec-websocket-protocol"), None)
        return UpstreamSocket(socket, protocol, min(spec.max_body_bytes, WS_MESSAGE_BYTES), close, agent=agent)

    async def _exchange(
        self, endpoint: Endpoint, request: OpenRequest, body: BodyReader | None
    ) -> tuple[str, Channel, ResponseHead, asyncio.Task | None]:
        """Open an exchange with an agent that has the endpoint's tags, send the request (and stream its body) and
        wait for the response head; on any failure the agent is told to stop."""
        spec = endpoint.spec
        assert spec.delegate is not None
        candidates = matching_agents(self.agents, spec.delegate)
        if not candidates:
            raise ServiceUnavailableError(f"no online delegate agent has the tags {', '.join(spec.delegate.tags)}")
        agent = random.choice(candidates)
        channel = self.inboxes.open(idle_timeout=spec.timeout_seconds, peer_keeps_alive=True)
        sender: asyncio.Task | None = None
        try:
            request = msgspec.structs.replace(request, reply_to=channel.inbox)
            channel.attach((await self._open(agent, _encode(request))).inbox)
            if body is not None:
                sender = asyncio.create_task(_send_request_body(channel, body))
            head = await channel.receive_head()
        except AbortedError as exc:
            await _stop_sender(sender)
            await channel.abort(499, "the proxy gave up")
            channel.close()
            raise ERRORS_BY_STATUS.get(exc.status, BadGatewayError)(f"agent {agent}: {exc.detail}") from None
        except BaseException:
            await _stop_sender(sender)
            await channel.abort(499, "the proxy gave up")
            channel.close()
            raise
        return agent, channel, head, sender

    async def _open(self, agent: str, request: bytes) -> Accepted:
        """Ask the agent's queue group to take the exchange; one retry covers a replica that died meanwhile."""
        retried = False
        while True:
            try:
                reply = await self.nc.request(open_subject(agent), request, timeout=self.open_timeout)
            except nats.errors.NoRespondersError:
                raise ServiceUnavailableError(f"delegate agent {agent} has no connected replica") from None
            except nats.errors.TimeoutError:
                if retried:
                    raise ServiceUnavailableError(f"delegate agent {agent} did not answer") from None
                retried = True
                continue
            if reply.data[:1] == ABORT:
                raise AbortedError(503, "the agent refused the exchange (at capacity)")
            return _decode_accepted(reply.data)


@contextlib.contextmanager
def _direct_errors(spec: EndpointSpec) -> Iterator[None]:
    """Failures to reach a direct endpoint's upstream, as the problems the caller gets."""
    try:
        yield
    except egress.EgressDeniedError as exc:
        raise BadGatewayError(f"the endpoint's target is not allowed: {exc}") from None
    except TimeoutError:
        raise GatewayTimeoutError(f"the upstream did not answer within {spec.timeout_seconds:g}s") from None
    except aiohttp.WSServerHandshakeError as exc:
        raise BadGatewayError(f"the upstream refused the WebSocket handshake ({exc.status})") from None
    except aiohttp.ClientError as exc:
        raise BadGatewayError(f"the upstream could not be reached ({type(exc).__name__})") from None


async def _send_request_body(channel: Channel, body: BodyReader) -> None:
    """Stream the caller's body to the agent; if it breaks (too large, caller gone), end the exchange both ways."""
    try:
        await channel.send_body(body.chunks())
    except AbortedError:
        pass  # the agent ended the exchange; the response side reports why
    except Exception as exc:
        status = 413 if body.too_large else 499
        await channel.abort(status, "the request body broke off")
        channel.fail(status, f"the request body broke off ({type(exc).__name__})")


async def _stop_sender(sender: asyncio.Task | None) -> None:
    if sender is not None and not sender.done():
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _direct_body(response: aiohttp.ClientResponse, timeout: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            yield chunk
    except TimeoutError:
        raise GatewayTimeoutError(f"the upstream stalled for {timeout:g}s") from None
    except aiohttp.ClientError as exc:
        raise BadGatewayError(f"the upstream broke off ({type(exc).__name__})") from None


class BodyReader:
    """The caller's request body as chunks, refused once it passes the endpoint's limit."""

    def __init__(self, stream: AsyncIterable[bytes], limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self.too_large = False

    async def chunks(self) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in self._stream:
            received += len(chunk)
            if received > self._limit:
                self.too_large = True
                raise PayloadTooLargeError(f"request body exceeds {self._limit} bytes")
            yield chunk
