"""The event envelope every mutation emits (design.md §2), and helpers to build and diff events.

Consumers decode with `decode_event`; audit, which must store types it does not know yet, relies on
`data` being an open mapping rather than a per-type struct.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import msgspec
import uuid_utils

SUBJECT_PREFIX = "idp.evt."
DEFAULT_SCOPE = "account"


class Actor(msgspec.Struct, frozen=True):
    """Who caused a change."""

    kind: Literal["user", "service_account", "system"]
    """A person, a service account, or the platform itself (ingestion, sync, retention)."""
    id: str
    """The principal's id (user id, service-account id, or the system component's name)."""


class ResourceRef(msgspec.Struct, frozen=True):
    """What changed."""

    kind: str
    """Resource type, e.g. `entity`, `user`, `settings`."""
    id: str
    """Its id within the kind: an entity ref, a user id, a run id."""


class TraceContext(msgspec.Struct, frozen=True, omit_defaults=True):
    """W3C trace context of the request that caused the change."""

    traceparent: str = ""
    tracestate: str = ""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """The envelope of every state change on the bus."""

    id: str
    """UUIDv7; also the JetStream `Nats-Msg-Id`, so a republished event is deduplicated."""
    type: str
    """`<service>.<resource>.<verb>` in the past tense, e.g. `catalog.entity.updated`."""
    source: str
    """The emitting service."""
    time: Annotated[dt.datetime, msgspec.Meta(tz=True)]
    """Time of the change, RFC 3339 with an offset on the wire."""
    actor: Actor
    """Who caused it."""
    scope: str
    """Scope string (`account`, `account.<org>`, `account.<org>.<project>`)."""
    resource: ResourceRef
    """What changed."""
    data: dict[str, Any] = {}
    """Payload: the new state or, for updates, `changes` as {field: {before, after}}; never a secret."""
    trace: TraceContext = TraceContext()
    """Trace context of the causing request."""
    schema: int = 1
    """Payload version of this type; bumped on a breaking change."""

    @property
    def subject(self) -> str:
        return SUBJECT_PREFIX + self.type


SYSTEM = Actor("system", "system")

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def new_event_id() -> str:
    return str(uuid_utils.uuid7())


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_event(
    type: str,
    *,
    source: str,
    actor: Actor,
    resource: ResourceRef,
    data: dict[str, Any] | None = None,
    scope: str = DEFAULT_SCOPE,
    trace: TraceContext | None = None,
    schema: int = 1,
) -> Event:
    """Build an event stamped with a fresh UUIDv7 and the current time."""
    return Event(
        id=new_event_id(),
        type=type,
        source=source,
        time=utc_now(),
        actor=actor,
        scope=scope,
        resource=resource,
        data=data or {},
        trace=trace or TraceContext(),
        schema=schema,
    )


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(payload: bytes) -> Event:
    """Decode and validate an envelope; raises `msgspec.ValidationError`/`DecodeError` when malformed."""
    return _decoder.decode(payload)


def diff_fields(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """Changed leaf fields between two documents as {"a.b": {"before": x, "after": y}}.

    Nested mappings are walked so a one-annotation change shows as one field, not the whole metadata.
    A field present on one side only has `None` on the other.
    """
    changes: dict[str, dict[str, Any]] = {}
    for key in before.keys() | after.keys():
        path = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes.update(diff_fields(old, new, path + "."))
        elif old != new:
            changes[path] = {"before": old, "after": new}
    return dict(sorted(changes.items()))
