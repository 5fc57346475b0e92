from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from services.audit.app import DEFINITION, Settings
from shared.service import RunningService, running_service


@pytest_asyncio.fixture
async def audit(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    """The audit service with its consumer and relay running, on a free port."""
    async with running_service(DEFINITION, make_settings(Settings)) as service:
        yield service
