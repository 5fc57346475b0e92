"""The check language: declarative rules (JSON/YAML), validated and compiled once into closures. Pure.

A rule is a tagged object (`op`). Field rules read a dotted `path` of the entity (or, with
`source: data`, of the custom data pushed for it); `all-items`/`any-items` apply a rule to each list
item (paths relative to the item; `""` is the item itself); `all`/`any`/`not` combine rules;
`relation`, `events` and `file` read related entities, the event projection and repository files.

Evaluating yields `pass`, `fail` or `unknown` (the rule could not be evaluated: missing file, value
too long for a regex) and the value found, so a failing check can say what it saw.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple, Protocol

import msgspec

from shared.errors import InputError
from shared.yamlsafe import YamlError, load_yaml_documents

PASS, FAIL, UNKNOWN = "pass", "fail", "unknown"
MAX_PATTERN = 500
MAX_REGEX_SUBJECT = 4096
"""Longest string (or line of a file) a regex is applied to; with nested quantifiers and backreferences
rejected, this bounds the work of one match."""
MAX_UNBOUNDED_REPEATS = 4

Path = Annotated[str, msgspec.Meta(max_length=512)]
Source = Literal["entity", "data"]
Number = int | float


class Outcome(NamedTuple):
    status: str
    found: Any = None
    reason: str | None = None
    """Why a rule is `unknown`."""


class FileSource(Protocol):
    """Reads a file of an entity's source repository (`files.py`). Files are read before the rules run, which
    see them through `Context.files`."""

    async def read(self, entity: dict[str, Any], path: str) -> bytes | Unreadable: ...


class Unreadable(NamedTuple):
    reason: str
    missing: bool = False
    """The file does not exist (as opposed to: cannot be reached, too large)."""


@dataclass(slots=True)
class Context:
    """What one entity's rules may read."""

    entity: dict[str, Any]
    related: Callable[[str], dict[str, Any] | None] = lambda ref: None
    """Entity by ref (same scope); None when no such entity exists."""
    data: dict[str, Any] = field(default_factory=dict)
    event_times: Callable[[str, str | None], list[dt.datetime]] = lambda type_, path: []
    """Times of this entity's events of a type (that changed `path`, when given)."""
    files: Mapping[str, bytes | Unreadable] | None = None
    """The entity's files its rules read, by path, read beforehand; None when no file source is configured."""
    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def about(self, entity: Any, data: Any) -> Context:
        """The same sources with paths starting at another value (a list item, a file)."""
        return Context(entity, self.related, data, self.event_times, self.files, self.now)

    def about_related(self, entity: dict[str, Any]) -> Context:
        """A related entity: its fields and relations, not this entity's files."""
        return Context(entity, self.related, {}, self.event_times, {}, self.now)


# --- rule structs -----------------------------------------------------------------------------------------


class _Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, tag_field="op"):
    pass


class Exists(_Rule, tag="exists"):
    path: Path
    source: Source = "entity"


class Equals(_Rule, tag="equals"):
    path: Path
    value: Any
    source: Source = "entity"


class NotEquals(_Rule, tag="not-equals"):
    path: Path
    value: Any
    source: Source = "entity"


class In(_Rule, tag="in"):
    path: Path
    values: Annotated[list[Any], msgspec.Meta(min_length=1, max_length=1000)]
    source: Source = "entity"


class Contains(_Rule, tag="contains"):
    """A list holding `value`, or a string holding it as a substring."""

    path: Path
    value: Any
    source: Source = "entity"


class Matches(_Rule, tag="matches"):
    """A regex search; over text with several lines, a search in each line."""

    path: Path
    pattern: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATTERN)]
    source: Source = "entity"


class StartsWith(_Rule, tag="starts-with"):
    path: Path
    prefix: str
    source: Source = "entity"


CompareAs = Literal["auto", "number", "date", "semver"]


class _Compare(_Rule, frozen=True):
    path: Path
    value: Number | str
    """A number, a date (`2026-01-31`, or `now`, `now-90d`, `now+7d`) or a semantic version."""
    compare_as: CompareAs = "auto"
    source: Source = "entity"


class Gt(_Compare, tag="gt"):
    pass


