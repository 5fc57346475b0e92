"""Export streams: 100k rows leave the server in bounded memory."""

from __future__ import annotations

import tracemalloc

from services.audit import service
from tests.helpers import sample_event

ROWS = 100_000


async def test_export_of_100k_rows_stays_in_bounded_memory(audit, http):
    for start in range(0, ROWS, 10_000):
        await service.append_events(audit.deps.pool, [sample_event(i) for i in range(start, start + 10_000)])
    tracemalloc.start()
    try:
        received = lines = 0
        async with http.get(f"{audit.url}/api/audit/export", params={"format": "jsonl"}) as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(64 * 1024):
                received += len(chunk)
                lines += chunk.count(b"\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines == ROWS
    # The whole export is tens of MB; building it in memory would peak far above this bound.
    assert received > 30 * 1024 * 1024
    assert peak < 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while exporting {received / 2**20:.1f} MiB"
