"""The catalog's query language, without I/O: the search rows Backstage indexes for a stitched entity
(`buildEntitySearch.ts`), the `filter` query parameter parsed into a small filter tree
(`parseEntityFilterParams.ts`), the `fields` parameter and its projection (`parseEntityTransformParams.ts`),
and an in-memory evaluation of a filter tree over search rows. The SQL translation of the tree lives elsewhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from shared.errors import FieldError, InputError

# Skipped by the generic traversal: not worth indexing, or always added explicitly (even when null).
SPECIAL_KEYS = frozenset(
    {"attachments", "relations", "status", "metadata.name", "metadata.namespace", "metadata.uid", "metadata.etag"}
)
MAX_KEY_LENGTH = 200
MAX_VALUE_LENGTH = 200
DEFAULT_NAMESPACE = "default"


class SearchRow(NamedTuple):
    """One row of the `search` table: lower-cased `key`/`value` and the value as written. A tuple: an entity has
    dozens and a bulk load builds millions."""

    key: str
    value: str | None
    original_value: str | None


@dataclass(frozen=True, slots=True)
class KeyValues:
    """Some search row has `key` and, unless `values` is empty (an exists check), one of `values`."""

    key: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AllOf:
    """Every item matches."""

    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one item matches."""

    items: tuple[Filter, ...]


Filter = AnyOf | AllOf | KeyValues


def build_search_rows(entity: dict[str, Any]) -> list[SearchRow]:
    """The deduplicated search rows Backstage's `buildEntitySearch` writes for a stitched entity."""
    raw = _traverse(entity)
    metadata = entity.get("metadata") or {}
    raw += [(f"metadata.{k}", metadata.get(k)) for k in ("name", "namespace", "uid")]
    if not metadata.get("namespace"):
        raw.append(("metadata.namespace", DEFAULT_NAMESPACE))
    raw += [(f"relations.{r['type']}", r["targetRef"]) for r in entity.get("relations") or []]
    _reject_case_duplicates(raw)
    originals: dict[tuple[str, str | None], str | None] = {}  # the first row of each (key, value) is kept
    for path, written in raw:
        key = path.lower()
        if _too_long(key, MAX_KEY_LENGTH):
            continue
        if written is None:
            original = value = None
        else:
            original = written if type(written) is str else _js_string(written)
            value = original.lower()
            # Too long to index: the key is still recorded, so exists-filters keep working.
            if _too_long(value, MAX_VALUE_LENGTH):
                original = value = None
        originals.setdefault((key, value), original)
    return [SearchRow(key, value, original) for (key, value), original in originals.items()]


FULL_TEXT_LIMIT = 10_000
"""Characters kept of each full-text weight class; enough for any description, bounded for odd documents."""


def full_text_fields(entity: dict[str, Any]) -> tuple[str, str, str, str]:
    """The text of a stitched entity per full-text weight: A name and title, B tags and owner, C description,
    D annotation values."""
    metadata = entity.get("metadata") or {}
    owners = [r["targetRef"].partition("/")[2] for r in entity.get("relations") or () if r["type"] == "ownedBy"]
    tags = metadata.get("tags")
    annotations = metadata.get("annotations")
    classes = (
        [metadata.get("name"), metadata.get("title")],
        [*(tags if isinstance(tags, list) else ()), *owners],
        [metadata.get("description")],
        list(annotations.values()) if isinstance(annotations, dict) else [],
    )
    texts = (" ".join(v for v in values if isinstance(v, str))[:FULL_TEXT_LIMIT] for values in classes)
    return tuple(texts)  # type: ignore[return-value]


FULL_TEXT_KEYS = ("metadata.name", "metadata.title", "metadata.description", "metadata.tags", "spec.owner")
FULL_TEXT_KEY_PREFIXES = ("metadata.annotations.",)
"""Search keys whose values are in the full-text document, so a `fullTextFilter` on them can use its index."""
_WORD = re.compile(r"\w+")
MAX_SEARCH_WORDS = 16


def search_words(text: str) -> list[str]:
    """The words of a search text, lower-cased: letters, digits and `_`; everything else separates words."""
    return list(dict.fromkeys(_WORD.findall(text.lower())))[:MAX_SEARCH_WORDS]


def prefix_tsquery(words: list[str]) -> str:
    """A `to_tsquery` text matching documents with a word starting with each of `words` (all of them)."""
    # `\w` words hold no tsquery operator or quote, so quoting them is enough.
    return " & ".join(f"'{word}':*" for word in words)


def full_text_indexed(keys: tuple[str, ...]) -> bool:
    """Whether every one of these search keys is in the full-text document."""
    return bool(keys) and all(k in FULL_TEXT_KEYS or k.startswith(FULL_TEXT_KEY_PREFIXES) for k in keys)


def _traverse(root: Any) -> list[tuple[str, Any]]:
    output: list[tuple[str, Any]] = []
    _visit("", root, output, set())
    return output


def _visit(path: str, current: Any, output: list[tuple[str, Any]], seen_path_keys: set[str]) -> None:
    # A module-level function rather than a closure over `output`: a closure that calls itself is a reference
    # cycle, so every entity's rows would wait for the garbage collector instead of being freed at once.
    if path in SPECIAL_KEYS:
        return
    if current is None or isinstance(current, str | int | float):
        output.append((path, current))
    elif isinstance(current, list):
        for item in current:
            _visit(path, item, output, seen_path_keys)
            # `path.item=true` lets one filter require several array items at once (keys AND, values OR).
            if isinstance(item, str) and (lower := f"{path}.{item}".lower()) not in seen_path_keys:
                seen_path_keys.add(lower)
                output.append((f"{path}.{item}", True))
    elif isinstance(current, dict):
        for key, value in current.items():
            _visit(f"{path}.{key}" if path else key, value, output, seen_path_keys)