class Gte(_Compare, tag="gte"):
    pass


class Lt(_Compare, tag="lt"):
    pass


class Lte(_Compare, tag="lte"):
    pass


class Count(_Rule, tag="count"):
    """Items of a list (keys of a mapping) between `min` and `max`; a missing field counts 0."""

    path: Path
    min: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max: Annotated[int, msgspec.Meta(ge=0)] | None = None
    source: Source = "entity"


class AllItems(_Rule, tag="all-items"):
    path: Path
    rule: Rule
    source: Source = "entity"


class AnyItems(_Rule, tag="any-items"):
    path: Path
    rule: Rule
    source: Source = "entity"


class All(_Rule, tag="all"):
    rules: Annotated[list[Rule], msgspec.Meta(min_length=1, max_length=100)]


class AnyOf(_Rule, tag="any"):
    rules: Annotated[list[Rule], msgspec.Meta(min_length=1, max_length=100)]


class Not(_Rule, tag="not"):
    rule: Rule


class Relation(_Rule, tag="relation"):
    """Existing entities related by `type` (e.g. `ownedBy`, `dependsOn`, `providesApi`) that satisfy
    `where`, counted: between `min` (default 1, or 0 when only `max` is given) and `max`."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    where: Rule | None = None
    min: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max: Annotated[int, msgspec.Meta(ge=0)] | None = None


class Events(_Rule, tag="events"):
    """Events of `type` about the entity (that changed `field`, when given) within the last `within_days`,
    counted between `min` (default 1, or 0 when only `max` is given) and `max`."""

    type: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    within_days: Annotated[int, msgspec.Meta(ge=1, le=366)]
    field: Path | None = None
    min: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max: Annotated[int, msgspec.Meta(ge=0)] | None = None


class File(_Rule, tag="file"):
    """A file of the entity's source, relative to its location: without `rule` it must exist; with one,
    the file is parsed as `format` and `rule` applies to it (`""` is the whole text)."""

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    format: Literal["text", "yaml", "json", "toml"] = "text"
    rule: Rule | None = None


Rule = (
    Exists
    | Equals
    | NotEquals
    | In
    | Contains
    | Matches
    | StartsWith
    | Gt
    | Gte
    | Lt
    | Lte
    | Count
    | AllItems
    | AnyItems
    | All
    | AnyOf
    | Not
    | Relation
    | Events
    | File
)

# --- dependencies: what a compiled rule reads, so only affected checks are re-evaluated -------------------


@dataclass
class Reads:
    entity_paths: set[str] = field(default_factory=set)
    data_keys: set[str] = field(default_factory=set)
    relation_types: set[str] = field(default_factory=set)
    event_types: set[str] = field(default_factory=set)
    file_paths: set[str] = field(default_factory=set)
    """Files of the entity's source the rule reads."""
    now: bool = False
    """Depends on the clock (event windows, relative dates): re-run on a schedule."""
    target_paths: set[str] = field(default_factory=set)
    """Fields of related entities that relation rules read (`where`)."""
    target_relations: bool = False
    """A relation rule's `where` follows relations of its own: any change of a target may matter."""
    target_tests: list[Callable[[dict[str, Any]], bool]] | None = field(default_factory=list)
    """Whether each relation rule's `where` admits a target, judged from the target's own fields; None when one
    reads more (its relations, files, events, data, the clock)."""

    def touched_by(self, changed_paths: set[str] | None, relations_changed: bool = True) -> bool:
        """Whether an entity change of `changed_paths` (None: everything) can change the outcome; relation rules
        read the entity's relations (and their targets), so they care only when `relations_changed`."""
        if changed_paths is None or self.file_paths or (self.relation_types and relations_changed):
            return True
        return any(paths_overlap(mine, theirs) for mine in self.entity_paths for theirs in changed_paths)

    def touched_through_relations(self, target_changes: set[str] | None) -> bool:
        """Whether a change of a related entity (`target_changes`; None: it appeared or went away) can
        change the outcome."""
        if not self.relation_types:
            return False
        if target_changes is None or self.target_relations:
            return True
        return any(paths_overlap(mine, theirs) for mine in self.target_paths for theirs in target_changes)

    def judges_alike(self, before: dict[str, Any], after: dict[str, Any]) -> bool:
        """Whether every relation rule admits a target changed from `before` to `after` exactly as it did, so the
        entities related to it keep their outcome."""
        return self.target_tests is not None and all(test(before) == test(after) for test in self.target_tests)


