"""Audit records, secret masking, the hash chain and its verification: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import msgspec

from shared.events import Event
from shared.telemetry import trace_id_of

MASK = "***"
GENESIS_HASH = b""
# Name parts that mark a value as secret: `password`, `apiKey`, `x-auth-token`, `client_secret` ...
_SECRET_PARTS = {
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "key",
    "apikey",
    "authorization",
    "credential",
    "credentials",
    "cookie",
    "privatekey",
    "passphrase",
}
_NAME_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One persisted event, exactly as stored in `audit.events`."""

    seq: int
    id: str
    type: str
    source: str
    time: dt.datetime
    actor_kind: str
    actor_id: str
    scope: str
    resource_kind: str
    resource_id: str
    trace_id: str
    data: dict[str, Any]
    schema: int
    hash: bytes = b""


class SettingsUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=36500)]
    """Events older than this many days are pruned (a checkpoint keeps the chain verifiable)."""


class VerifyError(msgspec.Struct, frozen=True):
    seq: int
    reason: str


class VerifyResult(msgspec.Struct, frozen=True):
    ok: bool
    checked: int
    """Records whose link was checked."""
    from_seq: int
    """The chain was checked from this position (1, or the record after the latest pruning checkpoint)."""
    to_seq: int
    first_error: VerifyError | None = None


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    parts = [p.lower() for p in _NAME_PARTS.findall(name)]
    joined = "".join(parts)
    return joined in _SECRET_PARTS or any(p in _SECRET_PARTS for p in parts)


