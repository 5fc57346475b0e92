"""Scopes in entity references and reads (design.md §5: `account`, `account.<org>`, `account.<org>.<project>`).

A scoped ref is a Backstage ref followed by `@<scope>`: `component:default/payments@account.acme.shop`.
Backstage refs never contain `@` (names, namespaces and kinds cannot), so every Backstage ref is also a scoped
ref, at the scope the request names (`?scope=`, default `account`). A read covers one scope, and with
`includeParents` the scopes above it, with `includeChildren` the scopes below it. References inside an entity's
`spec` keep Backstage's meaning: their targets resolve within the entity's own scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.catalog.entity_ref import EntityRef, EntityRefError, parse_entity_ref
from shared.authz import EVERYTHING, Visibility
from shared.errors import InputError
from shared.scopes import check_scope

SCOPE_SEPARATOR = "@"


@dataclass(frozen=True, slots=True)
class ScopeSelector:
    """The scopes a read covers."""

    scope: str
    parents: bool = False
    children: bool = False
    visible: Visibility = EVERYTHING
    """What the caller's role bindings let it see; the read keeps only those scopes."""

    @classmethod
    def of(
        cls, scope: str, *, parents: bool = False, children: bool = False, visible: Visibility = EVERYTHING
    ) -> ScopeSelector:
        return cls(check_scope(scope), parents, children, visible)

    def exact_scopes(self) -> list[str]:
        """The scope itself and, with `parents`, every scope above it (`account.a.b` → `account`, `account.a`)."""
        parts = self.scope.split(".")
        first = 1 if self.parents else len(parts)
        return [".".join(parts[:n]) for n in range(first, len(parts) + 1)]

    def child_prefix(self) -> str | None:
        """What scopes below this one start with, when they are included."""
        return f"{self.scope}." if self.children else None


def names_scope(value: str) -> bool:
    return SCOPE_SEPARATOR in value


def split_spec_scope(value: str) -> tuple[str, str | None]:
    """A spec reference and the scope it names, if any. Backstage's parser lets a name hold `@` (the example
    templates' `owner: user:guest@example.com`), so only a suffix that starts like a scope (`@account…`) names
    one, and must then be a scope."""
    ref, separator, scope = value.rpartition(SCOPE_SEPARATOR)
    if separator and (scope == "account" or scope.startswith("account.")):
        return ref, scope
    return value, None


def parse_scoped_ref(value: str, default_scope: str, field: str) -> tuple[EntityRef, str]:
    """A Backstage ref with an optional `@<scope>`, and the scope it names (else `default_scope`); InputError
    names `field`."""
    scope = default_scope
    if names_scope(value):
        value, _, scope = value.rpartition(SCOPE_SEPARATOR)
    try:
        ref = parse_entity_ref(value)
    except EntityRefError as exc:
        raise InputError.for_field(field, str(exc)) from None
    return ref, check_scope(scope, field)


def scoped_ref(ref: EntityRef | str, scope: str) -> str:
    return f"{ref}{SCOPE_SEPARATOR}{scope}"