def paths_overlap(a: str, b: str) -> bool:
    """One path is the other or lies under it; the empty path (the whole value) overlaps everything."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".") or not a or not b


# --- compiling ---------------------------------------------------------------------------------------------

Evaluate = Callable[[Context], Outcome]
_Subject = Callable[[Context], Any]
_MISSING = None


def _entity_of(ctx: Context) -> Any:
    return ctx.entity


def _data_of(ctx: Context) -> Any:
    return ctx.data


@dataclass(frozen=True)
class Compiled:
    evaluate: Evaluate
    reads: Reads
    expected: str
    """The rule in words, e.g. `spec.lifecycle equals "production"`."""


def compile_rule(rule: Rule, at: str = "$") -> Compiled:
    """Check what msgspec could not (regexes, ranges, values) and build the closure; errors name `at`."""
    reads = Reads()
    evaluate = _compile(rule, at, reads, _entity_of, _data_of, "")
    return Compiled(evaluate, reads, describe(rule))


def _compile(rule: Rule, at: str, reads: Reads, entity_of: _Subject, data_of: _Subject, prefix: str) -> Evaluate:
    """`entity_of`/`data_of` give what paths start from (the entity, or a list item); `prefix` is the entity
    path of that start, recorded in `reads`."""
    if isinstance(rule, All | AnyOf):
        parts = [_compile(r, f"{at}.rules[{i}]", reads, entity_of, data_of, prefix) for i, r in enumerate(rule.rules)]
        return _all_of(parts) if isinstance(rule, All) else _any_of(parts)
    if isinstance(rule, Not):
        inner = _compile(rule.rule, f"{at}.rule", reads, entity_of, data_of, prefix)
        return _negate(inner)
    if isinstance(rule, Relation):
        return _relation(rule, at, reads)
    if isinstance(rule, Events):
        return _events(rule, at, reads)
    if isinstance(rule, File):
        return _file(rule, at, reads)
    get = _getter(rule.path, at, reads, entity_of, data_of, prefix, rule.source)
    if isinstance(rule, AllItems | AnyItems):
        item_prefix = f"{prefix}{rule.path}" if rule.source == "entity" else prefix
        inner = _compile(rule.rule, f"{at}.rule", reads, _entity_of, _data_of, item_prefix)
        return _over_items(get, inner, isinstance(rule, AllItems))
    if isinstance(rule, _Compare) and isinstance(rule.value, str) and _RELATIVE.match(rule.value):
        reads.now = True
    return _field_test(rule, at, get)


def _getter(
    path: str, at: str, reads: Reads, entity_of: _Subject, data_of: _Subject, prefix: str, source: Source
) -> _Subject:
    parts = split_path(path, f"{at}.path")
    if source == "data":
        if not parts:
            raise InputError.for_field(f"{at}.path", "a data path names a key")
        reads.data_keys.add(parts[0])
        start = data_of
    else:
        reads.entity_paths.add(f"{prefix}.{path}".strip(".") if prefix and path else prefix or path)
        start = entity_of
    if not parts:
        return start
    return lambda ctx: resolve(start(ctx), parts)


def split_path(path: str, at: str) -> list[str]:
    if path in ("", "."):
        return []
    parts = path.split(".")
    if any(not p for p in parts):
        raise InputError.for_field(at, f"{path!r} is not a dotted path")
    return parts


def resolve(value: Any, parts: list[str]) -> Any:
    """Walk `parts`; a mapping key may itself contain dots (`metadata.annotations.backstage.io/x`), so the
    shortest joined key present wins. Missing gives None."""
    i, n = 0, len(parts)
    while i < n:
        if isinstance(value, dict):
            for j in range(i + 1, n + 1):
                key = parts[i] if j == i + 1 else ".".join(parts[i:j])
                if key in value:
                    value, i = value[key], j
                    break
            else:
                return _MISSING
        elif isinstance(value, list) and parts[i].isdigit() and int(parts[i]) < len(value):
            value, i = value[int(parts[i])], i + 1
        else:
            return _MISSING
    return value


def _all_of(parts: list[Evaluate]) -> Evaluate:
    def evaluate(ctx: Context) -> Outcome:
        unknown = None
        for part in parts:
            outcome = part(ctx)
            if outcome.status == FAIL:
                return outcome
            if outcome.status == UNKNOWN and unknown is None:
                unknown = outcome
        return unknown or Outcome(PASS, outcome.found)

    return evaluate


def _any_of(parts: list[Evaluate]) -> Evaluate:
    def evaluate(ctx: Context) -> Outcome:
        outcomes = []
        for part in parts:
            outcome = part(ctx)
            if outcome.status == PASS:
                return outcome
            outcomes.append(outcome)
        unknown = next((o for o in outcomes if o.status == UNKNOWN), None)
        return unknown or Outcome(FAIL, [o.found for o in outcomes])

    return evaluate


def _negate(inner: Evaluate) -> Evaluate:
    def evaluate(ctx: Context) -> Outcome:
        outcome = inner(ctx)
        if outcome.status == UNKNOWN:
            return outcome
        return Outcome(FAIL if outcome.status == PASS else PASS, outcome.found)

    return evaluate


def _over_items(get: _Subject, inner: Evaluate, every: bool) -> Evaluate:
    def evaluate(ctx: Context) -> Outcome:
        items = get(ctx)
        if not isinstance(items, list):
            return Outcome(PASS if every and items is None else FAIL, items)
        unknown = None
        for item in items:
            outcome = inner(ctx.about(item, item))
            if outcome.status == (FAIL if every else PASS):
                return Outcome(outcome.status, item)
            if outcome.status == UNKNOWN and unknown is None:
                unknown = outcome
        if unknown is not None:
            return unknown
        return Outcome(PASS if every else FAIL, items)

    return evaluate


def _field_test(rule: Rule, at: str, get: _Subject) -> Evaluate:
    test = _predicate(rule, at)

    def evaluate(ctx: Context) -> Outcome:
        value = get(ctx)
        result = test(value)
        if isinstance(result, Outcome):
            return result
        return Outcome(PASS if result else FAIL, value)

    return evaluate


def _predicate(rule: Rule, at: str) -> Callable[[Any], bool | Outcome]:
    if isinstance(rule, Exists):
        return lambda v: v is not None and v != "" and v != [] and v != {}
    if isinstance(rule, Equals):
        expected = rule.value
        return lambda v: v == expected
    if isinstance(rule, NotEquals):
        expected = rule.value
        return lambda v: v != expected
    if isinstance(rule, In):
        hashable = [v for v in rule.values if not isinstance(v, dict | list)]
        allowed = set(hashable) if len(hashable) == len(rule.values) else None
        values = rule.values
        return lambda v: (v in allowed) if allowed is not None and not isinstance(v, dict | list) else v in values
    if isinstance(rule, Contains):
        expected = rule.value
        return lambda v: (
            (expected in v)
            if isinstance(v, list)
            else (isinstance(v, str) and isinstance(expected, str) and expected in v)
        )
    if isinstance(rule, StartsWith):
        prefix = rule.prefix
        return lambda v: isinstance(v, str) and v.startswith(prefix)
    if isinstance(rule, Matches):
        return _regex_test(compile_safe_regex(rule.pattern, f"{at}.pattern"))
    if isinstance(rule, Gt | Gte | Lt | Lte):
        return _comparison(rule, at)
    if isinstance(rule, Count):
        if rule.min is not None and rule.max is not None and rule.min > rule.max:
            raise InputError.for_field(f"{at}.min", "min is greater than max")
        low, high = rule.min or 0, rule.max

        def count_test(v: Any) -> Outcome:
            n = len(v) if isinstance(v, list | dict) else 0 if v is None else 1
            return Outcome(PASS if n >= low and (high is None or n <= high) else FAIL, n)

        return count_test
    raise InputError.for_field(f"{at}.op", "not a field rule")


def _regex_test(pattern: re.Pattern[str]) -> Callable[[Any], bool | Outcome]:
    search = pattern.search

    def test(v: Any) -> bool | Outcome:
        if not isinstance(v, str):
            return False
        lines = v.splitlines() if len(v) > MAX_REGEX_SUBJECT or "\n" in v else (v,)
        for line in lines:
            if len(line) > MAX_REGEX_SUBJECT:
                return Outcome(UNKNOWN, f"{line[:80]}…", f"a line longer than {MAX_REGEX_SUBJECT} characters")
            if search(line):
                return True
        return False

    return test


def compile_safe_regex(pattern: str, at: str) -> re.Pattern[str]:
    """Compile a regex that cannot backtrack catastrophically: no quantifier inside a quantified group, no
    backreference, at most a few unbounded quantifiers; anything else is an InputError naming `at`."""
    try:
        compiled = re.compile(pattern)
        # The stdlib's own parser gives the structure; `re._parser` is what `re.compile` itself uses.
        tree = re._parser.parse(pattern)  # type: ignore[attr-defined]
    except re.error as exc:
        raise InputError.for_field(at, f"not a valid regular expression: {exc}") from None
    problem = _regex_problem(tree, None, [0])
    if problem:
        raise InputError.for_field(at, f"{problem} (it could backtrack catastrophically)")
    return compiled


_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}


def _regex_problem(items: Any, inside: str | None, counter: list[int]) -> str | None:
    """`inside` is None outside any repeat, else "bounded" or "unbounded" for the innermost enclosing one.
    Rejected: any quantifier inside an unbounded one, an unbounded one inside any, and alternatives inside an
    unbounded one that could match the same character (`(a|a?)+`). Bounded inside bounded costs at most the
    product of the bounds."""
    for op, arg in items:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return "backreferences are not allowed"
        if name in _REPEATS:
            _, high, sub = arg
            unbounded = high == re._constants.MAXREPEAT  # type: ignore[attr-defined]
            if inside == "unbounded" or (inside and unbounded):
                return "nested quantifiers are not allowed"
            if unbounded:
                counter[0] += 1
                if counter[0] > MAX_UNBOUNDED_REPEATS:
                    return f"more than {MAX_UNBOUNDED_REPEATS} unbounded quantifiers"
            here = "unbounded" if unbounded or inside == "unbounded" else "bounded" if high > 1 else inside
            problem = _regex_problem(sub, here, counter)
        elif name == "SUBPATTERN":
            problem = _regex_problem(arg[-1], inside, counter)
        elif name == "BRANCH":
            if inside == "unbounded" and not _distinct_first_literals(arg[1]):
                return "alternatives inside a quantifier must start with distinct characters"
            problem = next((p for b in arg[1] if (p := _regex_problem(b, inside, counter))), None)
        elif name in ("ASSERT", "ASSERT_NOT"):
            problem = _regex_problem(arg[1], inside, counter)
        else:
            problem = None
        if problem:
            return problem
    return None


def _distinct_first_literals(branches: list[Any]) -> bool:
    firsts = []
    for branch in branches:
        items = list(branch)
        if not items or str(items[0][0]) != "LITERAL":
            return False
        firsts.append(items[0][1])
    return len(set(firsts)) == len(firsts)


# --- comparisons: numbers, dates, semantic versions ------------------------------------------------------

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][\d:.]+)?(Z|[+-]\d{2}:?\d{2})?$")
_RELATIVE = re.compile(r"^now(?:([+-])(\d{1,5})d)?$")
_VERSION = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?")
_OPERATORS: dict[type, Callable[[Any, Any], bool]] = {
    Gt: lambda a, b: a > b,
    Gte: lambda a, b: a >= b,
    Lt: lambda a, b: a < b,
    Lte: lambda a, b: a <= b,
}


def _comparison(rule: _Compare, at: str) -> Callable[[Any], bool | Outcome]:
    kind = rule.compare_as
    if kind == "auto":
        if isinstance(rule.value, int | float) and not isinstance(rule.value, bool):
            kind = "number"
        elif isinstance(rule.value, str) and (_DATE.match(rule.value) or _RELATIVE.match(rule.value)):
            kind = "date"
        else:
            kind = "semver"
    operator = _OPERATORS[type(rule)]
    if kind == "number":
        expected = _as_number(rule.value)
        if expected is None:
            raise InputError.for_field(f"{at}.value", f"{rule.value!r} is not a number")
        return lambda v: (n := _as_number(v)) is not None and operator(n, expected)
    if kind == "semver":
        version = _as_version(rule.value)
        if version is None:
            raise InputError.for_field(f"{at}.value", f"{rule.value!r} is not a number, date or version")
        return lambda v: (found := _as_version(v)) is not None and operator(found, version)
    relative = _RELATIVE.match(rule.value) if isinstance(rule.value, str) else None
    if relative:
        sign, days = relative.group(1), int(relative.group(2) or 0)
        offset = dt.timedelta(days=-days if sign == "-" else days)

        def relative_test(v: Any) -> bool:
            found = _as_date(v)
            return found is not None and operator(found, dt.datetime.now(dt.UTC) + offset)

        return relative_test
    expected_date = _as_date(rule.value)
    if expected_date is None:
        raise InputError.for_field(f"{at}.value", f"{rule.value!r} is not a date")
    return lambda v: (d := _as_date(v)) is not None and operator(d, expected_date)


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _as_date(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        found = value
    elif isinstance(value, dt.date):
        found = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and _DATE.match(value.strip()):
        try:
            found = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return found if found.tzinfo else found.replace(tzinfo=dt.UTC)


def _as_version(value: Any) -> tuple | None:
    """The first version in a value (`v1.2.3`, `>=18`, `1.4.0-rc.1`) as a comparable tuple; a pre-release
    sorts before its release."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    match = _VERSION.search(value)
    if not match:
        return None
    major, minor, patch, pre = match.groups()
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return (int(major), int(minor or 0), int(patch or 0), 0 if pre else 1, pre_key)


