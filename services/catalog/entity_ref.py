"""Entity references exactly as Backstage parses and prints them (`packages/catalog-model/src/entity/ref.ts`).

String form `[<kind>:][<namespace>/]<name>`: split at the first `:` and the first `/`; a `/` before the `:`
means there is no kind. The canonical form is `kind:namespace/name`, lower-cased, and is the key entities
are stored and compared by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_NAMESPACE = "default"


class EntityRefError(ValueError):
    """A reference that is not of the form `[<kind>:][<namespace>/]<name>`, or lacks a kind it needs."""


@dataclass(frozen=True, slots=True)
class EntityRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.namespace}/{self.name}".lower()

    @property
    def canonical(self) -> str:
        return str(self)


def parse_entity_ref(
    ref: str | dict[str, Any], *, default_kind: str | None = None, default_namespace: str | None = None
) -> EntityRef:
    """Parse a string or `{kind?, namespace?, name}` reference, applying the defaults as Backstage does."""
    if isinstance(ref, dict):
        kind, namespace, name = ref.get("kind"), ref.get("namespace"), ref.get("name")
        if not isinstance(name, str) or not name:
            raise EntityRefError(f"Entity reference {ref!r} had missing or empty name")
    elif isinstance(ref, str):
        kind, namespace, name = _split(ref)
    else:
        raise EntityRefError(f"Entity reference must be a string or an object, got {type(ref).__name__}")
    kind = kind or default_kind
    if not kind:
        raise EntityRefError(
            f'Entity reference "{ref}" had missing or empty kind (e.g. did not start with "component:" or similar)'
        )
    return EntityRef(kind=kind, namespace=namespace or default_namespace or DEFAULT_NAMESPACE, name=name)


def _split(ref: str) -> tuple[str | None, str | None, str]:
    colon, slash = ref.find(":"), ref.find("/")
    kind: str | None = None
    namespace: str | None = None
    rest = ref
    if colon != -1 and (slash == -1 or colon < slash):
        kind, rest = ref[:colon], ref[colon + 1 :]
        if not kind:
            raise _malformed(ref)
    slash = rest.find("/")
    if slash != -1:
        namespace, rest = rest[:slash], rest[slash + 1 :]
        if not namespace:
            raise _malformed(ref)
    if not rest:
        raise _malformed(ref)
    return kind, namespace, rest


def _malformed(ref: str) -> EntityRefError:
    return EntityRefError(f'Entity reference "{ref}" was not on the form [<kind>:][<namespace>/]<name>')


def ref_of(entity: dict[str, Any]) -> EntityRef:
    """The reference of an entity document (namespace defaulted)."""
    metadata = entity.get("metadata") or {}
    return EntityRef(
        kind=entity["kind"], namespace=metadata.get("namespace") or DEFAULT_NAMESPACE, name=metadata["name"]
    )
