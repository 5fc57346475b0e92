"""The delegate wire protocol: one proxied HTTP exchange carried over core NATS between the proxy and an agent.

Every replica of an agent heartbeats to the plugin-proxy (`Heartbeat` over `idp.rpc.plugin_proxy.agent_heartbeat`),
which tells it the interval to keep and refuses unknown or revoked tokens.

Each side keeps one wildcard inbox subscription (`Inboxes`) and gives every exchange a channel under it. Opening:
the proxy opens a channel and sends `OpenRequest` as a NATS request to `idp.delegate.<agent>.open`, which the
agent's replicas serve as one queue group. The replica that takes it opens a channel of its own and answers
`Accepted` naming it. When no replica is connected NATS answers "no responders" at once, so a dead agent fails
fast.

Then each side sends frames to the other's inbox (NATS keeps one publisher's messages in order). A frame is one
kind byte and a payload:

- `H` response head (msgpack `ResponseHead`), agent to proxy; a small body rides inside it
- `D` a body chunk of at most `CHUNK_BYTES`, either way
- `E` end of a body
- `C` credit: the receiver consumed that many chunks, the sender may send as many more (msgpack int)
- `X` abort (msgpack `Abort`): an error from the agent, or the proxy cancelling
- `K` keepalive, agent to proxy every second while it works on the exchange, so a replica that dies mid-exchange
  is noticed within `SILENCE_LIMIT` seconds rather than at the endpoint's timeout
- `T` / `B` a WebSocket text / binary message, either way, and `L` its close (msgpack `Close`)

A WebSocket exchange (`OpenRequest.websocket`) answers the head with status 101 once the agent's handshake with the
upstream succeeded; then messages flow both ways under the same credit, one credit a message, with no idle
deadline: both sides send keepalives instead, so either notices the other's death within `SILENCE_LIMIT`.

Flow control: a sender starts with `WINDOW` chunks of credit and waits for more before sending on, so at most
`WINDOW * CHUNK_BYTES` of a body is buffered per direction however large the body is. Every wait is bounded by the
exchange's idle timeout, so a peer that vanishes mid-stream ends the exchange instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.secretref import Credential
from shared.socket_relay import Close

CHUNK_BYTES = 128 * 1024
"""Largest body chunk per message; well under NATS's default 1 MB payload limit."""
WINDOW = 8
"""Chunks a sender may have unconsumed in flight."""
HEAD, DATA, END, CREDIT, ABORT, KEEPALIVE = b"H", b"D", b"E", b"C", b"X", b"K"
TEXT, BINARY, CLOSE = b"T", b"B", b"L"
WS_MESSAGE_BYTES = 768 * 1024
"""Largest WebSocket message carried through an agent: one NATS message, under its default 1 MB limit."""
KEEPALIVE_SECONDS = 1.0
"""How often an agent tells the proxy it is still working on an exchange."""
SILENCE_LIMIT = 3.0
"""An agent replica silent this long during an exchange is taken for dead: the proxy answers 503."""
AGENT_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"
Tag = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:=-]{1,64}$")]


def open_subject(agent: str) -> str:
    return f"idp.delegate.{agent}.open"


class Heartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an agent replica sends on start and every few seconds (`idp.rpc.plugin_proxy.agent_heartbeat`)."""

    token: str
    instance: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    version: Annotated[str, msgspec.Meta(max_length=64)]
    tags: Annotated[list[Tag], msgspec.Meta(max_length=32)]
    allowlist_hash: Annotated[str, msgspec.Meta(max_length=64)]


class HeartbeatReply(msgspec.Struct, frozen=True):
    agent: str
    interval_seconds: float


def agent_id_of_token(token: str) -> str | None:
    """Tokens read `<agent id>.<secret>`, so an agent needs nothing but its token."""
    agent, _, secret = token.partition(".")
    return agent if re.match(AGENT_ID, agent) and len(secret) >= 32 else None


class OpenRequest(msgspec.Struct, frozen=True):
    """What the proxy asks an agent to send upstream. Credentials are references the agent resolves itself."""

    reply_to: str
    method: str
    url: str
    headers: list[tuple[str, str]]
    credentials: list[Credential]
    timeout: float
    has_body: bool
    websocket: bool = False
    """Open a WebSocket (the request is its handshake) instead of sending an HTTP request."""
    protocols: list[str] = []
    """WebSocket subprotocols the caller offered."""


class Accepted(msgspec.Struct, frozen=True):
    inbox: str


class ResponseHead(msgspec.Struct, frozen=True):
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    """A body of at most one chunk travels inside the head; then `complete` is set and no D/E frames follow."""
    complete: bool = False


class Abort(msgspec.Struct, frozen=True):
    status: int
    """The HTTP status the proxy answers with (502, 503, 504, 499 for a cancellation)."""
    detail: str


class AbortedError(Exception):
    """The peer aborted the exchange, or it broke (timeout, protocol error)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


