"""Small helpers shared by tests: polling until a condition holds, building events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

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


BACKSTAGE_EXAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "backstage-examples"
"""Backstage's own example catalog (78 entities), kept in ../shared beside the repository."""
_NOT_ENTITIES = {"petstore-webhook.oas.yaml"}  # an OpenAPI document pulled in through `$text`


def backstage_example_entities() -> list[dict]:
    """Every entity document of the example set; skips the test when the set is not beside the repository."""
    if not BACKSTAGE_EXAMPLES.is_dir():
        pytest.skip(f"the Backstage example dataset is not at {BACKSTAGE_EXAMPLES}")
    entities = []
    for path in sorted(BACKSTAGE_EXAMPLES.rglob("*.yaml")):
        if path.name not in _NOT_ENTITIES:
            entities += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return entities
