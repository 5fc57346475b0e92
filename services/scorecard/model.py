"""Scorecards, checks, levels and results: structs and pure logic (no I/O)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from services.scorecard.rules import PASS, Compiled, Context, Outcome, Rule, compile_rule
from shared.bus import DeadLetter
from shared.errors import InputError
from shared.scopes import check_scope

SCOPE_ANNOTATION = "seed-idp.dev/scope"
Slug = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Values = Annotated[list[str], msgspec.Meta(max_length=100)]
_canonical = msgspec.json.Encoder(order="sorted")
_json = msgspec.json.Encoder()


class ConsumerProgress(msgspec.Struct, frozen=True):
    """The last event scorecard's consumer processed, and how many distinct events it has seen."""

    consumer: str
    last_event_id: str
    last_event_type: str
    last_event_time: dt.datetime
    events_seen: int
    updated_at: dt.datetime


class DeadLetterQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    after: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Dead-letter stream sequence to start after (the last `sequence` of the previous page)."""
    limit: Annotated[int, msgspec.Meta(ge=1, le=100)] = 50


class DeadLetterPage(msgspec.Struct, frozen=True):
    items: list[DeadLetter]


# --- scorecard definitions (the API's bodies, stored as they are) ----------------------------------------


class EntityFilter(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Which entities a scorecard applies to: every list given must match (any of its values), and `where`
    must pass. Empty means every entity in the scorecard's scope."""

    kinds: Values = []
    types: Values = []
    lifecycles: Values = []
    owners: Values = []
    """Group refs or names (`team-a`, `group:default/team-a`)."""
    tags: Values = []
    scopes: Values = []
    """Scopes the entity must be in (each contains the scopes below it)."""
    where: Rule | None = None
    """Any rule over the entity's fields."""


class CheckSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    id: Slug
    name: Name
    rule: Rule
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    weight: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    level: str | None = None
    """One of the scorecard's levels; required when it has levels."""


class ScorecardSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A scorecard as written (JSON or YAML)."""

    id: Slug
    name: Name
    owner: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    checks: Annotated[list[CheckSpec], msgspec.Meta(min_length=1, max_length=200)]
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    scope: str = "account"
    filter: EntityFilter = EntityFilter()
    levels: Annotated[list[Name], msgspec.Meta(max_length=20)] = []
    """Ordered, lowest first (e.g. Basic, Bronze, Silver, Gold)."""


class ScorecardView(msgspec.Struct, frozen=True):
    spec: ScorecardSpec
    etag: str
    created_at: dt.datetime
    updated_at: dt.datetime


class ScorecardList(msgspec.Struct, frozen=True):
    items: list[ScorecardView]


def spec_etag(spec: ScorecardSpec) -> str:
    return hashlib.sha256(_canonical.encode(spec)).hexdigest()[:32]


# --- compiled scorecards ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledCheck:
    spec: CheckSpec
    compiled: Compiled
    level_index: int
    """Position of its level in the ladder (0 without levels)."""
    id: str
    expected: str


@dataclass(frozen=True)
class CompiledScorecard:
    spec: ScorecardSpec
    checks: tuple[CompiledCheck, ...]
    applies: Any
    """`(entity) -> bool`."""
    filter_paths: frozenset[str]
    """Entity paths the filter reads: a change there can add or remove the entity."""

    @property
    def id(self) -> str:
        return self.spec.id

    def check(self, check_id: str) -> CompiledCheck | None:
        return next((c for c in self.checks if c.id == check_id), None)


def compile_scorecard(spec: ScorecardSpec) -> CompiledScorecard:
    """Validate what the struct types cannot (scopes, level names, unique ids, rules) and compile."""
    check_scope(spec.scope, "$.scope")
    for i, scope in enumerate(spec.filter.scopes):
        check_scope(scope, f"$.filter.scopes[{i}]")
    if len(set(spec.levels)) != len(spec.levels):
        raise InputError.for_field("$.levels", "level names must be unique")
    seen: set[str] = set()
    checks = []
    for i, check in enumerate(spec.checks):
        at = f"$.checks[{i}]"
        if check.id in seen:
            raise InputError.for_field(f"{at}.id", f"check id {check.id!r} is used twice")
        seen.add(check.id)
        if spec.levels and check.level not in spec.levels:
            raise InputError.for_field(f"{at}.level", f"must be one of the scorecard's levels {spec.levels}")
        if not spec.levels and check.level is not None:
            raise InputError.for_field(f"{at}.level", "the scorecard has no levels")
        level_index = spec.levels.index(check.level) if check.level is not None else 0
        rule = compile_rule(check.rule, f"{at}.rule")
        checks.append(CompiledCheck(check, rule, level_index, check.id, rule.expected))
    applies, filter_paths = _compile_filter(spec)
    return CompiledScorecard(spec, tuple(checks), applies, filter_paths)


def entity_scope(entity: dict[str, Any]) -> str:
    return ((entity.get("metadata") or {}).get("annotations") or {}).get(SCOPE_ANNOTATION, "account")


def in_scope(scope: str, container: str) -> bool:
    return scope == container or scope.startswith(container + ".")


def owner_refs(entity: dict[str, Any]) -> set[str]:
    return {r["targetRef"] for r in entity.get("relations") or () if r.get("type") == "ownedBy"}


def canonical_ref(ref: str, default_kind: str = "") -> str:
    """`kind:namespace/name` in lower case, the namespace defaulting to `default` (and the kind to
    `default_kind`, for owners written as a bare name)."""
    ref = ref.lower()
    if ":" not in ref and default_kind:
        ref = f"{default_kind}:{ref}"
    kind, _, rest = ref.partition(":")
    return f"{kind}:{rest if '/' in rest else 'default/' + rest}"


def _compile_filter(spec: ScorecardSpec) -> tuple[Any, frozenset[str]]:
    f = spec.filter
    kinds = {k.lower() for k in f.kinds}
    types = {t.lower() for t in f.types}
    lifecycles = {t.lower() for t in f.lifecycles}
    owners = {canonical_ref(o, "group") for o in f.owners}
    tags = {t.lower() for t in f.tags}
    where = compile_rule(f.where, "$.filter.where") if f.where is not None else None
    paths = {"metadata.annotations"}
    paths |= {"kind"} if kinds else set()
    paths |= {"spec.type"} if types else set()
    paths |= {"spec.lifecycle"} if lifecycles else set()
    paths |= {"spec.owner", "relations"} if owners else set()
    paths |= {"metadata.tags"} if tags else set()
    paths |= where.reads.entity_paths if where else set()

    def applies(entity: dict[str, Any]) -> bool:
        scope = entity_scope(entity)
        if not in_scope(scope, spec.scope) or (f.scopes and not any(in_scope(scope, s) for s in f.scopes)):
            return False
        spec_ = entity.get("spec") or {}
        if kinds and str(entity.get("kind", "")).lower() not in kinds:
            return False
        if types and str(spec_.get("type", "")).lower() not in types:
            return False
        if lifecycles and str(spec_.get("lifecycle", "")).lower() not in lifecycles:
            return False
        if owners and not (owner_refs(entity) & owners):
            return False
        if tags and not ({str(t).lower() for t in (entity.get("metadata") or {}).get("tags") or ()} & tags):
            return False
        return where is None or where.evaluate(Context(entity)).status == PASS

    return applies, frozenset(paths)


# --- results and scores ----------------------------------------------------------------------------------

Status = Literal["pass", "fail", "unknown"]


class CheckResult(msgspec.Struct, frozen=True):
    """One check's outcome for one entity."""

    scorecard: str
    check: str
    status: Status
    found: Any
    expected: str
    reason: str | None = None
    explanation: str = ""


def explain(status: str, found: Any, expected: str, reason: str | None) -> str:
    """One line for people: what was expected, and what was found when it failed."""
    if status == PASS:
        return f"passed: {expected}"
    if status == "unknown":
        return f"could not be evaluated: {reason}"
    return f"expected {expected}; found {_json.encode(found).decode()}"


def result_of(scorecard: CompiledScorecard, check: CompiledCheck, outcome: Outcome) -> CheckResult:
    found = found_value(outcome.found)
    explanation = explain(outcome.status, found, check.expected, outcome.reason)
    return CheckResult(scorecard.id, check.id, outcome.status, found, check.expected, outcome.reason, explanation)


def found_value(value: Any) -> Any:
    """What a result keeps of the value found: JSON, and short (a found file or list is cut)."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= 500 else value[:500] + "…"
    if kind is list:
        return value if len(value) <= 50 else value[:50]
    if kind is dt.datetime or kind is dt.date:
        return value.isoformat()
    return value


class Score(msgspec.Struct, frozen=True):
    score: float
    """Weighted pass rate, 0 to 100; `unknown` counts as not passed."""
    level: str | None
    """Highest level whose checks, and those of every level below, all pass."""
    passed: int
    total: int


def score_of(scorecard: CompiledScorecard, statuses: dict[str, str]) -> Score:
    """Score and level from each check's status (checks without a status count as not passed)."""
    total_weight = passed_weight = 0.0
    passed = 0
    failing_levels = set()
    for check in scorecard.checks:
        total_weight += check.spec.weight
        if statuses.get(check.id) == PASS:
            passed_weight += check.spec.weight
            passed += 1
        else:
            failing_levels.add(check.level_index)
    level = None
    for index, name in enumerate(scorecard.spec.levels):
        if index in failing_levels:
            break
        level = name
    score = round(100.0 * passed_weight / total_weight, 2) if total_weight else 0.0
    return Score(score, level, passed, len(scorecard.checks))