def mask_secrets(value: Any) -> Any:
    """A copy of `value` where every value under a secret-looking key is replaced by `***`.

    NUL characters are replaced too: PostgreSQL's jsonb cannot store them, and an event must not be
    lost for one.
    """
    if isinstance(value, dict):
        return {k: MASK if is_secret_name(str(k)) else mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def record_from_event(event: Event, seq: int = 0) -> AuditRecord:
    return AuditRecord(
        seq=seq,
        id=event.id,
        type=event.type,
        source=event.source,
        time=event.time.astimezone(dt.UTC),
        actor_kind=event.actor.kind,
        actor_id=event.actor.id,
        scope=event.scope,
        resource_kind=event.resource.kind,
        resource_id=event.resource.id,
        trace_id=trace_id_of(event.trace),
        data=mask_secrets(event.data),
        schema=event.schema,
    )


_canonical = msgspec.json.Encoder(order="sorted")


def canonical_bytes(record: AuditRecord) -> bytes:
    """The bytes the chain hashes: every stored field but the hash, keys sorted, time in UTC µs."""
    return _canonical.encode(
        {
            "seq": record.seq,
            "id": record.id,
            "type": record.type,
            "source": record.source,
            "time": record.time.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            "actor": [record.actor_kind, record.actor_id],
            "scope": record.scope,
            "resource": [record.resource_kind, record.resource_id],
            "trace_id": record.trace_id,
            "data": record.data,
            "schema": record.schema,
        }
    )


def chain_hash(previous: bytes, record: AuditRecord) -> bytes:
    return hashlib.sha256(previous + canonical_bytes(record)).digest()


def link(records: Iterable[AuditRecord], head_seq: int, head_hash: bytes) -> list[AuditRecord]:
    """Number and hash new records after the chain head."""
    linked = []
    for record in records:
        head_seq += 1
        record = msgspec.structs.replace(record, seq=head_seq)
        head_hash = chain_hash(head_hash, record)
        linked.append(msgspec.structs.replace(record, hash=head_hash))
    return linked


class ChainVerifier:
    """Walks stored records in `seq` order and finds the first broken or missing link."""

    def __init__(self, start_seq: int, start_hash: bytes) -> None:
        self.from_seq = start_seq + 1
        self.expected_seq = start_seq + 1
        self.previous_hash = start_hash
        self.checked = 0
        self.error: VerifyError | None = None

    def feed(self, record: AuditRecord) -> bool:
        """Check the next record; returns False once the chain is broken."""
        if record.seq != self.expected_seq:
            self.error = VerifyError(self.expected_seq, f"record {self.expected_seq} is missing (next is {record.seq})")
            return False
        if chain_hash(self.previous_hash, record) != record.hash:
            self.error = VerifyError(record.seq, "hash does not match the record's content and the previous link")
            return False
        self.checked += 1
        self.expected_seq += 1
        self.previous_hash = record.hash
        return True

    def finish(self, head_seq: int, head_hash: bytes) -> VerifyResult:
        """Compare the walk's end with the chain head, which exposes deleted newest records."""
        if self.error is None and (self.expected_seq - 1, self.previous_hash) != (head_seq, head_hash):
            self.error = VerifyError(
                self.expected_seq, f"the chain ends at {self.expected_seq - 1} but its head is at {head_seq}"
            )
        return VerifyResult(
            ok=self.error is None,
            checked=self.checked,
            from_seq=self.from_seq,
            to_seq=self.expected_seq - 1,
            first_error=self.error,
        )


class EventFilter(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Query parameters shared by the list, export and stats routes."""

    actor: str | None = None
    """Actor id."""
    type: str | None = None
    """Event type or a prefix of it (`catalog.` or `catalog.entity.updated`)."""
    resource_kind: str | None = None
    resource_id: str | None = None
    scope: str | None = None
    include_subscopes: bool = True
    """With `scope`, also match the scopes below it."""
    since: dt.datetime | None = None
    """Events at or after this time (RFC 3339)."""
    until: dt.datetime | None = None
    """Events before this time (RFC 3339)."""
    trace_id: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$")] | None = None


class EventQuery(EventFilter, frozen=True, kw_only=True, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    cursor: str | None = None
    """Opaque cursor from the previous page's `nextCursor`."""


class ExportQuery(EventFilter, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["jsonl", "csv"] = "jsonl"


class StatsQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    type: str | None = None


class AuditEventView(msgspec.Struct, frozen=True, kw_only=True):
    """An audit record as the API returns it."""

    seq: int
    id: str
    type: str
    source: str
    time: dt.datetime
    actor: dict[str, str]
    scope: str
    resource: dict[str, str]
    trace_id: str
    data: dict[str, Any]
    schema: int
    hash: str


class EventPage(msgspec.Struct, frozen=True):
    items: list[AuditEventView]
    nextCursor: str | None = None


class StatsRow(msgspec.Struct, frozen=True):
    day: dt.date
    type: str
    count: int


class Stats(msgspec.Struct, frozen=True):
    items: list[StatsRow]


class SettingsView(msgspec.Struct, frozen=True):
    retention_days: int
    version: int
    updated_at: dt.datetime


def view(record: AuditRecord) -> AuditEventView:
    return AuditEventView(
        seq=record.seq,
        id=record.id,
        type=record.type,
        source=record.source,
        time=record.time,
        actor={"kind": record.actor_kind, "id": record.actor_id},
        scope=record.scope,
        resource={"kind": record.resource_kind, "id": record.resource_id},
        trace_id=record.trace_id,
        data=record.data,
        schema=record.schema,
        hash=record.hash.hex(),
    )


CSV_COLUMNS = [
    "seq",
    "id",
    "time",
    "type",
    "source",
    "actor_kind",
    "actor_id",
    "scope",
    "resource_kind",
    "resource_id",
    "trace_id",
    "data",
    "hash",
]


def csv_row(record: AuditRecord) -> list[str]:
    return [
        str(record.seq),
        record.id,
        record.time.isoformat(),
        record.type,
        record.source,
        record.actor_kind,
        record.actor_id,
        record.scope,
        record.resource_kind,
        record.resource_id,
        record.trace_id,
        msgspec.json.encode(record.data).decode(),
        record.hash.hex(),
    ]