# --- relations, events, files ---------------------------------------------------------------------------


def _bounds(rule: Relation | Events, at: str) -> tuple[int, int | None]:
    low = rule.min if rule.min is not None else (0 if rule.max is not None else 1)
    if rule.max is not None and low > rule.max:
        raise InputError.for_field(f"{at}.min", "min is greater than max")
    return low, rule.max


def _relation(rule: Relation, at: str, reads: Reads) -> Evaluate:
    low, high = _bounds(rule, at)
    wanted = rule.type.lower()
    reads.relation_types.add(wanted)
    # The target's own fields are read through `related`; they are not paths of this entity.
    compiled_where = compile_rule(rule.where, f"{at}.where") if rule.where is not None else None
    where = compiled_where.evaluate if compiled_where is not None else None
    if compiled_where is not None:
        inner = compiled_where.reads
        reads.target_paths |= inner.entity_paths
        reads.target_relations |= bool(inner.relation_types or inner.file_paths)
        if inner.relation_types or inner.file_paths or inner.event_types or inner.data_keys or inner.now:
            reads.target_tests = None
        elif reads.target_tests is not None:
            reads.target_tests.append(lambda target: compiled_where.evaluate(Context(target)).status == PASS)

    def evaluate(ctx: Context) -> Outcome:
        matching = []
        for relation in ctx.entity.get("relations") or ():
            if str(relation.get("type", "")).lower() != wanted:
                continue
            target = ctx.related(relation.get("targetRef", ""))
            if target is None:
                continue
            if where is None or where(ctx.about_related(target)).status == PASS:
                matching.append(relation["targetRef"])
        n = len(matching)
        return Outcome(PASS if n >= low and (high is None or n <= high) else FAIL, matching)

    return evaluate


