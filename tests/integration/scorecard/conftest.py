from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest_asyncio

from services.catalog.app import DEFINITION as CATALOG
from services.catalog.app import Settings as CatalogSettings
from services.scorecard.app import DEFINITION as SCORECARD
from services.scorecard.app import Settings as ScorecardSettings
from shared.service import RunningService, running_service


@pytest_asyncio.fixture
async def catalog(make_settings: Callable[..., Any]) -> AsyncIterator[RunningService]:
    async with running_service(CATALOG, make_settings(CatalogSettings)) as service:
        yield service


@pytest_asyncio.fixture
async def scorecard(
    make_settings: Callable[..., Any], catalog: RunningService, tmp_path
) -> AsyncIterator[RunningService]:
    """The scorecard service (consumer, jobs, sync) beside a running catalog; file rules may read `tmp_path`."""
    settings = make_settings(ScorecardSettings, file_roots=str(tmp_path))
    async with running_service(SCORECARD, settings) as service:
        yield service
