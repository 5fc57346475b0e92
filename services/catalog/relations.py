"""Relations generated from spec fields exactly as Backstage's `BuiltinKindsEntityProcessor` generates them.

Every spec reference yields a pair: the forward relation on the entity and the reverse one on the target.
Targets default their namespace to the *source entity's* namespace and their kind to the field's default
kind; a field with no default kind (`dependsOn`, `dependencyOf`) needs a kind in the reference. Targets that
do not exist are kept: the catalog reports them, it does not drop them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.catalog.entity_ref import EntityRef, EntityRefError, parse_entity_ref, ref_of
from shared.errors import FieldError


@dataclass(frozen=True, slots=True)
class Relation:
    """`source --type--> target`; both are canonical entity refs."""

    source: str
    type: str
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


def relations_of(
    entity: dict[str, Any], custom_rules: tuple[RelationRule, ...] = ()
) -> tuple[list[Relation], list[FieldError]]:
    """The relations `entity` emits (both directions, deduplicated, in rule order) and any bad references.
    A built-in kind follows Backstage's rules; a registered custom kind, the `custom_rules` it declares."""
    kind = str(entity.get("kind", "")).lower()
    spec = entity.get("spec") or {}
    self_ref = ref_of(entity)
    source = str(self_ref)
    relations: dict[Relation, None] = {}
    errors: list[FieldError] = []
    for rule in RULES.get(kind, custom_rules):
        values = spec.get(rule.field)
        if values is None:
            continue
        for index, value in enumerate(values if isinstance(values, list) else [values]):
            try:
                target = str(_target(value, rule, self_ref))
            except EntityRefError as exc:
                field = f"$.spec.{rule.field}" + (f"[{index}]" if isinstance(values, list) else "")
                errors.append(FieldError(field, str(exc)))
                continue
            relations[Relation(source, rule.forward, target)] = None
            relations[Relation(target, rule.reverse, source)] = None
    return list(relations), errors


def _target(value: Any, rule: RelationRule, self_ref: EntityRef) -> EntityRef:
    return parse_entity_ref(value, default_kind=rule.default_kind, default_namespace=self_ref.namespace)