def _reject_case_duplicates(raw: list[tuple[str, Any]]) -> None:
    keys = {key for key, _ in raw}
    if len({key.lower() for key in keys}) == len(keys):  # the common case, checked without grouping
        return
    spellings: dict[str, set[str]] = {}
    for key, _ in raw:
        spellings.setdefault(key.lower(), set()).add(key)
    bad = [lower for lower, spelt in spellings.items() if len(spelt) > 1]
    if bad:
        listed = "', '".join(bad)
        raise InputError(
            f"Entity has duplicate keys that vary only in casing, '{listed}'",
            errors=[FieldError(f"$.{key}", "duplicate key that varies only in casing") for key in bad],
        )


def _too_long(text: str, limit: int) -> bool:
    # JavaScript measures strings in UTF-16 code units: one or two per character, one in ASCII.
    if len(text) <= limit // 2:
        return False
    return (len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2) > limit


def _js_string(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value) < 10**21:
        return str(value)
    return _js_number(float(value))


def _js_number(x: float) -> str:
    # ECMAScript Number::toString, so `1.0` indexes as "1" and `1e-7` as "1e-7", as in Backstage.
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k, n = len(digits), exponent + len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{sign}{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return f"{sign}0.{'0' * -n}{digits}"
    mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{sign}{mantissa}e{'+' if n > 0 else '-'}{abs(n - 1)}"


def pinned_kind(node: object) -> str | None:
    """The one kind every entity matching a filter or predicate has, when it pins one (`kind=component`, also
    inside `$all`, or the same in every branch of `$any`)."""
    if isinstance(node, KeyValues):
        return node.values[0] if node.key == "kind" and len(node.values) == 1 else None
    if isinstance(node, AllOf):
        return next(filter(None, map(pinned_kind, node.items)), None)
    if isinstance(node, AnyOf) and node.items:
        kinds = set(map(pinned_kind, node.items))
        return kinds.pop() if len(kinds) == 1 else None
    return None


def parse_filter_params(values: list[str]) -> Filter | None:
    """The `filter` params as `AnyOf(AllOf(KeyValues...)...)`, one `AllOf` per non-empty param; None if none."""
    groups = [group for group in map(_parse_filter_string, values) if group]
    return AnyOf(tuple(AllOf(group) for group in groups)) if groups else None


def _parse_filter_string(text: str) -> tuple[KeyValues, ...]:
    by_key: dict[str, list[str]] = {}
    for statement in filter(None, (s.strip() for s in text.split(","))):
        key, equals, value = statement.partition("=")
        key = key.strip()
        if not key:
            expected = "expected a string on the form a=b or a= or a"
            raise InputError.for_field(
                "query.filter", f"Invalid filter, '{statement}' is not a valid statement ({expected})"
            )
        # Grouped on the key as written, like Backstage; only the search is case-insensitive.
        values = by_key.setdefault(key, [])
        if equals:
            values.append(value.strip().lower())
    return tuple(KeyValues(key.lower(), tuple(dict.fromkeys(vals))) for key, vals in by_key.items())


def parse_fields_param(values: list[str]) -> tuple[str, ...] | None:
    """The `fields` params as one tuple of dotted paths, in order; None when no field is named."""
    fields = tuple(dict.fromkeys(f.strip() for value in values for f in value.split(",") if f.strip()))
    if any("[" in field for field in fields):
        raise InputError.for_field("query.fields", "invalid fields, array type fields are not supported")
    return fields or None


def project_fields(entity: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The parts of `entity` at `fields`, nested as in the entity; values are shared, not copied."""
    paths = list(dict.fromkeys(p for p in (_resolve(entity, f) for f in fields) if p))
    # A field inside another selected field is already included; skipping it also keeps us from
    # writing into a subtree that is shared with `entity`.
    paths = [p for p in paths if not any(q != p and p[: len(q)] == q for q in paths)]
    output: dict[str, Any] = {}
    for path in paths:
        node, value = output, entity
        for key in path[:-1]:
            node, value = node.setdefault(key, {}), value[key]
        node[path[-1]] = value[path[-1]]
    return output


def _resolve(entity: dict[str, Any], field: str) -> tuple[str, ...] | None:
    # Dotted keys such as `backstage.io/techdocs-ref` are found by joining segments until a key exists.
    path: list[str] = []
    node: Any = entity
    pending: str | None = None
    for part in field.split("."):
        pending = part if pending is None else f"{pending}.{part}"
        if isinstance(node, dict) and pending in node:
            path.append(pending)
            node, pending = node[pending], None
    # A path that only partly resolves is omitted (Backstage would return the resolved prefix).
    return tuple(path) if path and pending is None else None


def matches(filter: Filter, rows: list[SearchRow]) -> bool:
    """Whether an entity with these search rows satisfies `filter`."""
    index: dict[str, set[str | None]] = {}
    for row in rows:
        index.setdefault(row.key, set()).add(row.value)
    return _matches(filter, index)


def _matches(node: Filter, index: dict[str, set[str | None]]) -> bool:
    if isinstance(node, AnyOf):
        return any(_matches(item, index) for item in node.items)
    if isinstance(node, AllOf):
        return all(_matches(item, index) for item in node.items)
    found = index.get(node.key)
    if found is None:
        return False
    return not node.values or any(value in found for value in node.values)
