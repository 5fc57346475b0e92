"""Which entities a caller may see, for single reads (lists filter in the SQL, `store.scope_sql`).

An entity is visible when the caller's `Visibility` for `catalog_entity_view` covers its scope (or names it),
and, if it is restricted (tagged `hidden`, `private` or `secrets`, the IDP 1.0 rule), when the caller sees
restricted entities (IDP Admin) or is among its owners: the User entity mirrored from the caller, or a Group
entity mirrored from one of the caller's groups, is a target of its `ownedBy` relations. Identity-sync's
principals reach the catalog as entities annotated `seed-idp.dev/identity-id` (`identity_mirror.py`), which is
how the caller's identity subjects become catalog refs.

A single read of an entity the caller may not see answers 404, as if it did not exist: the same answer a list
gives by leaving it out, and no hint that a hidden entity is there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import msgspec

from services.catalog.model import SCOPE_ANNOTATION
from shared.authz import Visibility
from shared.events import DEFAULT_SCOPE

RESTRICTED_TAGS = frozenset({"hidden", "private", "secrets"})


class _Metadata(msgspec.Struct):
    name: str = ""
    namespace: str = "default"
    tags: list[str] = []
    annotations: dict[str, str] = {}


class _Relation(msgspec.Struct):
    type: str
    targetRef: str


class EntityGate(msgspec.Struct):
    """The parts of a served entity that decide who may see it; decoding only these is cheap."""

    kind: str = ""
    metadata: _Metadata = msgspec.field(default_factory=_Metadata)
    relations: list[_Relation] = []

    @property
    def scope(self) -> str:
        return self.metadata.annotations.get(SCOPE_ANNOTATION, DEFAULT_SCOPE)

    @property
    def restricted(self) -> bool:
        return not RESTRICTED_TAGS.isdisjoint(tag.lower() for tag in self.metadata.tags)

    @property
    def ref(self) -> str:
        return f"{self.kind}:{self.metadata.namespace}/{self.metadata.name}".lower()

    @property
    def owners(self) -> frozenset[str]:
        return frozenset(r.targetRef.lower() for r in self.relations if r.type == "ownedBy")


gate_of = msgspec.json.Decoder(EntityGate).decode


def identity_ids(visible: Visibility) -> list[str]:
    """The identity ids behind the caller's subjects (`user:<id>`, `group:<id>` …), as the mirror annotates them."""
    return sorted({subject.partition(":")[2].lower() for subject in visible.subjects})


OwnedRefs = Callable[[list[str]], Awaitable[frozenset[str]]]
"""Looks up the catalog refs of the entities mirrored from these identity ids."""


class EntityViewer:
    """Decides per served entity whether the caller sees it; the caller's own refs are looked up once, and only
    when a restricted entity needs them."""

    def __init__(self, visible: Visibility, owned_refs: OwnedRefs) -> None:
        self.visible = visible
        self._lookup = owned_refs
        self._owned: frozenset[str] | None = None

    @property
    def sees_everything(self) -> bool:
        return self.visible.everything and self.visible.sees_restricted

    async def sees(self, served_json: str | bytes) -> bool:
        if self.sees_everything:
            return True
        gate = gate_of(served_json)
        if not self.visible.covers(gate.scope, gate.ref):
            return False
        if not gate.restricted or self.visible.sees_restricted:
            return True
        if self._owned is None:
            self._owned = await self._lookup(identity_ids(self.visible))
        return not self._owned.isdisjoint(gate.owners)

    async def visible_only(self, served_jsons: Iterable[str]) -> list[str]:
        return [served for served in served_jsons if await self.sees(served)]
