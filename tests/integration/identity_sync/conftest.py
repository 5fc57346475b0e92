from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from services.identity_sync.app import DEFINITION, Settings
from shared.service import RunningService, running_service


@pytest_asyncio.fixture
async def identity(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    """Identity-sync with its relay and background tasks running, on a free port."""
    async with running_service(DEFINITION, make_settings(Settings)) as service:
        yield service


async def outbox_types(identity: RunningService) -> list[str]:
    async with identity.deps.pool.acquire() as conn:
        rows = await conn.fetch("SELECT subject FROM outbox ORDER BY seq")
    return [r["subject"].removeprefix("idp.evt.") for r in rows]
