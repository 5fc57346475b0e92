"""The garbage collector's full collections, deferred while bulk work runs.

A bulk write (a location read of 100,000 entities) builds millions of container objects that live a little
while: parsed documents, stitched entities, search rows. CPython 3.11 runs a full collection each time the objects
promoted to its oldest generation grow by a quarter, and each walks every live object; during such a read that was
over a quarter of the service's CPU, for almost no garbage (`docs/benchmarks.md`, "Garbage collection and held
entities").

Young collections keep running, so cyclic garbage that dies young, which is nearly all of it (a request's), is
still freed at once; what reaches the oldest generation waits until the last bulk write ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

DEFERRED_OLDEST_THRESHOLD = 1_000_000
"""Collections of the middle generation between full ones while deferred: none happen in a bulk write's time."""

_deferring = 0
_saved_threshold: tuple[int, int, int] | None = None


@contextlib.contextmanager
def full_collections_deferred() -> Iterator[None]:
    """No full collection while the block runs. Nests, and bulk writes may overlap on one event loop: the
    thresholds come back when the last one ends. For the event loop's thread: not safe across threads."""
    global _deferring, _saved_threshold
    if _deferring == 0:
        _saved_threshold = gc.get_threshold()
        young, middle, _ = _saved_threshold
        gc.set_threshold(young, middle, DEFERRED_OLDEST_THRESHOLD)
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if _deferring == 0:
            assert _saved_threshold is not None
            gc.set_threshold(*_saved_threshold)
            _saved_threshold = None
