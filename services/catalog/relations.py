"""Relations generated from spec fields exactly as Backstage's `BuiltinKindsEntityProcessor` generates them,
across scopes.

Every spec reference yields a pair: the forward relation on the entity and the reverse one on the target.
Targets default their namespace to the *source entity's* namespace and their kind to the field's default
kind; a field with no default kind (`dependsOn`, `dependencyOf`) needs a kind in the reference. Targets that
do not exist are kept: the catalog reports them, it does not drop them.

Scopes (design.md §5, visible from below): a reference may name its target's scope as a scoped ref
(`group:default/platform@account.acme`, see `scopes.split_spec_scope`); one that does not resolves at the
nearest scope at or above the entity's that has the target, and at the entity's own scope while no scope has
it (dangling). `references_of` reads what a document names (pure); `resolve` places both ends of each pair at
their scopes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from services.catalog.entity_ref import EntityRef, EntityRefError, parse_entity_ref, ref_of
from services.catalog.scopes import split_spec_scope
from shared.errors import FieldError, InputError
from shared.scopes import check_scope


class Reference(NamedTuple):
    """What one spec value names: `entity --type--> target`, and `target --reverse--> entity` on the target."""

    type: str
    target: str
    """Canonical entity ref."""
    reverse: str
    scope: str | None = None
    """The scope a scoped ref names; None: the nearest scope at or above the entity's that has the target."""


class Relation(NamedTuple):
    """`source --type--> target` as stored and served: canonical refs, the source at `scope`, the target at
    `target_scope`. A named tuple: a bulk load makes millions, and a frozen dataclass takes about three times
    as long to build and hash."""

    scope: str
    source: str
    type: str
    target_scope: str
    target: str


@dataclass(frozen=True, slots=True)
class RelationRule:
    field: str
    default_kind: str | None
    forward: str
    reverse: str


_OWNER = RelationRule("owner", "Group", "ownedBy", "ownerOf")
_SYSTEM = RelationRule("system", "System", "partOf", "hasPart")
_DEPENDS_ON = RelationRule("dependsOn", None, "dependsOn", "dependencyOf")
_DEPENDENCY_OF = RelationRule("dependencyOf", None, "dependencyOf", "dependsOn")

RULES: dict[str, tuple[RelationRule, ...]] = {
    "component": (
        _OWNER,
        RelationRule("subcomponentOf", "Component", "partOf", "hasPart"),
        RelationRule("providesApis", "API", "providesApi", "apiProvidedBy"),
        RelationRule("consumesApis", "API", "consumesApi", "apiConsumedBy"),
        _DEPENDS_ON,
        _DEPENDENCY_OF,
        _SYSTEM,
    ),
    "api": (_OWNER, _SYSTEM),
    "resource": (_OWNER, _DEPENDS_ON, _DEPENDENCY_OF, _SYSTEM),
    "system": (_OWNER, RelationRule("domain", "Domain", "partOf", "hasPart")),
    "domain": (_OWNER, RelationRule("subdomainOf", "Domain", "partOf", "hasPart")),
    "user": (RelationRule("memberOf", "Group", "memberOf", "hasMember"),),
    "group": (
        RelationRule("parent", "Group", "childOf", "parentOf"),
        RelationRule("children", "Group", "parentOf", "childOf"),
        RelationRule("members", "User", "hasMember", "memberOf"),
    ),
    "template": (_OWNER,),
}


def references_of(
    entity: dict[str, Any], custom_rules: tuple[RelationRule, ...] = ()
) -> tuple[list[Reference], list[FieldError]]:
    """The references `entity` makes (deduplicated, in rule order) and any bad ones. A built-in kind follows
    Backstage's rules; a registered custom kind, the `custom_rules` it declares."""
    kind = str(entity.get("kind", "")).lower()
    spec = entity.get("spec") or {}
    self_ref = ref_of(entity)
    references: dict[Reference, None] = {}
    errors: list[FieldError] = []
    for rule in RULES.get(kind, custom_rules):
        values = spec.get(rule.field)
        if values is None:
            continue
        for index, value in enumerate(values if isinstance(values, list) else [values]):
            try:
                target, scope = _target(value, rule, self_ref)
            except EntityRefError as exc:
                field = f"$.spec.{rule.field}" + (f"[{index}]" if isinstance(values, list) else "")
                errors.append(FieldError(field, str(exc)))
                continue
            references[Reference(rule.forward, str(target), rule.reverse, scope)] = None
    return list(references), errors


def _target(value: Any, rule: RelationRule, self_ref: EntityRef) -> tuple[EntityRef, str | None]:
    scope = None
    if isinstance(value, str):
        value, scope = split_spec_scope(value)
        if scope is not None:
            try:
                check_scope(scope)
            except InputError as exc:
                raise EntityRefError(exc.errors[0].message) from None
    target = parse_entity_ref(value, default_kind=rule.default_kind, default_namespace=self_ref.namespace)
    return target, scope


def unscoped_targets(references: list[Reference]) -> set[str]:
    """The targets whose scope is resolved, not named."""
    return {r.target for r in references if r.scope is None}


def resolve(source: str, scope: str, references: list[Reference], nearest: dict[str, str]) -> list[Relation]:
    """Both relations of every reference of the entity `source` at `scope`: a target at the scope its ref
    names, else at `nearest[target]` (the nearest scope at or above `scope` that has it), else dangling at
    `scope`."""
    relations: dict[Relation, None] = {}
    for reference in references:
        target_scope = reference.scope or nearest.get(reference.target, scope)
        relations[Relation(scope, source, reference.type, target_scope, reference.target)] = None
        relations[Relation(target_scope, reference.target, reference.reverse, scope, source)] = None
    return list(relations)