def _events(rule: Events, at: str, reads: Reads) -> Evaluate:
    low, high = _bounds(rule, at)
    reads.event_types.add(rule.type)
    reads.now = True
    window = dt.timedelta(days=rule.within_days)
    type_, path = rule.type, rule.field

    def evaluate(ctx: Context) -> Outcome:
        since = ctx.now - window
        n = sum(1 for t in ctx.event_times(type_, path) if t >= since)
        return Outcome(PASS if n >= low and (high is None or n <= high) else FAIL, n)

    return evaluate


def _file(rule: File, at: str, reads: Reads) -> Evaluate:
    path = rule.path
    if path.startswith("/") or ".." in path.split("/"):
        raise InputError.for_field(f"{at}.path", "a file path is relative to the entity's location, without ..")
    reads.file_paths.add(path)
    reads.now = True
    inner = _compile(rule.rule, f"{at}.rule", Reads(), _entity_of, _data_of, "") if rule.rule else None
    parse = _PARSERS[rule.format]

    def evaluate(ctx: Context) -> Outcome:
        if ctx.files is None:
            return Outcome(UNKNOWN, None, "no file source is configured")
        content = ctx.files.get(path)
        if content is None:
            return Outcome(UNKNOWN, None, f"{path} was not read (files of related entities are not)")
        if isinstance(content, Unreadable):
            if content.missing and inner is None:
                return Outcome(FAIL, None)
            return Outcome(UNKNOWN, None, content.reason)
        if inner is None:
            return Outcome(PASS, path)
        try:
            parsed = parse(content)
        except (ValueError, YamlError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            return Outcome(UNKNOWN, None, f"{path} is not valid {rule.format}: {str(exc).splitlines()[0][:200]}")
        return inner(ctx.about(parsed, parsed))

    return evaluate


def _parse_yaml(content: bytes) -> Any:
    documents = load_yaml_documents(content)
    return documents[0] if documents else None


_PARSERS: dict[str, Callable[[bytes], Any]] = {
    "text": lambda content: content.decode("utf-8"),
    "json": lambda content: json.loads(content),
    "yaml": _parse_yaml,
    "toml": lambda content: tomllib.loads(content.decode("utf-8")),
}


# --- words ------------------------------------------------------------------------------------------------

_encode = msgspec.json.encode


def describe(rule: Rule) -> str:
    """The rule in words, for the `expected` of a result."""
    where = f"data.{rule.path}" if getattr(rule, "source", "entity") == "data" else getattr(rule, "path", "")
    match rule:
        case Exists():
            return f"{where} exists"
        case Equals(value=value):
            return f"{where} equals {_encode(value).decode()}"
        case NotEquals(value=value):
            return f"{where} does not equal {_encode(value).decode()}"
        case In(values=values):
            return f"{where} is one of {_encode(values).decode()}"
        case Contains(value=value):
            return f"{where} contains {_encode(value).decode()}"
        case Matches(pattern=pattern):
            return f"{where} matches /{pattern}/"
        case StartsWith(prefix=prefix):
            return f"{where} starts with {_encode(prefix).decode()}"
        case Gt() | Gte() | Lt() | Lte():
            symbol = {Gt: ">", Gte: "≥", Lt: "<", Lte: "≤"}[type(rule)]
            return f"{where} {symbol} {rule.value}"
        case Count():
            return f"count of {where} {_range(rule.min, rule.max, default_min=0)}"
        case AllItems(rule=inner):
            return f"every item of {where}: {describe(inner)}"
        case AnyItems(rule=inner):
            return f"some item of {where}: {describe(inner)}"
        case All(rules=rules):
            return "(" + " and ".join(describe(r) for r in rules) + ")"
        case AnyOf(rules=rules):
            return "(" + " or ".join(describe(r) for r in rules) + ")"
        case Not(rule=inner):
            return f"not {describe(inner)}"
        case Relation():
            target = f" where {describe(rule.where)}" if rule.where else ""
            return f"{rule.type} entities{target}: {_range(rule.min, rule.max)}"
        case Events():
            changed = f" changing {rule.field}" if rule.field else ""
            return f"{rule.type} events{changed} in {rule.within_days} days: {_range(rule.min, rule.max)}"
        case File():
            return f"file {rule.path}" + (f" ({rule.format}): {describe(rule.rule)}" if rule.rule else " exists")
    return rule.__class__.__name__


def _range(low: int | None, high: int | None, default_min: int = 1) -> str:
    if high is None:
        return f"at least {low if low is not None else default_min}"
    if low is None or low == 0:
        return f"at most {high}"
    return f"between {low} and {high}"
