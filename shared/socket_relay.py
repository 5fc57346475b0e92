"""Carrying WebSocket messages between two sockets (a caller and an upstream, either of them perhaps a delegate
exchange) until one side closes, and closing the other with the same code.

A `Socket` yields text (`str`) and binary (`bytes`) messages and ends with a `Close`. `AiohttpSocket` adapts
aiohttp's server and client WebSockets; `shared.delegate_wire.ChannelSocket` adapts a delegate exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import aiohttp
import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

Message = str | bytes
UNSENDABLE_CLOSE_CODES = {1005: WSCloseCode.OK, 1006: WSCloseCode.INTERNAL_ERROR, 1015: WSCloseCode.INTERNAL_ERROR}
"""Codes that report what happened to a connection and may never be sent in a close frame (RFC 6455 §7.4.1)."""


class Close(msgspec.Struct, frozen=True):
    code: int
    reason: str = ""

    def sendable(self) -> Close:
        """This close as the other side may be told it."""
        code = UNSENDABLE_CLOSE_CODES.get(self.code, self.code)
        return self if code == self.code else Close(code, self.reason)


class Socket(Protocol):
    async def receive(self) -> Message | Close: ...

    async def send(self, message: Message) -> None: ...

    async def close(self, close: Close) -> None: ...


class AiohttpSocket:
    """aiohttp's `web.WebSocketResponse` or `ClientWebSocketResponse` (pings are answered by aiohttp itself)."""

    def __init__(self, ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def receive(self) -> Message | Close:
        message = await self.ws.receive()
        if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            return message.data
        if message.type == WSMsgType.CLOSE:
            return Close(message.data, message.extra or "")
        # CLOSING, CLOSED, ERROR (a message over the size limit, a broken connection): aiohttp has closed it
        return Close(self.ws.close_code or WSCloseCode.ABNORMAL_CLOSURE)

    async def send(self, message: Message) -> None:
        if isinstance(message, str):
            await self.ws.send_str(message)
        else:
            await self.ws.send_bytes(message)

    async def close(self, close: Close) -> None:
        reason = close.reason.encode()[:123].decode(errors="ignore").encode()  # a close frame's limit, whole chars
        with contextlib.suppress(ConnectionError):
            await self.ws.close(code=close.code, message=reason)


async def splice(a: Socket, b: Socket, close_grace: float = 5.0) -> None:
    """Carry messages both ways until one side closes or fails; the other is then closed with the same code
    (a failure closes it with 1011).

    Closing a side also ends the direction reading from it, often first, while the closing handshake is still
    under way: so the other direction gets `close_grace` seconds to finish it before it is cut off. The same holds
    when the splice itself is cancelled (an HTTP handler whose caller's connection dropped right after its close):
    the side that ended is seen by its direction, which closes the other side properly.
    """

    async def carry(source: Socket, sink: Socket) -> None:
        try:
            while not isinstance(message := await source.receive(), Close):
                await sink.send(message)
        except Exception:
            await sink.close(Close(WSCloseCode.INTERNAL_ERROR, "the other side of the proxy failed"))
            raise
        await sink.close(message.sendable())

    directions = [asyncio.create_task(carry(a, b)), asyncio.create_task(carry(b, a))]
    try:
        _, pending = await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=close_grace)
    except asyncio.CancelledError:
        await asyncio.wait(directions, timeout=close_grace)
        raise
    finally:
        for direction in directions:
            direction.cancel()
        await asyncio.gather(*directions, return_exceptions=True)