def changed_checks(before: ScorecardSpec | None, after: ScorecardSpec) -> list[str] | None:
    """Checks of `after` whose outcome may differ from `before`'s: all (None) when the filter, scope or
    levels changed, else the new or edited ones."""
    if before is None or (before.scope, before.filter, before.levels) != (after.scope, after.filter, after.levels):
        return None
    old = {c.id: c for c in before.checks}
    return [c.id for c in after.checks if old.get(c.id) is None or old[c.id].rule != c.rule]


def entity_ref(entity: dict[str, Any]) -> str:
    """The canonical (lower-case) `kind:namespace/name` of a served entity, as the catalog keys it."""
    metadata = entity.get("metadata") or {}
    return f"{entity.get('kind', '')}:{metadata.get('namespace') or 'default'}/{metadata.get('name', '')}".lower()


def projection_row(entity: dict[str, Any]) -> tuple[Any, ...]:
    """(uid, scope, ref, document, relation targets, owner, system, domain) of a served entity."""
    targets = sorted({r["targetRef"] for r in entity.get("relations") or () if r.get("targetRef")})
    part_of = [r["targetRef"] for r in entity.get("relations") or () if r.get("type") == "partOf"]
    owners = sorted(owner_refs(entity))
    return (
        entity["metadata"]["uid"],
        entity_scope(entity),
        entity_ref(entity),
        entity,
        targets,
        owners[0] if owners else None,
        next((t for t in part_of if t.startswith("system:")), None),
        next((t for t in part_of if t.startswith("domain:")), None),
    )


class EntityEvaluation(msgspec.Struct, frozen=True):
    """One entity under one scorecard: score, level and every check with what it found."""

    entity: str
    scorecard: str
    name: str
    score: float
    level: str | None
    checks: list[CheckResult]


# --- request and response bodies -------------------------------------------------------------------------


class DryRunRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    scorecard: ScorecardSpec
    entities: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=300)]], msgspec.Meta(min_length=1, max_length=100)
    ]
    """Entity refs (`kind:namespace/name`) at `scope`."""
    scope: str = "account"


class DryRunResult(msgspec.Struct, frozen=True):
    evaluations: list[EntityEvaluation]
    not_applicable: list[str]
    """Entities the scorecard's filter leaves out."""
    missing: list[str]
    """Refs asked for that the catalog does not have."""


class CustomDataItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    entity: Annotated[str, msgspec.Meta(min_length=3, max_length=300)]
    """Entity ref, `kind:namespace/name`."""
    values: Annotated[
        dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")], Any], msgspec.Meta(max_length=100)
    ]
    scope: str = "account"


class CustomDataRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`POST /api/scorecard/data`: values for checks with `source: data`, e.g. {"coverage": 83.5}."""

    items: Annotated[list[CustomDataItem], msgspec.Meta(min_length=1, max_length=1000)]


class CustomDataResult(msgspec.Struct, frozen=True):
    changed: int
    """Entities whose values changed (the others were already up to date)."""


class CheckView(msgspec.Struct, frozen=True):
    """A stored result: what the check expected, what it found, and since when."""

    check: str
    status: Status
    found: Any
    expected: str
    reason: str | None
    changed_at: dt.datetime
    explanation: str


class EntityScorecard(msgspec.Struct, frozen=True):
    scorecard: str
    name: str
    score: float | None
    level: str | None
    checks: list[CheckView]


class EntityReport(msgspec.Struct, frozen=True):
    """`GET /api/scorecard/entities/...`: every scorecard that applies to the entity."""

    entity: str
    scope: str
    scorecards: list[EntityScorecard]


class EntityRefQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    scope: str = "account"


class CheckSummary(msgspec.Struct, frozen=True):
    check: str
    name: str
    passed: int
    failed: int
    unknown: int
    pass_rate: float | None


class GroupRollup(msgspec.Struct, frozen=True):
    group: str | None
    entities: int
    average_score: float
    pass_rate: float | None


class ScorecardSummary(msgspec.Struct, frozen=True):
    scorecard: str
    entities: int
    average_score: float | None
    levels: dict[str, int]
    """Entities per level; `none` holds those below the first level."""
    checks: list[CheckSummary]
    rollup: list[GroupRollup]
    group_by: str


class SummaryQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group_by: Literal["owner", "system", "domain", "scope"] = "owner"


class TrendQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A daily series of one scorecard, for all its entities, one owner group, or one entity."""

    scorecard: Slug
    since: dt.date
    until: dt.date
    group: str | None = None
    """Owner group ref, e.g. `group:default/team-a`."""
    entity: str | None = None
    """Entity ref, with `scope`."""
    scope: str = "account"


class TrendPoint(msgspec.Struct, frozen=True):
    day: dt.date
    entities: int
    average_score: float | None
    pass_rate: float | None


