"""Small helpers shared by tests: polling until a condition holds, building events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared.events import Actor, Event, ResourceRef, new_event

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Await `check()` until it returns a truthy value or raises no AssertionError; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = await check()
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last result {result!r})")
        await asyncio.sleep(interval)


def sample_event(n: int = 0, *, type: str = "test.thing.created", scope: str = "account", **data: Any) -> Event:
    return new_event(
        type,
        source="test",
        actor=Actor("user", f"user-{n % 7}"),
        resource=ResourceRef("thing", f"thing-{n}"),
        scope=scope,
        data={"n": n, **data},
    )