T = TypeVar("T")
_encode = msgspec.msgpack.encode
_decode_head = msgspec.msgpack.Decoder(ResponseHead).decode
_decode_abort = msgspec.msgpack.Decoder(Abort).decode
_decode_credit = msgspec.msgpack.Decoder(int).decode
_decode_close = msgspec.msgpack.Decoder(Close).decode


class Inboxes:
    """One wildcard subscription per connection, routing frames to the channels open on it: an exchange then costs
    no subscription of its own."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self._channels: dict[str, Channel] = {}
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(self.prefix + ".*", cb=self._route)

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()

    async def _route(self, msg: Msg) -> None:
        channel = self._channels.get(msg.subject[len(self.prefix) + 1 :])
        if channel is not None:  # frames of a closed exchange are dropped
            channel.receive(msg.data)

    def open(self, idle_timeout: float | None, *, peer_keeps_alive: bool) -> Channel:
        """A channel whose inbox is live at once; `close()` it when the exchange ends."""
        token = uuid.uuid4().hex
        channel = Channel(self, token, idle_timeout, peer_keeps_alive)
        self._channels[token] = channel
        return channel

    def release(self, token: str) -> None:
        self._channels.pop(token, None)


class Channel:
    """One side of an exchange: its inbox, the peer's inbox, and credit in both directions."""

    def __init__(self, inboxes: Inboxes, token: str, idle_timeout: float | None, peer_keeps_alive: bool) -> None:
        self.nc = inboxes.nc
        self._inboxes = inboxes
        self._token = token
        self.inbox = f"{inboxes.prefix}.{token}"
        self.peer = ""
        self.idle_timeout = idle_timeout
        """Longest wait for the peer; None for a WebSocket once open, which may idle as long as both sides live."""
        self.peer_keeps_alive = peer_keeps_alive
        self._heard = time.monotonic()
        self._frames: asyncio.Queue[bytes] = asyncio.Queue()
        self._credit = WINDOW
        self._unreturned = 0
        self._credit_changed = asyncio.Event()
        self._aborted: Abort | None = None
        self.on_abort: Callable[[], object] | None = None
        """Called when the peer aborts (the agent cancels its upstream call with it)."""

    def attach(self, peer: str) -> None:
        """Start talking to the peer's inbox; its silence is counted from now."""
        self.peer = peer
        self._heard = time.monotonic()

    def close(self) -> None:
        self._inboxes.release(self._token)

    def hold_open(self) -> None:
        """From now on wait for the peer without a deadline (an open WebSocket), but never past its silence."""
        self.idle_timeout = None
        self._heard = time.monotonic()

    def receive(self, data: bytes) -> None:
        self._heard = time.monotonic()
        kind = data[:1]
        if kind == KEEPALIVE:
            return
        if kind == CREDIT:
            self._credit += _decode_credit(data[1:])
            self._credit_changed.set()
            return
        if kind == ABORT:
            self._aborted = _decode_abort(data[1:])
            self._credit_changed.set()
            if self.on_abort is not None:
                self.on_abort()
        self._frames.put_nowait(data)

    def _raise_if_aborted(self) -> None:
        if self._aborted is not None:
            raise AbortedError(self._aborted.status, self._aborted.detail)

    async def _within_limits(self, ready: Callable[[], Awaitable[T]], stalled: str) -> T:
        """Await `ready()` for at most the idle timeout, and only while a peer that keeps alive is heard from."""
        deadline = time.monotonic() + (self.idle_timeout if self.idle_timeout is not None else float("inf"))
        while True:
            limit = min(deadline, self._heard + SILENCE_LIMIT) if self.peer_keeps_alive else deadline
            try:
                wait = None if limit == float("inf") else max(0.0, limit - time.monotonic())
                return await asyncio.wait_for(ready(), wait)
            except TimeoutError:
                now = time.monotonic()
                if now >= deadline:
                    raise AbortedError(504, stalled) from None
                if now >= self._heard + SILENCE_LIMIT:
                    raise AbortedError(503, "the other side went silent (it died or lost NATS)") from None

    async def _take_credit(self) -> None:
        while self._credit <= 0:
            self._raise_if_aborted()
            self._credit_changed.clear()
            await self._within_limits(self._credit_changed.wait, "the peer stopped reading the body")
        self._credit -= 1

    async def keep_alive(self) -> None:
        """Until cancelled, tell the peer every `KEEPALIVE_SECONDS` that this side still works on the exchange."""
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(self.peer, KEEPALIVE)

    async def next_frame(self) -> tuple[bytes, bytes]:
        data = await self._within_limits(self._frames.get, f"nothing received for {self.idle_timeout or 0:g}s")
        if data[:1] == ABORT:
            self._raise_if_aborted()
        return data[:1], data[1:]

    async def send_head(self, head: ResponseHead) -> None:
        await self.nc.publish(self.peer, HEAD + _encode(head))

    async def receive_head(self) -> ResponseHead:
        kind, payload = await self.next_frame()
        if kind != HEAD:
            raise AbortedError(502, "the agent sent a body before the response head")
        return _decode_head(payload)

    async def send_body(self, chunks: AsyncIterable[bytes]) -> None:
        """Send a body in chunks as credit allows, then its end."""
        async for chunk in chunks:
            for start in range(0, len(chunk), CHUNK_BYTES):
                await self._take_credit()
                await self.nc.publish(self.peer, DATA + chunk[start : start + CHUNK_BYTES])
                # Let nats-py's flusher write this chunk now: left queued, a window of chunks piles up in its
                # pending list and is joined into one more copy of it all when written.
                await asyncio.sleep(0)
        await self.nc.publish(self.peer, END)

    async def receive_body(self) -> AsyncIterator[bytes]:
        """The peer's body chunk by chunk; credit goes back as the consumer takes chunks."""
        while True:
            kind, payload = await self.next_frame()
            if kind == END:
                return
            if kind != DATA:
                raise AbortedError(502, "unexpected frame inside a body")
            yield payload
            await self._consumed()

    async def _consumed(self) -> None:
        """One chunk or message taken; credit goes back in batches of half the window."""
        self._unreturned += 1
        if self._unreturned >= WINDOW // 2:
            await self.nc.publish(self.peer, CREDIT + _encode(self._unreturned))
            self._unreturned = 0

    async def send_message(self, message: str | bytes) -> None:
        """One WebSocket message, as credit allows."""
        await self._take_credit()
        if isinstance(message, str):
            await self.nc.publish(self.peer, TEXT + message.encode())
        else:
            await self.nc.publish(self.peer, BINARY + message)

    async def receive_message(self) -> str | bytes | Close:
        kind, payload = await self.next_frame()
        if kind == CLOSE:
            return _decode_close(payload)
        if kind not in (TEXT, BINARY):
            raise AbortedError(502, "unexpected frame inside a WebSocket exchange")
        await self._consumed()
        return payload.decode() if kind == TEXT else payload

    async def send_close(self, close: Close) -> None:
        await self.nc.publish(self.peer, CLOSE + _encode(close))

    def fail(self, status: int, detail: str) -> None:
        """End the exchange on this side: whatever waits on the channel raises `AbortedError(status, detail)`."""
        self.receive(ABORT + _encode(Abort(status, detail)))

    async def abort(self, status: int, detail: str) -> None:
        """Tell the peer the exchange is over (best effort: the peer may be gone already)."""
        if self.peer:
            with contextlib.suppress(nats.errors.Error):
                await self.nc.publish(self.peer, ABORT + _encode(Abort(status, detail)))


class ChannelSocket:
    """A WebSocket exchange's channel as a `shared.socket_relay.Socket`: an abort or the peer's silence closes it."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.closed = False

    async def receive(self) -> str | bytes | Close:
        try:
            return await self.channel.receive_message()
        except AbortedError as exc:
            return Close(1011, exc.detail[:120])

    async def send(self, message: str | bytes) -> None:
        await self.channel.send_message(message)

    async def close(self, close: Close) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(nats.errors.Error):
                await self.channel.send_close(close)