class Trend(msgspec.Struct, frozen=True):
    scorecard: str
    points: list[TrendPoint]


# --- alerts -------------------------------------------------------------------------------------------------


class _Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class GroupAverageBelow(_Condition, tag="group-average-below"):
    """A group's average score is below `threshold`."""

    threshold: Annotated[float, msgspec.Meta(ge=0, le=100)]
    group_by: Literal["owner", "system", "domain", "scope"] = "owner"


class CheckPassRateDrop(_Condition, tag="check-pass-rate-drop"):
    """A check's pass rate fell by at least `points` percentage points over the last `days` days."""

    check: Slug
    points: Annotated[float, msgspec.Meta(gt=0, le=100)]
    days: Annotated[int, msgspec.Meta(ge=1, le=90)] = 7


class AlertRuleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Slug
    name: Name
    scorecard: Slug
    condition: GroupAverageBelow | CheckPassRateDrop


class AlertRuleView(msgspec.Struct, frozen=True):
    spec: AlertRuleSpec
    etag: str
    firing: list[str]
    """Subjects (groups, the check) whose condition holds now."""


class AlertRuleList(msgspec.Struct, frozen=True):
    items: list[AlertRuleView]


class Alert(msgspec.Struct, frozen=True):
    """One triggered alert, as emitted and sent to the webhook."""

    rule: str
    name: str
    scorecard: str
    subject: str
    value: float
    condition: GroupAverageBelow | CheckPassRateDrop


DeliveryStatus = Literal["pending", "delivered", "failed"]


class AlertDelivery(msgspec.Struct, frozen=True):
    """One webhook delivery of the alerts an evaluation triggered, retried until delivered or failed."""

    id: str
    destination: str
    """The webhook's scheme and host: its path and query may hold a secret (Slack-style URLs) and are not shown."""
    alerts: list[Alert]
    status: DeliveryStatus
    attempts: int
    last_status: int | None
    """The HTTP status of the last attempt; None when it got no answer."""
    last_error: str | None
    next_attempt_at: dt.datetime | None
    """When a pending delivery is tried next."""
    created_at: dt.datetime
    finished_at: dt.datetime | None


class AlertDeliveryQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: DeliveryStatus | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100
    cursor: str | None = None
    """`nextCursor` of the previous page."""


class AlertDeliveryPage(msgspec.Struct, frozen=True):
    items: list[AlertDelivery]
    nextCursor: str | None = None


def retry_delay(attempt: int, base: float, cap: float, fraction: float) -> float:
    """Exponential backoff with equal jitter: after attempt n, half of `base`·2ⁿ⁻¹ (at most `cap`) plus up to as
    much again (`fraction` in [0, 1) picks where), so receivers recovering at once are not hit in step."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay / 2 + fraction * delay / 2


def alert_etag(spec: AlertRuleSpec) -> str:
    return hashlib.sha256(_canonical.encode(spec)).hexdigest()[:32]


RELATION_FIELDS = frozenset(
    {
        "owner",
        "system",
        "dependsOn",
        "dependencyOf",
        "subcomponentOf",
        "providesApis",
        "consumesApis",
        "domain",
        "subdomainOf",
        "memberOf",
        "parent",
        "children",
        "members",
    }
)
"""Spec fields Backstage's built-in kinds derive relations from: a change there changes relations too."""
_WHOLE = frozenset({"orphan", "kind", "spec", "metadata", "metadata.name", "metadata.namespace"})


def patchable(path: str) -> bool:
    """Whether a changed field of a `catalog.entity.updated` event can be applied to the served entity as it
    is: not identity, the orphan flag (served as an annotation) or a field relations come from."""
    parts = path.split(".")
    return path not in _WHOLE and not (parts[0] == "spec" and parts[1] in RELATION_FIELDS)


def apply_changes(entity: dict[str, Any], changes: list[dict[str, Any]], generation: Any) -> dict[str, Any]:
    """A served entity with the `changes` ({field: {before, after}}) of update events applied in order. Paths
    are dotted; since a change is recorded at the first level where the two documents stop both being
    mappings, the existing mappings are walked and the rest of the path is one key (`backstage.io/x`)."""
    patched = msgspec.json.decode(_json.encode(entity))
    for change in changes:
        for path, values in change.items():
            node, parts = patched, path.split(".")
            i = 0
            while i < len(parts) - 1:
                for j in range(i + 1, len(parts)):
                    key = ".".join(parts[i:j])
                    if isinstance(node.get(key), dict):
                        node, i = node[key], j
                        break
                else:
                    break
            key = ".".join(parts[i:])
            if values.get("after") is None:
                node.pop(key, None)
            else:
                node[key] = values["after"]
    if isinstance(generation, int):
        patched["metadata"]["generation"] = generation
    return patched
