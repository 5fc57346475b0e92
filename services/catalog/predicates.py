"""Backstage's predicate filters (`@backstage/filter-predicates`, read by catalog-backend's
`applyPredicateEntityFilterToQuery`), parsed into the catalog's filter tree. Pure.

A predicate is an object: `{"$all": [...]}`, `{"$any": [...]}`, `{"$not": {...}}`, or a field expression
`{"<dotted key>": <value>, ...}` whose keys must all match. A value is a primitive (case-insensitive
equality; numbers and booleans compare as their JavaScript strings), `{"$exists": bool}`, `{"$in": [...]}`,
`{"$hasPrefix": "..."}` or `{"$contains": ...}`. As in Backstage, `$contains` is partial: a primitive
matches one array item (the search rows hold one row per item), and on `relations` an object
`{type, targetRef?}` matches a relation; anything else is refused rather than silently ignored. An empty
`$all` or `$any` matches nothing; an empty field expression matches everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.catalog.query import AllOf, AnyOf, KeyValues, SearchRow
from shared.errors import InputError

MAX_DEPTH = 32
MAX_NODES = 1000


@dataclass(frozen=True, slots=True)
class Not:
    """The item does not match."""

    item: Predicate


@dataclass(frozen=True, slots=True)
class HasPrefix:
    """Some search row has `key` and a value starting with `prefix` (both lower-cased)."""

    key: str
    prefix: str


Predicate = AnyOf | AllOf | KeyValues | Not | HasPrefix
NOTHING = AnyOf(())
"""Matches no entity; `AllOf(())`, the empty field expression, matches every entity."""


def _js_string(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def _is_primitive(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0

    def predicate(self, value: Any, path: str, depth: int) -> Predicate:
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise InputError.for_field(
                path, f"the predicate is too large (at most {MAX_DEPTH} levels, {MAX_NODES} nodes)"
            )
        if not isinstance(value, dict):
            raise InputError.for_field(
                path, f'a predicate must be an object such as {{"kind": {_json_text(value)}}}, not a bare value'
            )
        for operator in ("$all", "$any", "$not"):
            if operator in value:
                if len(value) != 1:
                    raise InputError.for_field(path, f"{operator} must stand alone in its object")
                return self.logical(operator, value[operator], f"{path}.{operator}", depth)
        items = [self.field(key, item, f"{path}.{key}") for key, item in value.items()]
        return items[0] if len(items) == 1 else AllOf(tuple(items))

    def logical(self, operator: str, value: Any, path: str, depth: int) -> Predicate:
        if operator == "$not":
            return Not(self.predicate(value, path, depth + 1))
        if not isinstance(value, list):
            raise InputError.for_field(path, f"{operator} takes a list of predicates")
        items = tuple(self.predicate(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        if not items:
            return NOTHING  # Backstage answers an empty $all or $any with `1 = 0`
        return AllOf(items) if operator == "$all" else AnyOf(items)

    def field(self, key: str, value: Any, path: str) -> Predicate:
        if key.startswith("$"):
            raise InputError.for_field(path, f"unknown operator {key} (expected $all, $any or $not)")
        key = key.lower()
        if _is_primitive(value):
            return KeyValues(key, (_js_string(value).lower(),))
        if not isinstance(value, dict) or len(value) != 1:
            raise InputError.for_field(
                path, "expected a string, number or boolean, or one of $exists, $in, $hasPrefix, $contains"
            )
        ((operator, operand),) = value.items()
        path = f"{path}.{operator}"
        if operator == "$exists":
            if not isinstance(operand, bool):
                raise InputError.for_field(path, "$exists takes true or false")
            return KeyValues(key) if operand else Not(KeyValues(key))
        if operator == "$in":
            if not isinstance(operand, list) or not all(_is_primitive(v) for v in operand):
                raise InputError.for_field(path, "$in takes a list of strings, numbers or booleans")
            values = tuple(dict.fromkeys(_js_string(v).lower() for v in operand))
            # No value can match an empty list; an empty KeyValues would mean "has the key".
            return KeyValues(key, values) if values else NOTHING
        if operator == "$hasPrefix":
            if not isinstance(operand, str):
                raise InputError.for_field(path, "$hasPrefix takes a string")
            return HasPrefix(key, operand.lower())
        if operator == "$contains":
            return self.contains(key, operand, path)
        raise InputError.for_field(path, f"unknown operator {operator} (expected $exists, $in, $hasPrefix, $contains)")

    def contains(self, key: str, target: Any, path: str) -> Predicate:
        if _is_primitive(target):
            return KeyValues(key, (_js_string(target).lower(),))
        if key == "relations" and isinstance(target, dict):
            relation_type, target_ref = target.get("type"), target.get("targetRef")
            if not isinstance(relation_type, str) or set(target) - {"type", "targetRef"}:
                raise InputError.for_field(path, 'on relations, $contains takes {"type": ..., "targetRef"?: ...}')
            relation_key = f"relations.{relation_type.lower()}"
            if target_ref is None:
                return KeyValues(relation_key)
            if isinstance(target_ref, str):
                return KeyValues(relation_key, (target_ref.lower(),))
            if isinstance(target_ref, dict) and isinstance(target_ref.get("$in"), list) and len(target_ref) == 1:
                return self.field(relation_key, target_ref, path)
            raise InputError.for_field(f"{path}.targetRef", 'expected a string or {"$in": [...]}')
        raise InputError.for_field(
            path, "$contains takes a string, number or boolean (or, on relations, {type, targetRef})"
        )


def _json_text(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def parse_predicate(value: Any, path: str = "$.query") -> Predicate:
    """The filter tree of a predicate; InputError names the JSON path of what is wrong."""
    return _Parser().predicate(value, path, 0)


def matches(predicate: Predicate, rows: list[SearchRow]) -> bool:
    """Whether an entity with these search rows satisfies `predicate` (as the SQL translation decides)."""
    index: dict[str, set[str | None]] = {}
    for row in rows:
        index.setdefault(row.key, set()).add(row.value)
    return _matches(predicate, index)


def _matches(node: Predicate, index: dict[str, set[str | None]]) -> bool:
    if isinstance(node, Not):
        return not _matches(node.item, index)
    if isinstance(node, AnyOf):
        return any(_matches(item, index) for item in node.items)
    if isinstance(node, AllOf):
        return all(_matches(item, index) for item in node.items)
    found = index.get(node.key)
    if found is None:
        return False
    if isinstance(node, HasPrefix):
        return any(value is not None and value.startswith(node.prefix) for value in found)
    return not node.values or any(value in found for value in node.values)
