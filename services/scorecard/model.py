"""Scorecard structs (the scoring model arrives with its own issue)."""

from __future__ import annotations

import datetime as dt

import msgspec


class ConsumerProgress(msgspec.Struct, frozen=True):
    """The last event scorecard's consumer processed, and how many distinct events it has seen."""

    consumer: str
    last_event_id: str
    last_event_type: str
    last_event_time: dt.datetime
    events_seen: int
    updated_at: dt.datetime
