"""Properties the ingestion API sets on an entity, overlaid on its document. Pure.

Paths are dotted; under `metadata.annotations.` and `metadata.labels.` the rest is one key, since annotation
keys contain dots (`metadata.annotations.backstage.io/techdocs-ref`). Identity and computed fields cannot be
set: a property must not turn one entity into another.
"""

from __future__ import annotations

import copy
from typing import Any

from shared.errors import InputError

MAP_PREFIXES = ("metadata.annotations.", "metadata.labels.")
FORBIDDEN = (
    "apiVersion",
    "kind",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.etag",
    "metadata.generation",
    "relations",
    "status",
)


def split_path(path: str) -> list[str]:
    for prefix in MAP_PREFIXES:
        if path.startswith(prefix) and len(path) > len(prefix):
            return [*prefix.rstrip(".").split("."), path[len(prefix) :]]
    return path.split(".")


def check_path(path: str, field: str) -> str:
    """A settable property path, or InputError naming `field`."""
    parts = split_path(path)
    if not path or any(not part for part in parts) or parts[0] not in ("metadata", "spec") or len(parts) < 2:
        raise InputError.for_field(field, f"{path!r} is not a property path under metadata. or spec.")
    if any(path == f or path.startswith(f + ".") for f in FORBIDDEN):
        raise InputError.for_field(field, f"{path!r} cannot be set through the ingestion API")
    return path


def apply_properties(document: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    """`document` with every property set at its path (intermediate objects created); the input is unchanged."""
    if not properties:
        return document
    result = copy.deepcopy(document)
    for path, value in sorted(properties.items()):
        *parents, leaf = split_path(path)
        node = result
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return result
