"""Full collections deferred during bulk work, and the thresholds given back when the last bulk work ends."""

from __future__ import annotations

import gc

import pytest

from shared.garbage_collection import DEFERRED_OLDEST_THRESHOLD, full_collections_deferred


def test_full_collections_are_deferred_in_the_block_and_the_thresholds_restored_after_it():
    before = gc.get_threshold()
    with full_collections_deferred():
        young, middle, oldest = gc.get_threshold()
        assert (young, middle) == before[:2] and oldest == DEFERRED_OLDEST_THRESHOLD
    assert gc.get_threshold() == before


def test_overlapping_bulk_writes_restore_the_thresholds_when_the_last_one_ends():
    before = gc.get_threshold()
    first, second = full_collections_deferred(), full_collections_deferred()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still runs
    assert gc.get_threshold()[2] == DEFERRED_OLDEST_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


def test_the_thresholds_come_back_when_the_bulk_work_fails():
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), full_collections_deferred():
        raise RuntimeError("the read failed")
    assert gc.get_threshold() == before
