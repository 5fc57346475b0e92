"""`splice` between two in-memory sockets: messages both ways, closes carried with a code the peer may be sent."""

from __future__ import annotations

import asyncio

from shared.socket_relay import Close, Message, splice


class MemorySocket:
    """Messages put in `incoming` are received; what is sent or closed is recorded."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[Message | Close | Exception] = asyncio.Queue()
        self.sent: list[Message] = []
        self.closed: Close | None = None

    async def receive(self) -> Message | Close:
        item = await self.incoming.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def close(self, close: Close) -> None:
        self.closed = close
        self.incoming.put_nowait(Close(close.code))  # as a real socket ends its reading side


async def test_messages_cross_and_a_close_keeps_its_code():
    a, b = MemorySocket(), MemorySocket()
    for item in ["one", b"two", Close(4001, "done")]:
        a.incoming.put_nowait(item)
    b.incoming.put_nowait("three")
    await splice(a, b)
    assert b.sent == ["one", b"two"] and a.sent == ["three"]
    assert b.closed == Close(4001, "done")


async def test_unsendable_codes_and_failures_become_sendable_ones():
    a, b = MemorySocket(), MemorySocket()
    a.incoming.put_nowait(Close(1006))
    await splice(a, b)
    assert b.closed == Close(1011)

    a, b = MemorySocket(), MemorySocket()
    a.incoming.put_nowait(Close(1005))
    await splice(a, b)
    assert b.closed == Close(1000)

    a, b = MemorySocket(), MemorySocket()
    a.incoming.put_nowait(ConnectionResetError())
    await splice(a, b)
    assert b.closed is not None and b.closed.code == 1011
